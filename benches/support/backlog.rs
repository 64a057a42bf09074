//! Part 2's synthetic backlog, and the phases measured in child processes
//! (this bench binary re-run with `CHILD_FLAG PHASE N [DIR]`): each prints
//! `nanos=<its own timing>` and what it checked. The phases that need a
//! host directory get an empty one from the parent, which owns it (and so
//! removes it even when a child dies).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sidespawn::host::config::{HostConfig, Profile};
use sidespawn::host::plan::{self, JobKind, Plan, Planner};
use sidespawn::host::runtime::{ContainerInfo, FakeRuntime, State};
use sidespawn::host::sync::{self, Summary, SyncOptions};
use sidespawn::shared::ack::{Ack, Outcome};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;
use sidespawn::shared::record::{Action, NetnsRef, Record, Signal, VERSION, new_id, now_ms};

use crate::{CHILD_FLAG, HostSetup, NO_PODMAN, UNUSED_IMAGE, s};
use sidespawn::host::namespaces::FakeNamespaces;

/// A Neutron DHCP agent's dnsmasq argv (`{u}`: the network's UUID), so
/// records and labels have their real size (about 1 KiB per queue line).
const DNSMASQ_ARGS: &[&str] = &[
    "--no-hosts",
    "--no-resolv",
    "--pid-file=/var/lib/neutron/dhcp/{u}/pid",
    "--dhcp-hostsfile=/var/lib/neutron/dhcp/{u}/host",
    "--addn-hosts=/var/lib/neutron/dhcp/{u}/addn_hosts",
    "--dhcp-optsfile=/var/lib/neutron/dhcp/{u}/opts",
    "--dhcp-leasefile=/var/lib/neutron/dhcp/{u}/leases",
    "--dhcp-match=set:ipxe,175",
    "--dhcp-userclass=set:ipxe6,iPXE",
    "--local-service",
    "--bind-dynamic",
    "--dhcp-range=set:subnet-{u},10.0.0.0,static,255.255.255.0,86400s",
    "--dhcp-option-force=option:mtu,1442",
    "--dhcp-lease-max=256",
    "--conf-file=/dev/null",
    "--domain=openstacklocal",
];

/// The synthetic backlog of `n` requests (a multiple of 100): `n / 10`
/// sidecars, each asked for 10 times, in rounds (every sidecar's first
/// request, then every second one... as a periodic resync queues them).
/// Sidecar `k`, by `k % 10`:
///
/// * 0: runs; the last request changes one argument → replace;
/// * 1: runs; a HUP for its pid among identical starts → signal, unchanged;
/// * 2: runs; the last request is a TERM → stop and remove;
/// * 3: its container exited → remove the leftover, start;
/// * 4: no container → start; and a container of a vanished namespace
///   stands beside it → orphan removed;
/// * 5-9: runs, identical repeats → unchanged, answered at once.
///
/// So `n / 10` containers exist, and 2 % of the requests are signals. The
/// requests are made on demand from their position ([`Fixture::records`]),
/// so that no phase holds the backlog unless the code measured does.
struct Fixture {
    /// How many requests the backlog has.
    requests: usize,
    containers: Vec<ContainerInfo>,
    namespaces: FakeNamespaces,
    groups: usize,
}

fn key_uuid(k: usize) -> String {
    format!("{k:08x}-0000-4000-8000-{k:012x}")
}

fn orphan_uuid(k: usize) -> String {
    format!("{k:08x}-0000-4000-8000-{:012x}", k + 0xdead_0000_0000)
}

fn first_ino(k: usize) -> u64 {
    4_026_532_000 + k as u64
}

fn pid_of(k: usize) -> u32 {
    100_000 + u32::try_from(k).expect("sizes stay far below u32")
}

