//! The desired-state table: per kind, the sidecars the agents asked for and
//! have not stopped, each with the start record that won and its restart
//! bookkeeping.
//!
//! Podman only remembers containers, and a container can vanish (removed by
//! hand, lost with podman's storage) or exit; the agent only re-requests
//! some kinds (keepalived, radvd) and never dnsmasq or haproxy. This table
//! is what lets a sync start a dead sidecar again with the same argv, and
//! lets `upgrade` replace sidecars without a new request. It lives in the
//! host-private state directory (`<state_dir>/desired/<kind>.json`), is
//! written atomically, and only under the kind's sync lock.
//!
//! Planning restarts is pure ([`plan_restarts`]); applying job outcomes to
//! the table is too ([`apply`]), so both are unit-tested without podman.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Profile;
use crate::kind::Kind;
use crate::netns::NetnsError;
use crate::plan::{Job, JobKind, Namespaces, Plan, Step, run_spec};
use crate::record::Record;
use crate::runtime::{ContainerInfo, State, labels};
use crate::state::{StateDir, StateError, read_json, write_atomic};

/// Format version of the table file.
pub const VERSION: u32 = 1;

/// One desired sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSidecar {
    /// The deterministic container name.
    pub container: String,
    /// The start request that won: argv, namespace (with inode), tag, id.
    pub record: Record,
    /// Generation of the container last started for it.
    pub generation: u64,
    /// The image it was last started with.
    pub image: String,
    /// Unix ms of the automatic restarts (attempts included) still inside
    /// the policy's window, oldest first.
    #[serde(default)]
    pub restarts: Vec<u64>,
    /// Why the last start or restart failed, or why it is not restarted.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One kind's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredTable {
    pub v: u32,
    /// By sidecar key ([`key_of`]).
    pub sidecars: BTreeMap<String, DesiredSidecar>,
}

impl Default for DesiredTable {
    fn default() -> DesiredTable {
        DesiredTable {
            v: VERSION,
            sidecars: BTreeMap::new(),
        }
    }
}

/// `<state_dir>/desired/<kind>.json`.
pub fn path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("desired").join(format!("{kind}.json"))
}

impl DesiredTable {
    /// Loads the table; a missing file is an empty table.
    pub fn load(state: &StateDir, kind: Kind) -> Result<DesiredTable, StateError> {
        let p = path(state, kind);
        let t: DesiredTable = read_json(&p)?.unwrap_or_default();
        if t.v != VERSION {
            return Err(StateError::Corrupt {
                path: p,
                message: format!("format version {} (this sidespawn reads {VERSION})", t.v),
            });
        }
        Ok(t)
    }

    /// Writes the table atomically and durably: a lost update would
    /// restart a sidecar the agent stopped, or forget one it wants.
    pub fn store(&self, state: &StateDir, kind: Kind) -> Result<(), StateError> {
        let p = path(state, kind);
        let text = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &text)
    }
}

/// Why a dead desired sidecar is not started again now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// `restart.enabled` is false.
    Disabled,
    /// Restarted less than `backoff` ago; retried after `until_ms`.
    Backoff { until_ms: u64 },
    /// `max_restarts` within `window` reached.
    GaveUp { restarts: usize, window_s: u64 },
}

impl Blocked {
    pub fn message(&self, kind: Kind) -> String {
        match self {
            Blocked::Disabled => {
                format!("not running; automatic restart is off (kinds.{kind}.restart.enabled)")
            }
            Blocked::Backoff { until_ms } => format!(
                "not running; restarted recently, next attempt after {}s (kinds.{kind}.restart.backoff_s)",
                until_ms
                    .saturating_sub(crate::record::now_ms())
                    .div_ceil(1000)
            ),
            Blocked::GaveUp { restarts, window_s } => format!(
                "not running; restarted {restarts} times in the last {window_s}s, giving up until the window passes or the agent asks again (kinds.{kind}.restart.max_restarts)"
            ),
        }
    }
}

