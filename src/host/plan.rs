//! Fold claimed requests into per-sidecar decisions and plan the podman
//! calls that make them true.
//!
//! Pure: takes the batch (one record at a time, so that memory follows the
//! sidecars, not the requests), the containers podman reports and a view of
//! the namespaces, returns jobs and acknowledgements, and calls nothing. Each
//! sidecar has a key (kind + process tag, else kind + namespace) and a
//! deterministic container name derived from it. Within a batch the last
//! start per key wins; an identical repeat of what runs is a no-op; changed
//! argv replaces the container. Signals are resolved to containers through
//! podman's own data (the main process pid and our labels). Every request in
//! the batch gets exactly one acknowledgement: immediately, or when its job
//! has run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::host::config::Profile;
use crate::host::namespaces::Namespaces;
use crate::host::runtime::{Call, ContainerInfo, Network, RunSpec, SidecarLabels, State, labels};
use crate::shared::ack::Outcome;
use crate::shared::kind::Kind;
use crate::shared::record::{Action, NetnsRef, Record, Signal};

/// One engine-level step of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a job holds a handful of steps; a start's spec is built once and moved, never copied in bulk"
)]
pub enum Step {
    /// Remove a container (leftover, replaced, stopped or orphaned).
    Remove { name: String },
    /// Send a signal to a running container (HUP: reload).
    Signal { name: String, signal: Signal },
    /// Stop: TERM with the profile's timeout (or KILL at once), then the
    /// container is removed by a following `Remove`.
    Stop { name: String, signal: Signal },
    /// Start a sidecar; the namespace is re-checked right before.
    Run {
        spec: RunSpec,
        netns: Option<NetnsRef>,
    },
}

impl Step {
    /// The engine call that carries out this step. Execution and the dry
    /// run both go through it, so a dry run prints exactly what a real run
    /// executes: a stop with a signal other than KILL waits the profile's
    /// `stop_timeout` (the caller passes it in) before podman kills.
    pub fn call(&self, stop_timeout: Duration) -> Call {
        match self {
            Step::Remove { name } => Call::Remove(name.clone()),
            Step::Signal { name, signal } => Call::Kill(name.clone(), *signal),
            Step::Stop {
                name,
                signal: Signal::Kill,
            } => Call::Kill(name.clone(), Signal::Kill),
            Step::Stop { name, .. } => Call::Stop(name.clone(), stop_timeout),
            Step::Run { spec, .. } => Call::Run(spec.clone()),
        }
    }
}

/// What a job does, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Replace,
    Signal,
    Stop,
    Orphan,
    /// A desired sidecar whose process died, started again by the sync
    /// (see `desired::plan_restarts`).
    Restart,
}

/// The ordered steps for one sidecar, and the requests answered when they
/// finish. Jobs for different sidecars are independent and may run in
/// parallel; steps within a job run in order, stopping at the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub key: String,
    pub container: String,
    pub what: JobKind,
    pub steps: Vec<Step>,
    /// Request ids acknowledged with the job's outcome, with the message
    /// used on success.
    pub answers: Vec<(String, String)>,
    /// The start request a `Start` or `Replace` job carries out, which the
    /// desired table records once it ran.
    pub request: Option<Record>,
}

/// An acknowledgement decided while planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: String,
    pub result: Outcome,
    pub message: String,
    pub container: Option<String>,
}

/// The planner's output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub answers: Vec<Answer>,
    /// Starts that matched a running sidecar exactly.
    pub unchanged: usize,
    /// The sidecars among those that need no job at all, with the start
    /// that won: the desired table adopts them if it lacks them.
    pub kept: Vec<Kept>,
}

/// A sidecar that already runs exactly as its winning start asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub key: String,
    pub container: String,
    pub request: Record,
}

impl Plan {
    pub fn rejected(&self) -> usize {
        self.answers
            .iter()
            .filter(|a| a.result == Outcome::Rejected)
            .count()
    }
}

/// The identity of a sidecar within its kind.
pub fn key_of(kind: Kind, tag: Option<&str>, netns: Option<&NetnsRef>) -> String {
    match (tag, netns) {
        (Some(t), _) => format!("{kind}/tag/{t}"),
        (None, Some(ns)) => format!("{kind}/netns/{}", ns.name),
        (None, None) => format!("{kind}/host"),
    }
}