fn start_record(uuid: &str, ino: u64, changed: bool) -> Record {
    let mut argv: Vec<String> = DNSMASQ_ARGS
        .iter()
        .map(|a| a.replace("{u}", uuid))
        .collect();
    if changed {
        argv.push("--dhcp-lease-max=512".into());
    }
    let ts = now_ms();
    Record {
        v: VERSION,
        id: new_id(ts),
        kind: Kind::Dnsmasq,
        action: Action::Start,
        argv,
        netns: Some(NetnsRef {
            name: format!("qdhcp-{uuid}"),
            dev: 4,
            ino,
        }),
        tag: Some(format!("dnsmasq-{uuid}")),
        signal: None,
        pid: None,
        ts,
    }
}

/// A kill-script request; kill scripts may run on the host network, so it
/// carries no namespace and no tag, only the pid.
fn signal_record(signal: Signal, pid: u32) -> Record {
    let ts = now_ms();
    Record {
        v: VERSION,
        id: new_id(ts),
        kind: Kind::Dnsmasq,
        action: Action::Signal,
        argv: Vec::new(),
        netns: None,
        tag: None,
        signal: Some(signal),
        pid: Some(pid),
        ts,
    }
}

/// The container sidespawn would have made for `rec`.
fn container_for(profile: &Profile, rec: &Record, state: State, pid: u32) -> ContainerInfo {
    let spec = plan::run_spec(profile, Path::new("/run/netns"), rec, 1);
    ContainerInfo {
        id: format!("{:064x}", plan::fnv1a(spec.name.as_bytes())),
        name: spec.name,
        state,
        pid,
        image: spec.image,
        labels: spec.labels,
        started_at: 1_700_000_000,
        exit_code: 0,
    }
}

fn fixture(profile: &Profile, n: usize) -> Fixture {
    let keys = n / 10;
    let mut containers = Vec::with_capacity(keys);
    let mut table = HashMap::with_capacity(keys);
    for k in 0..keys {
        let uuid = key_uuid(k);
        table.insert(format!("qdhcp-{uuid}"), first_ino(k));
        let base = start_record(&uuid, first_ino(k), false);
        match k % 10 {
            3 => containers.push(container_for(profile, &base, State::Exited, 0)),
            4 => {
                let gone = orphan_uuid(k);
                let rec = start_record(&gone, 1, false);
                containers.push(container_for(profile, &rec, State::Running, pid_of(k)));
            }
            _ => containers.push(container_for(profile, &base, State::Running, pid_of(k))),
        }
    }
    Fixture {
        requests: n,
        containers,
        namespaces: FakeNamespaces::new(table),
        groups: keys / 10,
    }
}

impl Fixture {
    /// The backlog in queue order: round `i / keys` of sidecar `i % keys`.
    fn records(&self) -> impl Iterator<Item = Record> {
        let keys = self.requests / 10;
        (0..self.requests).map(move |i| {
            let (round, k) = (i / keys, i % keys);
            let uuid = key_uuid(k);
            match (k % 10, round) {
                (0, 9) => start_record(&uuid, first_ino(k), true),
                (1, 5) => signal_record(Signal::Hup, pid_of(k)),
                (2, 9) => signal_record(Signal::Term, pid_of(k)),
                _ => start_record(&uuid, first_ino(k), false),
            }
        })
    }

    /// Passes the backlog to `f`, made ahead a chunk at a time outside the
    /// timing, so the time returned is `f`'s alone (taking each record and
    /// dropping what it does not keep) and at most a chunk is held.
    fn feed(&self, mut f: impl FnMut(Record)) -> Duration {
        const CHUNK: usize = 256;
        let mut records = self.records();
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut took = Duration::ZERO;
        loop {
            chunk.extend(records.by_ref().take(CHUNK));
            if chunk.is_empty() {
                return took;
            }
            let t = Instant::now();
            chunk.drain(..).for_each(&mut f);
            took += t.elapsed();
        }
    }
}