/// What [`plan_restarts`] decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestartPlan {
    /// One job per sidecar started again (`JobKind::Restart`).
    pub jobs: Vec<Job>,
    /// Sidecars whose namespace is gone or was recreated: they can never
    /// run as recorded, so they leave the table.
    pub forget: Vec<(String, String)>,
    /// Dead sidecars left dead, and why.
    pub blocked: Vec<(String, Blocked)>,
}

/// What the sync saw this pass, for [`plan_restarts`].
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// What podman reported.
    pub actual: &'a [ContainerInfo],
    /// Keys the request plan already acts on.
    pub busy: &'a HashSet<String>,
    /// Container names whose health check failed.
    pub unhealthy: &'a HashSet<String>,
}

/// Whether a container counts as dead for the restart policy.
fn is_dead(c: Option<&ContainerInfo>) -> bool {
    c.is_none_or(|c| c.state != State::Running)
}

/// Plans restarts of desired sidecars whose container is missing or not
/// running, given what podman reported. `busy` holds keys the request plan
/// already acts on (their fate is the agent's latest word, not ours).
/// `unhealthy` holds container names whose health check failed: they count
/// as dead. `next_generation` advances once per restart.
pub fn plan_restarts(
    profile: &Profile,
    table: &DesiredTable,
    seen: &Observed,
    namespaces: &dyn Namespaces,
    next_generation: &mut u64,
    now_ms: u64,
) -> RestartPlan {
    let Observed {
        actual,
        busy,
        unhealthy,
    } = *seen;
    let kind = profile.kind;
    let policy = profile.restart;
    let mut out = RestartPlan::default();
    for (key, d) in &table.sidecars {
        if busy.contains(key) {
            continue;
        }
        let c = actual.iter().find(|c| {
            c.name == d.container
                && c.labels.get(labels::KIND).map(String::as_str) == Some(kind.as_str())
        });
        if !is_dead(c) && !unhealthy.contains(&d.container) {
            continue;
        }
        if let Some(ns) = &d.record.netns {
            match namespaces.verify(ns) {
                Ok(_) => {}
                Err(e @ (NetnsError::Missing { .. } | NetnsError::InodeMismatch { .. })) => {
                    out.forget.push((key.clone(), e.to_string()));
                    continue;
                }
                // Cannot tell now (a stat failed): neither restart nor forget.
                Err(_) => continue,
            }
        }
        if !policy.enabled {
            out.blocked.push((key.clone(), Blocked::Disabled));
            continue;
        }
        let window_ms = policy.window.as_millis() as u64;
        // A time after now was stored before the wall clock went back: it
        // counts as now, so a step back delays a restart by the backoff at
        // most, never by the size of the step.
        let recent: Vec<u64> = d
            .restarts
            .iter()
            .map(|&t| t.min(now_ms))
            .filter(|&t| now_ms.saturating_sub(t) < window_ms)
            .collect();
        if recent.len() >= policy.max_restarts as usize {
            out.blocked.push((
                key.clone(),
                Blocked::GaveUp {
                    restarts: recent.len(),
                    window_s: policy.window.as_secs(),
                },
            ));
            continue;
        }
        if let Some(&last) = recent.last() {
            let until_ms = last + policy.backoff.as_millis() as u64;
            if now_ms < until_ms {
                out.blocked
                    .push((key.clone(), Blocked::Backoff { until_ms }));
                continue;
            }
        }
        let generation = *next_generation;
        *next_generation += 1;
        let spec = run_spec(profile, &namespaces.dir(), &d.record, generation);
        let mut steps = Vec::new();
        if c.is_some() {
            // An exited, created or unhealthy container still holds the name.
            steps.push(Step::Remove {
                name: d.container.clone(),
            });
        }
        steps.push(Step::Run {
            spec,
            netns: d.record.netns.clone(),
        });
        out.jobs.push(Job {
            key: key.clone(),
            container: d.container.clone(),
            what: JobKind::Restart,
            steps,
            answers: Vec::new(),
            request: None,
        });
    }
    out
}

/// How one job of a plan ended, for [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Ok,
    Failed(String),
    Rejected(String),
}