/// The deterministic container name of a sidecar of configuration
/// `instance`: `sidespawn-<instance>-<kind>-t-<tag>` (`-n-<netns>` without
/// a tag, `-h` on the host network). The instance makes the names of two
/// configurations on one podman disjoint, so a start in one can never
/// replace, or be blocked by, a container of the other; it has no `-` (see
/// `config::valid_instance`), so the instance ends at the second dash. Tag
/// and namespace names are already restricted to `[A-Za-z0-9._-]`; the
/// `-t-`/`-n-` marker after the kind keeps a tag and a namespace of the same
/// spelling apart. Very long names are shortened with a hash so they stay
/// unique.
pub fn container_name(
    instance: &str,
    kind: Kind,
    tag: Option<&str>,
    netns: Option<&NetnsRef>,
) -> String {
    let name = match (tag, netns) {
        (Some(t), _) => format!("sidespawn-{instance}-{kind}-t-{t}"),
        (None, Some(ns)) => format!("sidespawn-{instance}-{kind}-n-{}", ns.name),
        (None, None) => format!("sidespawn-{instance}-{kind}-h"),
    };
    const MAX: usize = 128;
    if name.len() <= MAX {
        return name;
    }
    let h = fnv1a(name.as_bytes());
    format!("{}-{h:016x}", &name[..MAX - 17])
}

/// FNV-1a, 64 bit: change detection for argv labels, not a security
/// boundary (a request can only collide with its own sidecar).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hash of everything that defines a sidecar's process: image, command and
/// the final daemon argv. A change in any of them means a replacement.
pub fn spec_hash(image: &str, command: &[String], argv: &[String]) -> String {
    let mut buf = Vec::new();
    for part in std::iter::once(image)
        .chain(command.iter().map(String::as_str))
        .chain(std::iter::once("\0--\0"))
        .chain(argv.iter().map(String::as_str))
    {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    format!("{:016x}", fnv1a(&buf))
}

fn reject(id: &str, message: String) -> Answer {
    Answer {
        id: id.to_owned(),
        result: Outcome::Rejected,
        message,
        container: None,
    }
}

/// Builds the run spec of a start request under `profile`.
pub fn run_spec(
    profile: &Profile,
    ns_dir: &std::path::Path,
    rec: &Record,
    generation: u64,
) -> RunSpec {
    let kind = profile.kind;
    let image = profile.image.clone().unwrap_or_default();
    let name = container_name(
        &profile.instance,
        kind,
        rec.tag.as_deref(),
        rec.netns.as_ref(),
    );
    let daemon_argv = profile.daemon_argv(&rec.argv);
    let mut l: BTreeMap<String, String> = profile.labels.clone();
    l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    l.insert(labels::INSTANCE.into(), profile.instance.clone());
    l.insert(labels::KIND.into(), kind.as_str().into());
    l.insert(
        labels::KEY.into(),
        key_of(kind, rec.tag.as_deref(), rec.netns.as_ref()),
    );
    if let Some(ns) = &rec.netns {
        l.insert(labels::NETNS.into(), ns.name.clone());
        l.insert(labels::NETNS_INO.into(), ns.ino.to_string());
    }
    if let Some(t) = &rec.tag {
        l.insert(labels::TAG.into(), t.clone());
    }
    l.insert(
        labels::ARGV_HASH.into(),
        spec_hash(&image, &profile.command, &daemon_argv),
    );
    l.insert(labels::REQUEST_ID.into(), rec.id.clone());
    l.insert(labels::GENERATION.into(), generation.to_string());

    // The profile's program replaces the image's entrypoint, so the sidecar
    // is exactly that process (its pid is the one Neutron's pid file holds).
    let (program, rest) = profile
        .command
        .split_first()
        .map(|(p, r)| (p.clone(), r.to_vec()))
        .unwrap_or_else(|| (kind.as_str().to_owned(), Vec::new()));
    RunSpec {
        name,
        image,
        labels: l,
        network: match &rec.netns {
            Some(ns) => Network::Namespace(ns_dir.join(&ns.name)),
            None => Network::Host,
        },
        pid_host: profile.pid_host,
        cgroupns_host: profile.cgroupns_host,
        volumes: profile.volumes.clone(),
        cap_drop: profile.cap_drop.clone(),
        cap_add: profile.cap_add.clone(),
        user: profile.user.clone(),
        log_driver: profile.log_driver.clone(),
        engine_args: profile.engine_args.clone(),
        entrypoint: Some(program),
        command: rest,
        daemon_argv,
    }
}

/// Plans one kind's requests, in queue order, against the containers podman
/// reported: a [`Planner`] fed every record, then finished.
/// `next_generation` is advanced once per started container.
pub fn plan(
    profile: &Profile,
    records: impl IntoIterator<Item = Record>,
    actual: &[ContainerInfo],
    namespaces: &dyn Namespaces,
    next_generation: &mut u64,
    collect_orphans: bool,
) -> Plan {
    let mut planner = Planner::new(profile, actual);
    for rec in records {
        planner.push(rec);
    }
    planner.finish(namespaces, next_generation, collect_orphans)
}

/// A signal request resolved to a container, reduced to what the plan uses.
struct SignalRequest<'a> {
    /// Position in the batch.
    index: usize,
    id: String,
    signal: Option<Signal>,
    container: &'a str,
}