/// Checks a plan of the fixture decided what the fixture implies, so that a
/// planner that skipped work could not look fast.
fn check_plan(p: &Plan, fx: &Fixture) -> Result<String, String> {
    let g = fx.groups;
    let count = |w: JobKind| p.jobs.iter().filter(|j| j.what == w).count();
    let got = [
        count(JobKind::Replace),
        count(JobKind::Signal),
        count(JobKind::Stop),
        count(JobKind::Start),
        count(JobKind::Orphan),
        p.unchanged,
    ];
    let want = [g, g, g, 2 * g, g, 6 * g];
    let answered = p.answers.len() + p.jobs.iter().map(|j| j.answers.len()).sum::<usize>();
    if got != want || answered != fx.requests || p.rejected() != 0 {
        return Err(format!(
            "unexpected plan: replace/signal/stop/start/orphan/unchanged {got:?}, want {want:?}; \
             {answered} of {} requests answered, {} rejected",
            fx.requests,
            p.rejected()
        ));
    }
    Ok(format!(
        "jobs={} unchanged={} immediate_answers={}",
        p.jobs.len(),
        p.unchanged,
        p.answers.len()
    ))
}

fn check_summary(s: &Summary, fx: &Fixture) -> Result<(), String> {
    let g = fx.groups;
    let want = Summary {
        claimed: fx.requests,
        started: 2 * g,
        replaced: g,
        unchanged: 6 * g,
        signalled: g,
        removed: 2 * g,
        failed: 0,
        rejected: 0,
        restarts: 0,
        errors: Vec::new(),
        dry_run: Vec::new(),
        would: false,
        next_restart_ms: None,
    };
    if *s != want {
        return Err(format!("sync gave {s:?}, want {want:?}"));
    }
    Ok(())
}

/// The measured phases of part 2, each run in a fresh process.
pub mod child {
    use super::*;