/// The run step of a job, if it has one.
fn run_step(job: &Job) -> Option<&crate::runtime::RunSpec> {
    job.steps.iter().find_map(|s| match s {
        Step::Run { spec, .. } => Some(spec),
        _ => None,
    })
}

fn generation_of(labels_: &BTreeMap<String, String>) -> u64 {
    labels_
        .get(labels::GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Brings the table up to date with a plan that ran: `outcomes[i]` is how
/// `plan.jobs[i]` ended. Successful starts and replaces insert the record
/// that won; stops (whatever their outcome: the agent wants the sidecar
/// gone) and orphans remove; restarts update the bookkeeping. A failed start
/// still records the new record, since it is the agent's latest word, so a
/// later sync retries it under the restart policy. Identical repeats of a
/// running sidecar that the table does not know yet are adopted. The records
/// come from the plan (each job's and each kept sidecar's winning start), so
/// the batch itself need not be kept.
pub fn apply(
    table: &mut DesiredTable,
    plan: &Plan,
    outcomes: &[JobOutcome],
    actual: &[ContainerInfo],
    now_ms: u64,
) {
    for (job, outcome) in plan.jobs.iter().zip(outcomes) {
        match job.what {
            JobKind::Stop => {
                table.sidecars.remove(&job.key);
            }
            JobKind::Orphan => {
                if table
                    .sidecars
                    .get(&job.key)
                    .is_some_and(|d| d.container == job.container)
                    && *outcome == JobOutcome::Ok
                {
                    table.sidecars.remove(&job.key);
                }
            }
            JobKind::Signal => {}
            JobKind::Start | JobKind::Replace => {
                let (Some(spec), Some(rec)) = (run_step(job), &job.request) else {
                    continue;
                };
                match outcome {
                    JobOutcome::Rejected(_) => {
                        table.sidecars.remove(&job.key);
                    }
                    JobOutcome::Ok | JobOutcome::Failed(_) => {
                        let failed = match outcome {
                            JobOutcome::Failed(m) => Some(m.clone()),
                            _ => None,
                        };
                        table.sidecars.insert(
                            job.key.clone(),
                            DesiredSidecar {
                                container: job.container.clone(),
                                record: rec.clone(),
                                generation: generation_of(&spec.labels),
                                image: spec.image.clone(),
                                // A failed start counts as an attempt, so
                                // retries of it are spaced by the backoff.
                                restarts: if failed.is_some() {
                                    vec![now_ms]
                                } else {
                                    Vec::new()
                                },
                                last_error: failed,
                            },
                        );
                    }
                }
            }
            JobKind::Restart => {
                let Some(d) = table.sidecars.get_mut(&job.key) else {
                    continue;
                };
                d.restarts.push(now_ms);
                match outcome {
                    JobOutcome::Ok => {
                        if let Some(spec) = run_step(job) {
                            d.generation = generation_of(&spec.labels);
                            d.image = spec.image.clone();
                        }
                        d.last_error = None;
                    }
                    JobOutcome::Failed(m) => d.last_error = Some(m.clone()),
                    // The namespace went away between planning and running.
                    JobOutcome::Rejected(_) => {
                        table.sidecars.remove(&job.key);
                    }
                }
            }
        }
    }
    // Adopt identical repeats of a running sidecar the table lacks (a state
    // directory from before the table existed, or one rebuilt by hand).
    let jobs: HashSet<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    for k in &plan.kept {
        if jobs.contains(k.key.as_str()) || table.sidecars.contains_key(&k.key) {
            continue;
        }
        let Some(c) = actual.iter().find(|c| c.name == k.container) else {
            continue;
        };
        table.sidecars.insert(
            k.key.clone(),
            DesiredSidecar {
                container: k.container.clone(),
                record: k.request.clone(),
                generation: generation_of(&c.labels),
                image: c.image.clone(),
                restarts: Vec::new(),
                last_error: None,
            },
        );
    }
}

/// Takes out of the table, before the plan runs, the sidecars it stops;
/// returns whether anything changed.
pub fn apply_intents(table: &mut DesiredTable, plan: &Plan) -> bool {
    let mut changed = false;
    for job in &plan.jobs {
        if job.what == JobKind::Stop {
            changed |= table.sidecars.remove(&job.key).is_some();
        }
    }
    changed
}

/// Brings restart times stored in the future (the wall clock was stepped
/// back since) down to `now_ms`, so the window and the backoff run from now
/// instead of waiting for the clock to catch up. Returns whether anything
/// changed.
pub fn clamp_future(table: &mut DesiredTable, now_ms: u64) -> bool {
    let mut changed = false;
    for d in table.sidecars.values_mut() {
        for t in &mut d.restarts {
            if *t > now_ms {
                *t = now_ms;
                changed = true;
            }
        }
    }
    changed
}

/// Remembers why sidecars are not restarted, and forgets those whose
/// namespace is gone.
pub fn apply_restart_decisions(table: &mut DesiredTable, kind: Kind, rp: &RestartPlan) {
    for (key, _) in &rp.forget {
        table.sidecars.remove(key);
    }
    for (key, why) in &rp.blocked {
        if let Some(d) = table.sidecars.get_mut(key) {
            d.last_error = Some(why.message(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;
    use crate::plan::{FakeNamespaces, key_of};
    use crate::record::{Action, NetnsRef, VERSION as RECORD_VERSION};
    use std::time::Duration;

    const U1: &str = "0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a";

    fn ns() -> FakeNamespaces {
        FakeNamespaces::new([(format!("qdhcp-{U1}"), 100)])
    }

    fn profile() -> Profile {
        let mut p = Profile::defaults(Kind::Dnsmasq);
        p.image = Some("localhost/dnsmasq:1".into());
        p
    }

    fn rec(id: &str) -> Record {
        Record {
            v: RECORD_VERSION,
            id: id.into(),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: vec!["--no-hosts".into(), "".into()],
            netns: Some(NetnsRef {
                name: format!("qdhcp-{U1}"),
                dev: 4,
                ino: 100,
            }),
            tag: Some(format!("dnsmasq-{U1}")),
            signal: None,
            pid: None,
            ts: 1,
        }
    }

    fn table_with(r: &Record, restarts: Vec<u64>) -> DesiredTable {
        let mut t = DesiredTable::default();
        let spec = run_spec(&profile(), std::path::Path::new("/run/netns"), r, 3);
        t.sidecars.insert(
            key_of(Kind::Dnsmasq, r.tag.as_deref(), r.netns.as_ref()),
            DesiredSidecar {
                container: spec.name,
                record: r.clone(),
                generation: 3,
                image: spec.image,
                restarts,
                last_error: None,
            },
        );
        t
    }

    fn container(r: &Record, state: State) -> ContainerInfo {
        let spec = run_spec(&profile(), std::path::Path::new("/run/netns"), r, 3);
        ContainerInfo {
            id: "x".into(),
            name: spec.name,
            pid: if state == State::Running { 55 } else { 0 },
            state,
            image: spec.image,
            labels: spec.labels,
            started_at: 0,
            exit_code: 137,
        }
    }

    fn go(p: &Profile, t: &DesiredTable, actual: &[ContainerInfo], now: u64) -> RestartPlan {
        let mut g = 10;
        plan_restarts(
            p,
            t,
            &Observed {
                actual,
                busy: &HashSet::new(),
                unhealthy: &HashSet::new(),
            },
            &ns(),
            &mut g,
            now,
        )
    }

    #[test]
    fn running_sidecar_is_left_alone() {
        let r = rec("a");
        let rp = go(
            &profile(),
            &table_with(&r, vec![]),
            &[container(&r, State::Running)],
            1_000_000,
        );
        assert_eq!(rp, RestartPlan::default());
    }

    #[test]
    fn exited_sidecar_is_removed_and_started_with_the_next_generation() {
        let r = rec("a");
        let rp = go(
            &profile(),
            &table_with(&r, vec![]),
            &[container(&r, State::Exited)],
            1_000_000,
        );
        assert_eq!(rp.jobs.len(), 1);
        let j = &rp.jobs[0];
        assert_eq!(j.what, JobKind::Restart);
        assert_eq!(
            j.steps[0],
            Step::Remove {
                name: j.container.clone()
            }
        );
        let Step::Run { spec, .. } = &j.steps[1] else {
            panic!("{:?}", j.steps)
        };
        assert_eq!(spec.labels[labels::GENERATION], "10");
        assert_eq!(spec.daemon_argv, ["-k", "--no-hosts", ""]);
        assert_eq!(spec.labels[labels::REQUEST_ID], "a");
    }

    #[test]
    fn missing_container_is_started_without_a_remove() {
        let r = rec("a");
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert_eq!(rp.jobs.len(), 1);
        assert!(matches!(rp.jobs[0].steps[..], [Step::Run { .. }]));
    }

    #[test]
    fn unhealthy_running_sidecar_counts_as_dead() {
        let r = rec("a");
        let t = table_with(&r, vec![]);
        let c = container(&r, State::Running);
        let mut g = 1;
        let rp = plan_restarts(
            &profile(),
            &t,
            &Observed {
                actual: std::slice::from_ref(&c),
                busy: &HashSet::new(),
                unhealthy: &HashSet::from([c.name.clone()]),
            },
            &ns(),
            &mut g,
            1_000_000,
        );
        assert_eq!(rp.jobs.len(), 1);
        assert!(matches!(rp.jobs[0].steps[0], Step::Remove { .. }));
    }

    #[test]
    fn policy_disabled_backoff_and_give_up() {
        let r = rec("a");
        let now = 10_000_000;
        let mut p = profile();
        p.restart = RestartPolicy {
            enabled: false,
            ..RestartPolicy::default()
        };
        let rp = go(&p, &table_with(&r, vec![]), &[], now);
        assert!(rp.jobs.is_empty());
        assert_eq!(rp.blocked[0].1, Blocked::Disabled);

        // Restarted 2 s ago; the backoff is 5 s.
        let rp = go(&profile(), &table_with(&r, vec![now - 2000]), &[], now);
        assert!(rp.jobs.is_empty());
        assert_eq!(
            rp.blocked[0].1,
            Blocked::Backoff {
                until_ms: now + 3000
            }
        );
        // 6 s ago: restarted.
        let rp = go(&profile(), &table_with(&r, vec![now - 6000]), &[], now);
        assert_eq!(rp.jobs.len(), 1);

        // Five restarts in the window: given up.
        let five: Vec<u64> = (1..=5).map(|i| now - 100_000 + i * 10_000).collect();
        let rp = go(&profile(), &table_with(&r, five.clone()), &[], now);
        assert!(rp.jobs.is_empty());
        assert!(matches!(
            rp.blocked[0].1,
            Blocked::GaveUp { restarts: 5, .. }
        ));
        // Once the window passed they no longer count.
        let later = now + Duration::from_secs(600).as_millis() as u64;
        let rp = go(&profile(), &table_with(&r, five), &[], later);
        assert_eq!(rp.jobs.len(), 1);
    }

    #[test]
    fn restart_times_in_the_future_count_as_now() {
        // The wall clock went back a day after these were stored.
        let r = rec("a");
        let now = 10_000_000_000;
        let day = 86_400_000;
        let rp = go(&profile(), &table_with(&r, vec![now + day]), &[], now);
        assert_eq!(
            rp.blocked[0].1,
            Blocked::Backoff {
                until_ms: now + 5000
            }
        );
        // The sync stores the clamped time, so the backoff runs from then.
        let mut t = table_with(&r, vec![now - 1, now + day]);
        assert!(clamp_future(&mut t, now));
        assert_eq!(t.sidecars.values().next().unwrap().restarts, [now - 1, now]);
        assert!(!clamp_future(&mut t, now));
        let rp = go(&profile(), &t, &[], now + 5000);
        assert_eq!(rp.jobs.len(), 1);
    }

    #[test]
    fn vanished_or_recreated_namespace_is_forgotten() {
        let mut r = rec("a");
        r.netns.as_mut().unwrap().ino = 99;
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert!(rp.jobs.is_empty());
        assert_eq!(rp.forget.len(), 1);
        r.netns.as_mut().unwrap().name = "qdhcp-gone".into();
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert_eq!(rp.forget.len(), 1);
        let mut t = table_with(&r, vec![]);
        apply_restart_decisions(&mut t, Kind::Dnsmasq, &rp);
        assert!(t.sidecars.is_empty());
    }

    #[test]
    fn busy_keys_are_the_request_plans_business() {
        let r = rec("a");
        let t = table_with(&r, vec![]);
        let busy: HashSet<String> = t.sidecars.keys().cloned().collect();
        let mut g = 1;
        let rp = plan_restarts(
            &profile(),
            &t,
            &Observed {
                actual: &[],
                busy: &busy,
                unhealthy: &HashSet::new(),
            },
            &ns(),
            &mut g,
            1,
        );
        assert!(rp.jobs.is_empty());
    }

    #[test]
    fn apply_inserts_starts_removes_stops_and_counts_restarts() {
        let r = rec("a");
        let mut g = 1;
        let p = crate::plan::plan(&profile(), [r.clone()], &[], &ns(), &mut g, true);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[JobOutcome::Ok], &[], 5);
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.record, r);
        assert_eq!(d.generation, 1);
        assert!(d.restarts.is_empty());

        // A restart that failed is counted and explained.
        let rp = go(&profile(), &t, &[], 1_000_000);
        let rplan = Plan {
            jobs: rp.jobs.clone(),
            ..Plan::default()
        };
        apply(
            &mut t,
            &rplan,
            &[JobOutcome::Failed("boom".into())],
            &[],
            1_000_000,
        );
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.restarts, [1_000_000]);
        assert_eq!(d.last_error.as_deref(), Some("boom"));
        apply(&mut t, &rplan, &[JobOutcome::Ok], &[], 1_010_000);
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.generation, 10);
        assert_eq!(d.last_error, None);

        // A stop request removes it.
        let c = container(&r, State::Running);
        let mut stop = rec("k");
        stop.action = Action::Signal;
        stop.signal = Some(crate::record::Signal::Term);
        stop.pid = Some(55);
        stop.tag = None;
        stop.argv.clear();
        let p = crate::plan::plan(
            &profile(),
            [stop],
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        apply(&mut t, &p, &[JobOutcome::Ok], &[c], 6);
        assert!(t.sidecars.is_empty());
    }

    #[test]
    fn apply_adopts_a_running_identical_repeat() {
        let r = rec("a");
        let c = container(&r, State::Running);
        let mut g = 1;
        let p = crate::plan::plan(
            &profile(),
            [r],
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        assert_eq!(p.unchanged, 1);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[], &[c], 5);
        assert_eq!(t.sidecars.len(), 1);
        assert_eq!(t.sidecars.values().next().unwrap().generation, 3);
    }

    #[test]
    fn apply_adopts_the_winning_start_not_a_superseded_one() {
        let r = rec("b");
        let c = container(&r, State::Running);
        let mut earlier = rec("a");
        earlier.argv = vec!["--other".into()];
        let batch = [earlier, r.clone()];
        let mut g = 1;
        let p = crate::plan::plan(
            &profile(),
            batch,
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        assert_eq!(p.unchanged, 1);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[], &[c], 5);
        assert_eq!(t.sidecars.values().next().unwrap().record, r);
    }

    #[test]
    fn table_round_trips_and_names_its_path_when_corrupt() {
        let d =
            std::env::temp_dir().join(format!("sidespawn-desired-{}", crate::record::new_id(0)));
        let s = StateDir::new(&d);
        assert_eq!(
            DesiredTable::load(&s, Kind::Dnsmasq).unwrap(),
            DesiredTable::default()
        );
        let t = table_with(&rec("a"), vec![7]);
        t.store(&s, Kind::Dnsmasq).unwrap();
        assert_eq!(DesiredTable::load(&s, Kind::Dnsmasq).unwrap(), t);
        std::fs::write(path(&s, Kind::Dnsmasq), b"{").unwrap();
        let e = DesiredTable::load(&s, Kind::Dnsmasq)
            .unwrap_err()
            .to_string();
        assert!(e.contains("desired/dnsmasq.json"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