/// One key's share of the batch: the last start (with its position), the
/// ids of the starts it superseded, and the signals that resolved to the
/// key's container, in batch order.
#[derive(Default)]
struct Fold<'a> {
    start: Option<(usize, Record)>,
    superseded: Vec<String>,
    signals: Vec<SignalRequest<'a>>,
}

/// The fold of one kind's batch, fed one record at a time (in queue order)
/// and then finished into a [`Plan`]. It owns only what the plan needs: per
/// key the start that wins so far, the ids of the requests it superseded and
/// the resolved signals; every other record is dropped once answered, so
/// memory follows the number of sidecars rather than of requests.
pub struct Planner<'a> {
    profile: &'a Profile,
    /// This configuration's containers of this kind, in podman's order.
    ours: Vec<&'a ContainerInfo>,
    /// Those that run, by main pid (the first listed, should two claim one
    /// pid): a kill request's pid resolves only among these, never to
    /// another kind's or another configuration's sidecar.
    by_pid: HashMap<u32, &'a ContainerInfo>,
    folds: BTreeMap<String, Fold<'a>>,
    /// Answers decided as records arrive (refusals, unknown pids).
    answers: Vec<Answer>,
    /// Records pushed so far: the next one's position in the batch.
    pushed: usize,
}

impl<'a> Planner<'a> {
    /// A planner for `profile`'s kind against what podman reported.
    pub fn new(profile: &'a Profile, actual: &'a [ContainerInfo]) -> Planner<'a> {
        let kind = profile.kind;
        // The runtime lists only this configuration's containers; checking
        // the instance again here keeps a runtime that did not (or a caller
        // passing another list) from ever resolving a pid, naming a
        // replacement or an orphan among someone else's.
        let ours: Vec<&ContainerInfo> = actual
            .iter()
            .filter(|c| {
                crate::host::runtime::is_managed(c, &profile.instance)
                    && SidecarLabels::of(c).is_kind(kind)
            })
            .collect();
        let mut by_pid = HashMap::new();
        for c in &ours {
            if c.state == State::Running && c.pid != 0 {
                by_pid.entry(c.pid).or_insert(*c);
            }
        }
        Planner {
            profile,
            ours,
            by_pid,
            folds: BTreeMap::new(),
            answers: Vec::new(),
            pushed: 0,
        }
    }

    /// Folds the next record of the batch in.
    pub fn push(&mut self, rec: Record) {
        let i = self.pushed;
        self.pushed += 1;
        let profile = self.profile;
        let kind = profile.kind;
        if rec.kind != kind {
            self.answers.push(reject(
                &rec.id,
                format!("request for {} in the {kind} queue", rec.kind),
            ));
            return;
        }
        match rec.action {
            Action::Start => {
                match &rec.netns {
                    None if !profile.allow_host_network => {
                        self.answers.push(reject(
                            &rec.id,
                            format!("{kind} may not run on the host network (kinds.{kind}.allow_host_network is false)"),
                        ));
                        return;
                    }
                    Some(ns) if !profile.netns_allowed(&ns.name) => {
                        self.answers.push(reject(
                            &rec.id,
                            format!(
                                "namespace {:?} does not match kinds.{kind}.netns_patterns {:?}",
                                ns.name, profile.netns_patterns
                            ),
                        ));
                        return;
                    }
                    _ => {}
                }
                let bytes = Profile::argv_bytes(&rec.argv);
                if bytes > profile.max_argv_bytes {
                    self.answers.push(reject(
                        &rec.id,
                        format!(
                            "argv is {bytes} bytes, over kinds.{kind}.max_argv_bytes ({}); shorten the command line or raise the limit in the host configuration",
                            profile.max_argv_bytes
                        ),
                    ));
                    return;
                }
                let key = key_of(kind, rec.tag.as_deref(), rec.netns.as_ref());
                let f = self.folds.entry(key).or_default();
                if let Some((_, old)) = f.start.replace((i, rec)) {
                    f.superseded.push(old.id);
                }
            }
            Action::Signal => {
                let pid = rec.pid.unwrap_or(0);
                let target = self
                    .by_pid
                    .get(&pid)
                    .and_then(|c| SidecarLabels::of(c).key().map(|k| (k, *c)));
                match target {
                    Some((key, c)) => self
                        .folds
                        .entry(key.to_owned())
                        .or_default()
                        .signals
                        .push(SignalRequest {
                            index: i,
                            id: rec.id,
                            signal: rec.signal,
                            container: &c.name,
                        }),
                    None => self.answers.push(Answer {
                        id: rec.id,
                        result: Outcome::Failed,
                        message: format!("kill: ({pid}) - No such process: no running {kind} sidecar has pid {pid}"),
                        container: None,
                    }),
                }
            }
        }
    }

    /// Decides the jobs of the folded batch. `next_generation` is advanced
    /// once per started container; `collect_orphans` adds the removal of
    /// this kind's containers whose namespace is gone or was recreated.
    pub fn finish(
        self,
        namespaces: &dyn Namespaces,
        next_generation: &mut u64,
        collect_orphans: bool,
    ) -> Plan {
        let Planner {
            profile,
            ours,
            folds,
            answers,
            ..
        } = self;
        let kind = profile.kind;
        let by_name: HashMap<&str, &ContainerInfo> =
            ours.iter().map(|c| (c.name.as_str(), *c)).collect();
        let mut out = Plan {
            answers,
            ..Plan::default()
        };

        for (key, f) in folds {
            let Fold {
                start,
                superseded,
                signals,
            } = f;
            let start_idx = start.as_ref().map(|(i, _)| *i);
            let last_stop = signals
                .iter()
                .filter(|s| s.signal != Some(Signal::Hup))
                .map(|s| s.index)
                .max();
            let stopped_last = match (last_stop, start_idx) {
                (Some(s), Some(st)) => s > st,
                (Some(_), None) => true,
                _ => false,
            };

            if stopped_last {
                // The agent's final word on this sidecar is "stop".
                let stop = signals
                    .iter()
                    .rfind(|s| s.signal != Some(Signal::Hup))
                    .expect("a stop exists");
                let cname = stop.container;
                let mut job = Job {
                    key,
                    container: cname.to_owned(),
                    what: JobKind::Stop,
                    steps: vec![
                        Step::Stop {
                            name: cname.to_owned(),
                            signal: stop.signal.unwrap_or(Signal::Term),
                        },
                        Step::Remove {
                            name: cname.to_owned(),
                        },
                    ],
                    answers: vec![(stop.id.clone(), format!("stopped and removed {cname}"))],
                    request: None,
                };
                for s in &signals {
                    if s.id != stop.id {
                        job.answers.push((
                            s.id.clone(),
                            format!("superseded by stop request {}", stop.id),
                        ));
                    }
                }
                for id in superseded.into_iter().chain(start.map(|(_, r)| r.id)) {
                    job.answers
                        .push((id, format!("superseded by stop request {}", stop.id)));
                }
                out.jobs.push(job);
                continue;
            }

            let mut steps = Vec::new();
            let mut answers = Vec::new();
            let mut removed_by_stop = None;
            // Signals that came before the final start, in order.
            for s in signals.iter() {
                let cname = s.container;
                match s.signal {
                    Some(Signal::Hup) => {
                        steps.push(Step::Signal {
                            name: cname.to_owned(),
                            signal: Signal::Hup,
                        });
                        answers.push((s.id.clone(), format!("sent HUP to {cname}")));
                    }
                    sig => {
                        steps.push(Step::Stop {
                            name: cname.to_owned(),
                            signal: sig.unwrap_or(Signal::Term),
                        });
                        steps.push(Step::Remove {
                            name: cname.to_owned(),
                        });
                        answers.push((s.id.clone(), format!("stopped and removed {cname}")));
                        removed_by_stop = Some(cname);
                    }
                }
            }

            let Some((_, rec)) = start else {
                let cname = signals
                    .first()
                    .map(|s| s.container.to_owned())
                    .unwrap_or_default();
                out.jobs.push(Job {
                    key,
                    container: cname,
                    what: JobKind::Signal,
                    steps,
                    answers,
                    request: None,
                });
                continue;
            };
            let name = container_name(
                &profile.instance,
                kind,
                rec.tag.as_deref(),
                rec.netns.as_ref(),
            );
            for id in superseded {
                answers.push((id, format!("superseded by request {}", rec.id)));
            }
            let image = profile.image.clone().unwrap_or_default();
            let want_hash = spec_hash(&image, &profile.command, &profile.daemon_argv(&rec.argv));
            let existing = by_name.get(name.as_str()).copied();
            let gone = removed_by_stop == Some(name.as_str());
            let what = match existing {
                Some(c)
                    if !gone
                        && c.state == State::Running
                        && SidecarLabels::of(c).argv_hash() == Some(want_hash.as_str())
                        && SidecarLabels::of(c).netns_ino()
                            == rec.netns.as_ref().map(|n| n.ino.to_string()).as_deref() =>
                {
                    out.unchanged += 1;
                    answers.push((
                        rec.id.clone(),
                        format!("{name} already runs with these arguments"),
                    ));
                    if steps.is_empty() {
                        for (id, message) in answers {
                            out.answers.push(Answer {
                                id,
                                result: Outcome::Ok,
                                message,
                                container: Some(name.clone()),
                            });
                        }
                        out.kept.push(Kept {
                            key,
                            container: name,
                            request: rec,
                        });
                        continue;
                    }
                    out.jobs.push(Job {
                        key,
                        container: name,
                        what: JobKind::Signal,
                        steps,
                        answers,
                        request: None,
                    });
                    continue;
                }
                Some(c) if !gone => {
                    steps.push(Step::Remove { name: name.clone() });
                    if c.state == State::Running {
                        JobKind::Replace
                    } else {
                        JobKind::Start
                    }
                }
                _ => JobKind::Start,
            };
            let generation = *next_generation;
            *next_generation += 1;
            let spec = run_spec(profile, &namespaces.dir(), &rec, generation);
            steps.push(Step::Run {
                spec,
                netns: rec.netns.clone(),
            });
            answers.push((
                rec.id.clone(),
                format!("started {name} (generation {generation})"),
            ));
            out.jobs.push(Job {
                key,
                container: name,
                what,
                steps,
                answers,
                request: Some(rec),
            });
        }

        if collect_orphans {
            let busy: std::collections::HashSet<String> =
                out.jobs.iter().map(|j| j.container.clone()).collect();
            for c in &ours {
                if busy.contains(&c.name) {
                    continue;
                }
                let l = SidecarLabels::of(c);
                let (Some(ns), Some(ino)) = (l.netns(), l.netns_ino()) else {
                    continue;
                };
                if namespaces.inode(ns).map(|i| i.to_string()).as_deref() != Some(ino) {
                    out.jobs.push(Job {
                        key: l.key().unwrap_or_default().to_owned(),
                        container: c.name.clone(),
                        what: JobKind::Orphan,
                        steps: vec![Step::Remove {
                            name: c.name.clone(),
                        }],
                        answers: Vec::new(),
                        request: None,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::namespaces::FakeNamespaces;
    use crate::shared::record::{VERSION, now_ms};
    use std::path::Path;

    const U1: &str = "0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a";
    const U2: &str = "1e7b7f1d-3b9c-4e8f-8d64-6c1d8c8c7d2b";

    fn ns() -> FakeNamespaces {
        FakeNamespaces::new([(format!("qdhcp-{U1}"), 100), (format!("qdhcp-{U2}"), 200)])
    }

    fn profile() -> Profile {
        let mut p = Profile::defaults(Kind::Dnsmasq);
        p.image = Some("localhost/dnsmasq:1".into());
        p
    }

    fn netns(u: &str, ino: u64) -> Option<NetnsRef> {
        Some(NetnsRef {
            name: format!("qdhcp-{u}"),
            dev: 4,
            ino,
        })
    }

    fn start(id: &str, tag: Option<&str>, u: &str, argv: &[&str]) -> Record {
        Record {
            v: VERSION,
            id: id.into(),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            netns: netns(u, if u == U1 { 100 } else { 200 }),
            tag: tag.map(String::from),
            signal: None,
            pid: None,
            ts: now_ms(),
        }
    }

    fn signal(id: &str, sig: Signal, pid: u32) -> Record {
        Record {
            action: Action::Signal,
            argv: vec![],
            tag: None,
            signal: Some(sig),
            pid: Some(pid),
            ..start(id, None, U1, &[])
        }
    }

    /// A container as the planner would have created it for `rec`.
    fn running(rec: &Record, pid: u32) -> ContainerInfo {
        let spec = run_spec(&profile(), Path::new("/run/netns"), rec, 1);
        ContainerInfo {
            id: format!("id-{}", spec.name),
            name: spec.name,
            state: State::Running,
            pid,
            image: spec.image,
            labels: spec.labels,
            started_at: 0,
            exit_code: 0,
        }
    }

    fn go(batch: &[Record], actual: &[ContainerInfo]) -> Plan {
        let mut g = 1;
        plan(
            &profile(),
            batch.iter().cloned(),
            actual,
            &ns(),
            &mut g,
            true,
        )
    }

    fn answered(p: &Plan) -> Vec<String> {
        let mut ids: Vec<String> = p.answers.iter().map(|a| a.id.clone()).collect();
        for j in &p.jobs {
            ids.extend(j.answers.iter().map(|(i, _)| i.clone()));
        }
        ids.sort();
        ids
    }

    fn tag1() -> String {
        format!("dnsmasq-{U1}")
    }

    #[test]
    fn new_request_starts_one_container() {
        let r = start("a", Some(&tag1()), U1, &["--no-hosts", ""]);
        let p = go(&[r], &[]);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].what, JobKind::Start);
        let Step::Run { spec, .. } = &p.jobs[0].steps[0] else {
            panic!()
        };
        let i = &profile().instance;
        assert_eq!(spec.name, format!("sidespawn-{i}-dnsmasq-t-dnsmasq-{U1}"));
        assert_eq!(spec.labels[labels::INSTANCE], *i);
        assert_eq!(spec.daemon_argv, ["-k", "--no-hosts", ""]);
        assert_eq!(answered(&p), ["a"]);
    }

    #[test]
    fn identical_repeat_is_a_noop() {
        let r = start("a", Some(&tag1()), U1, &["x"]);
        let c = running(&r, 55);
        let p = go(&[start("b", Some(&tag1()), U1, &["x"])], &[c]);
        assert!(p.jobs.is_empty());
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.answers[0].result, Outcome::Ok);
    }

    #[test]
    fn changed_argv_replaces() {
        let c = running(&start("a", Some(&tag1()), U1, &["x"]), 55);
        let p = go(&[start("b", Some(&tag1()), U1, &["y"])], &[c]);
        assert_eq!(p.jobs[0].what, JobKind::Replace);
        assert!(matches!(p.jobs[0].steps[0], Step::Remove { .. }));
        assert!(matches!(p.jobs[0].steps[1], Step::Run { .. }));
    }

    #[test]
    fn last_start_wins_and_earlier_are_answered() {
        let t = tag1();
        let batch = [
            start("a", Some(&t), U1, &["1"]),
            start("b", Some(&t), U1, &["2"]),
            start("c", Some(&t), U1, &["3"]),
        ];
        let p = go(&batch, &[]);
        assert_eq!(p.jobs.len(), 1);
        let Step::Run { spec, .. } = &p.jobs[0].steps[0] else {
            panic!()
        };
        assert_eq!(spec.daemon_argv, ["-k", "3"]);
        assert_eq!(answered(&p), ["a", "b", "c"]);
    }

    #[test]
    fn two_tags_in_one_namespace_are_two_sidecars() {
        let batch = [
            start("a", Some(&format!("dnsmasq-{U1}")), U1, &["seg0"]),
            start("b", Some(&format!("dnsmasq-{U2}")), U1, &["seg1"]),
        ];
        let p = go(&batch, &[]);
        assert_eq!(p.jobs.len(), 2);
        assert_ne!(p.jobs[0].container, p.jobs[1].container);
    }

    #[test]
    fn untagged_requests_key_by_namespace() {
        let p = go(
            &[start("a", None, U1, &["x"]), start("b", None, U2, &["x"])],
            &[],
        );
        assert_eq!(p.jobs.len(), 2);
        assert_eq!(
            p.jobs[0].container,
            format!("sidespawn-{}-dnsmasq-n-qdhcp-{U1}", profile().instance)
        );
    }

    #[test]
    fn signal_to_unknown_pid_says_no_such_process() {
        let p = go(&[signal("k", Signal::Term, 4242)], &[]);
        assert!(p.jobs.is_empty());
        assert_eq!(p.answers[0].result, Outcome::Failed);
        assert!(p.answers[0].message.contains("No such process"));
    }

    #[test]
    fn hup_signals_the_container_with_that_pid() {
        let c = running(&start("a", Some(&tag1()), U1, &["x"]), 55);
        let p = go(&[signal("k", Signal::Hup, 55)], std::slice::from_ref(&c));
        assert_eq!(
            p.jobs[0].steps,
            [Step::Signal {
                name: c.name.clone(),
                signal: Signal::Hup
            }]
        );
    }

    #[test]
    fn a_pid_two_containers_report_goes_to_the_first_listed() {
        let a = running(&start("a", Some(&tag1()), U1, &["x"]), 55);
        let b = running(&start("b", None, U2, &["x"]), 55);
        let p = go(&[signal("k", Signal::Hup, 55)], &[a.clone(), b]);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].container, a.name);
    }

    #[test]
    fn starts_carry_their_request_and_unchanged_sidecars_are_kept() {
        let t = tag1();
        let c = running(&start("a", Some(&t), U1, &["x"]), 55);
        let repeat = start("b", Some(&t), U1, &["x"]);
        let new = start("c", None, U2, &["y"]);
        let p = go(&[repeat.clone(), new.clone()], std::slice::from_ref(&c));
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].request.as_ref(), Some(&new));
        assert_eq!(
            p.kept,
            [Kept {
                key: c.labels[labels::KEY].clone(),
                container: c.name.clone(),
                request: repeat,
            }]
        );
    }

    #[test]
    fn term_and_kill_stop_then_remove() {
        for sig in [Signal::Term, Signal::Kill] {
            let c = running(&start("a", Some(&tag1()), U1, &["x"]), 55);
            let p = go(&[signal("k", sig, 55)], std::slice::from_ref(&c));
            assert_eq!(p.jobs[0].what, JobKind::Stop);
            assert_eq!(
                p.jobs[0].steps,
                [
                    Step::Stop {
                        name: c.name.clone(),
                        signal: sig
                    },
                    Step::Remove {
                        name: c.name.clone()
                    }
                ]
            );
        }
    }

    #[test]
    fn stop_then_start_restarts() {
        let t = tag1();
        let c = running(&start("a", Some(&t), U1, &["x"]), 55);
        let p = go(
            &[
                signal("k", Signal::Term, 55),
                start("b", Some(&t), U1, &["x"]),
            ],
            &[c],
        );
        let kinds: Vec<_> = p.jobs[0].steps.iter().map(std::mem::discriminant).collect();
        assert_eq!(kinds.len(), 3, "{:?}", p.jobs[0].steps);
        assert!(matches!(p.jobs[0].steps[2], Step::Run { .. }));
        assert_eq!(answered(&p), ["b", "k"]);
    }

    #[test]
    fn start_then_stop_stops() {
        let t = tag1();
        let c = running(&start("a", Some(&t), U1, &["x"]), 55);
        let p = go(
            &[
                start("b", Some(&t), U1, &["y"]),
                signal("k", Signal::Term, 55),
            ],
            &[c],
        );
        assert_eq!(p.jobs[0].what, JobKind::Stop);
        assert!(
            !p.jobs[0]
                .steps
                .iter()
                .any(|s| matches!(s, Step::Run { .. }))
        );
        assert_eq!(answered(&p), ["b", "k"]);
    }

    #[test]
    fn leftover_exited_or_created_is_removed_before_start() {
        for state in [State::Exited, State::Created] {
            let r = start("a", Some(&tag1()), U1, &["x"]);
            let mut c = running(&r, 0);
            c.state = state;
            let p = go(
                &[start("b", Some(&tag1()), U1, &["x"])],
                std::slice::from_ref(&c),
            );
            assert_eq!(p.jobs[0].steps[0], Step::Remove { name: c.name });
            assert!(matches!(p.jobs[0].steps[1], Step::Run { .. }));
        }
    }

    #[test]
    fn host_network_refused_unless_allowed() {
        let mut r = start("a", None, U1, &[]);
        r.netns = None;
        let p = go(std::slice::from_ref(&r), &[]);
        assert_eq!(p.answers[0].result, Outcome::Rejected);
        let mut prof = profile();
        prof.allow_host_network = true;
        let mut g = 1;
        let p = plan(&prof, [r], &[], &ns(), &mut g, false);
        assert_eq!(
            p.jobs[0].container,
            format!("sidespawn-{}-dnsmasq-h", profile().instance)
        );
        let Step::Run { spec, .. } = &p.jobs[0].steps[0] else {
            panic!()
        };
        assert_eq!(spec.network, Network::Host);
    }

    #[test]
    fn namespace_outside_the_pattern_rejected() {
        let mut r = start("a", None, U1, &[]);
        r.netns.as_mut().unwrap().name = "mynet".into();
        let p = go(&[r], &[]);
        assert_eq!(p.answers[0].result, Outcome::Rejected);
        assert!(p.answers[0].message.contains("netns_patterns"));
    }

    #[test]
    fn wrong_kind_in_queue_rejected() {
        let mut r = start("a", None, U1, &[]);
        r.kind = Kind::Haproxy;
        let p = go(&[r], &[]);
        assert_eq!(p.answers[0].result, Outcome::Rejected);
    }

    #[test]
    fn recreated_namespace_replaces_running_sidecar() {
        let t = tag1();
        let mut old = start("a", Some(&t), U1, &["x"]);
        old.netns.as_mut().unwrap().ino = 99;
        let c = running(&old, 55);
        let p = go(&[start("b", Some(&t), U1, &["x"])], &[c]);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].what, JobKind::Replace);
    }

    #[test]
    fn orphans_of_vanished_namespaces_removed() {
        let mut r = start("a", None, U1, &["x"]);
        r.netns.as_mut().unwrap().name = format!("qdhcp-{}", "2".repeat(8) + &U1[8..]);
        let c = running(&r, 55);
        let p = go(&[], std::slice::from_ref(&c));
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].what, JobKind::Orphan);
        let mut g = 1;
        let p = plan(&profile(), Vec::new(), &[c], &ns(), &mut g, false);
        assert!(p.jobs.is_empty(), "no orphan scan unless asked");
    }

    #[test]
    fn other_kinds_containers_ignored() {
        let r = start("a", Some(&tag1()), U1, &["x"]);
        let mut c = running(&r, 55);
        c.labels.insert(labels::KIND.into(), "haproxy".into());
        let p = go(&[signal("k", Signal::Hup, 55)], &[c]);
        assert!(p.jobs.is_empty());
        assert_eq!(p.answers[0].result, Outcome::Failed);
    }

    #[test]
    fn request_argv_never_becomes_podman_options() {
        let r = start(
            "a",
            None,
            U1,
            &["--privileged", "-v", "/:/host", "--network=host"],
        );
        let spec = run_spec(&profile(), Path::new("/run/netns"), &r, 7);
        let argv = crate::host::runtime::call_args(&Call::Run(spec.clone()));
        let img = argv
            .iter()
            .position(|a| a == "localhost/dnsmasq:1")
            .unwrap();
        assert!(
            !argv[..img]
                .iter()
                .any(|a| a == "--privileged" || a == "/:/host")
        );
        assert_eq!(
            &argv[img + 1..],
            ["-k", "--privileged", "-v", "/:/host", "--network=host"]
        );
        assert_eq!(spec.labels[labels::GENERATION], "7");
        assert_eq!(spec.labels[labels::REQUEST_ID], "a");
    }

    #[test]
    fn generations_increase_per_start() {
        let batch = [start("a", None, U1, &[]), start("b", None, U2, &[])];
        let mut g = 10;
        let p = plan(&profile(), batch, &[], &ns(), &mut g, false);
        assert_eq!(g, 12);
        let gens: Vec<_> = p
            .jobs
            .iter()
            .map(|j| match &j.steps[0] {
                Step::Run { spec, .. } => spec.labels[labels::GENERATION].clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(gens, ["10", "11"]);
    }

    #[test]
    fn long_names_stay_unique_and_bounded() {
        let i = "0123456789ab";
        let a = container_name(i, Kind::Dnsmasq, Some(&"a".repeat(128)), None);
        let b = container_name(i, Kind::Dnsmasq, Some(&("a".repeat(127) + "b")), None);
        assert!(a.len() <= 128 && b.len() <= 128);
        assert_ne!(a, b);
        assert_ne!(
            container_name(i, Kind::Dnsmasq, Some("x"), None),
            container_name(i, Kind::Dnsmasq, None, netns("x", 1).as_ref())
        );
        // The longest instance and tag: still bounded, still apart.
        let long = "z".repeat(crate::host::config::MAX_INSTANCE_LEN);
        let c = container_name(&long, Kind::Keepalived, Some(&"a".repeat(128)), None);
        assert!(c.len() <= 128, "{c}");
        assert_ne!(
            c,
            container_name(&long, Kind::Keepalived, Some(&"a".repeat(127)), None)
        );
    }

    #[test]
    fn two_instances_never_share_a_name() {
        let t = Some("dnsmasq-x");
        assert_ne!(
            container_name("aaa", Kind::Dnsmasq, t, None),
            container_name("bbb", Kind::Dnsmasq, t, None)
        );
        assert_eq!(
            container_name("aaa", Kind::Dnsmasq, t, None),
            "sidespawn-aaa-dnsmasq-t-dnsmasq-x"
        );
    }

    /// `profile()` under another configuration's identity.
    fn other_instance() -> Profile {
        Profile {
            instance: "other".into(),
            ..profile()
        }
    }

    #[test]
    fn kill_pids_resolve_only_among_this_configurations_sidecars() {
        // B's sidecar runs with pid 55; A is asked to kill 55.
        let r = start("a", Some(&tag1()), U1, &["x"]);
        let mut b = running(&r, 55);
        b.labels.insert(labels::INSTANCE.into(), "other".into());
        let p = go(&[signal("k", Signal::Kill, 55)], std::slice::from_ref(&b));
        assert!(p.jobs.is_empty(), "{:?}", p.jobs);
        assert_eq!(p.answers[0].result, Outcome::Failed);
        assert!(p.answers[0].message.contains("No such process"));
        // Not an orphan of A either, even with its namespace gone.
        let mut g = 1;
        let gone = FakeNamespaces::default();
        let p = plan(
            &profile(),
            Vec::new(),
            std::slice::from_ref(&b),
            &gone,
            &mut g,
            true,
        );
        assert!(p.jobs.is_empty(), "{:?}", p.jobs);
        // And B's own planner does see it.
        let mut g = 1;
        let p = plan(
            &other_instance(),
            [signal("k", Signal::Hup, 55)],
            &[b],
            &ns(),
            &mut g,
            false,
        );
        assert_eq!(p.jobs.len(), 1);
    }

    #[test]
    fn a_start_above_max_argv_bytes_is_rejected_and_others_run() {
        let mut prof = profile();
        prof.max_argv_bytes = 100;
        let big = start("big", Some(&tag1()), U1, &[&"x".repeat(100)]);
        let fits = start("fits", None, U2, &[&"y".repeat(98)]);
        let mut g = 1;
        let p = plan(&prof, [big, fits], &[], &ns(), &mut g, false);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].answers[0].0, "fits");
        assert_eq!(p.answers.len(), 1);
        let a = &p.answers[0];
        assert_eq!((a.id.as_str(), a.result), ("big", Outcome::Rejected));
        assert!(
            a.message
                .contains("argv is 101 bytes, over kinds.dnsmasq.max_argv_bytes (100)"),
            "{}",
            a.message
        );
        assert_eq!(Profile::argv_bytes(&["ab".into(), String::new()]), 4);
    }

    #[test]
    fn hundred_thousand_identical_requests_fold_to_one() {
        let t = tag1();
        let batch: Vec<_> = (0..100_000)
            .map(|i| start(&format!("r{i}"), Some(&t), U1, &["x"]))
            .collect();
        let p = go(&batch, &[]);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].answers.len(), 100_000);
    }
}