    pub fn main(args: &[String]) -> ExitCode {
        let result = match args {
            [phase, n, rest @ ..] if rest.len() <= 1 => match n.parse::<usize>() {
                Ok(n) => match (phase.as_str(), rest.first().map(Path::new)) {
                    ("idle", None) => Ok(s("nanos=0")),
                    ("plan", None) => plan_phase(n),
                    ("fold", None) => fold_phase(n),
                    ("sync", Some(dir)) => sync_phase(n, dir),
                    ("floor", Some(dir)) => floor_phase(n, dir),
                    _ => Err(format!("unknown phase or missing directory: {args:?}")),
                },
                Err(e) => Err(format!("bad size {n:?}: {e}")),
            },
            _ => Err(format!("usage: {CHILD_FLAG} PHASE N [DIR]; got {args:?}")),
        };
        match result {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sync bench child {args:?}: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// A profile exactly as the host configuration yields it.
    fn profile() -> Result<Profile, String> {
        let dir = Path::new("/nonexistent/sidespawn-bench");
        let text = HostSetup {
            dir,
            image: UNUSED_IMAGE,
            podman: Path::new(NO_PODMAN),
            parallelism: 8,
            run_label: "fold",
            max_queue_bytes: None,
        }
        .json();
        let cfg =
            HostConfig::from_str(&dir.join("config.json"), &text).map_err(|e| e.to_string())?;
        cfg.profile(Kind::Dnsmasq)
            .cloned()
            .map_err(|e| e.to_string())
    }

    fn plan_phase(n: usize) -> Result<String, String> {
        let profile = profile()?;
        let fx = fixture(&profile, n);
        let mut generation = 1;
        let mut planner = Planner::new(&profile, &fx.containers);
        let mut took = fx.feed(|r| planner.push(r));
        let t = Instant::now();
        let p = planner.finish(&fx.namespaces, &mut generation, true);
        took += t.elapsed();
        let what = check_plan(&p, &fx)?;
        Ok(format!("nanos={} {what}", took.as_nanos()))
    }

    /// The least any streaming fold does: one key per request into a map,
    /// and the request dropped.
    fn fold_phase(n: usize) -> Result<String, String> {
        let profile = profile()?;
        let fx = fixture(&profile, n);
        let mut last: HashMap<String, usize> = HashMap::with_capacity(n / 10);
        let mut i = 0;
        let took = fx.feed(|r| {
            last.insert(plan::key_of(r.kind, r.tag.as_deref(), r.netns.as_ref()), i);
            i += 1;
        });
        std::hint::black_box(&last);
        Ok(format!("nanos={} keys={}", took.as_nanos(), last.len()))
    }

    /// Sets up a host in `dir` with the fixture appended to the dnsmasq
    /// queue the way wrappers append (untimed).
    fn queued_host(n: usize, dir: &Path) -> Result<(HostConfig, Fixture), String> {
        let (_, cfg) = HostSetup {
            dir,
            image: UNUSED_IMAGE,
            podman: Path::new(NO_PODMAN),
            parallelism: 8,
            run_label: "fold",
            max_queue_bytes: Some(1 << 30),
        }
        .write()?;
        let profile = cfg.profile(Kind::Dnsmasq).map_err(|e| e.to_string())?;
        let fx = fixture(profile, n);
        let q = QueueDir::new(&cfg.queue_root, Kind::Dnsmasq);
        fs::create_dir_all(q.dir()).map_err(|e| e.to_string())?;
        for r in fx.records() {
            q.append(&r, Duration::from_secs(10), || {})
                .map_err(|e| e.to_string())?;
        }
        Ok((cfg, fx))
    }

    fn sync_phase(n: usize, dir: &Path) -> Result<String, String> {
        let (cfg, fx) = queued_host(n, dir)?;
        let fake = FakeRuntime::new(fx.containers.clone());
        let t = Instant::now();
        let summary = sync::run(&cfg, &fake, &fx.namespaces, &SyncOptions::default())
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        check_summary(&summary, &fx)?;
        let acks = fs::read_dir(dir.join("queue/dnsmasq/acks"))
            .map_err(|e| e.to_string())?
            .count();
        if acks != n {
            return Err(format!("{acks} acknowledgements for {n} requests"));
        }
        Ok(format!(
            "nanos={} podman_calls={}",
            took.as_nanos(),
            fake.calls().len()
        ))
    }

    /// The I/O any durable claim-and-answer must do, with nothing else:
    /// read and validate every line, write the journal and fsync it, empty
    /// the queue, and write one acknowledgement file (temporary + rename)
    /// per request.
    fn floor_phase(n: usize, dir: &Path) -> Result<String, String> {
        let (cfg, _) = queued_host(n, dir)?;
        let q = QueueDir::new(&cfg.queue_root, Kind::Dnsmasq);
        let journal_path = dir.join("journal.jsonl");
        let acks = q.acks();
        fs::create_dir_all(&acks).map_err(|e| e.to_string())?;
        let err = |e: std::io::Error| e.to_string();
        let t = Instant::now();
        let bytes = fs::read(q.queue()).map_err(err)?;
        let mut journal = Vec::with_capacity(bytes.len());
        let mut ids = Vec::with_capacity(n);
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let r = Record::parse_line(line).map_err(|e| e.to_string())?;
            journal.extend_from_slice(line);
            journal.push(b'\n');
            ids.push(r.id);
        }
        let mut j = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&journal_path)
            .map_err(err)?;
        j.write_all(&journal).map_err(err)?;
        j.sync_all().map_err(err)?;
        OpenOptions::new()
            .write(true)
            .open(q.queue())
            .and_then(|f| f.set_len(0))
            .map_err(err)?;
        for id in &ids {
            let ack = Ack {
                v: VERSION,
                id: id.clone(),
                result: Outcome::Ok,
                message: s(
                    "sidespawn-dnsmasq-t-dnsmasq-00000000-0000-4000-8000-000000000000 already runs with these arguments",
                ),
                container: Some(s(
                    "sidespawn-dnsmasq-t-dnsmasq-00000000-0000-4000-8000-000000000000",
                )),
                ts: now_ms(),
            };
            let json = serde_json::to_vec(&ack).map_err(|e| e.to_string())?;
            let tmp = acks.join(format!(".tmp-{id}"));
            fs::write(&tmp, &json).map_err(err)?;
            fs::rename(&tmp, acks.join(format!("{id}.json"))).map_err(err)?;
        }
        let took = t.elapsed();
        if ids.len() != n {
            return Err(format!("read {} of {n} requests", ids.len()));
        }
        Ok(format!("nanos={}", took.as_nanos()))
    }
}
