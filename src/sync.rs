//! The sync: claim queued requests, reconcile sidecars, acknowledge, and
//! repeat until nothing is pending.
//!
//! Order of a pass, per kind: claim (under the queue lock, into the
//! host-private journal) → one `podman ps` for all kinds → plan → run the
//! jobs with bounded parallelism → write acknowledgements → clear the journal.
//! The journal is cleared only after every request in it was acknowledged,
//! and planning compares with what podman reports, so a sync killed at any
//! point and run again converges with nothing lost and no duplicate
//! container. The queue lock is never held across a podman call.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::ack::{Ack, MAX_MESSAGE_BYTES, Outcome, bounded};
use crate::claim::{ClaimError, Journal, Limits, Reject, RejectLog, SharedDir};
use crate::config::{ConfigError, HostConfig, Profile};
use crate::desired::{self, DesiredTable, JobOutcome, Observed, RestartPlan};
use crate::kind::Kind;
use crate::plan::{Job, JobKind, Namespaces, Plan, Planner, Step};
use crate::record::{Record, VERSION, now_ms};
use crate::runtime::{Call, ContainerInfo, RunSpec, Runtime, RuntimeError, State, labels};
use crate::state::{KindStatus, StateDir, StateError};

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Limit the pass to these kinds (empty: every enabled kind).
    pub kinds: Vec<Kind>,
    /// Print what would be done; change nothing, not even the queue.
    pub dry_run: bool,
    /// Always list containers and remove sidecars whose namespace is gone,
    /// even with nothing queued (the backstop timer's run).
    pub full: bool,
    /// Wait before retrying a kind whose previous sync failed (used by the
    /// units, so a level-triggered restart loop cannot spin).
    pub backoff: bool,
}

/// Totals of one sync, printed as its last line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub claimed: usize,
    pub started: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub signalled: usize,
    pub removed: usize,
    pub failed: usize,
    pub rejected: usize,
    /// Desired sidecars whose process died, started again.
    pub restarts: usize,
    /// Kinds whose sync could not run, with the reason.
    pub errors: Vec<(Kind, String)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sync: claimed {}, started {}, replaced {}, unchanged {}, signalled {}, removed {}, failed {}, rejected {}, restarts {}",
            self.claimed,
            self.started,
            self.replaced,
            self.unchanged,
            self.signalled,
            self.removed,
            self.failed,
            self.rejected,
            self.restarts
        )?;
        if !self.errors.is_empty() {
            write!(f, "; could not sync {} kind(s)", self.errors.len())?;
        }
        Ok(())
    }
}

/// The sync could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot list containers: {0}")]
    List(#[source] RuntimeError),
    #[error("no kind is configured in {0}; add a profile under \"kinds\"")]
    NothingConfigured(std::path::PathBuf),
}

/// Test-only crash points: `SIDESPAWN_FAULT=<point>` kills the sync with
/// SIGKILL there, to prove that a rerun converges.
fn fault_point(point: &str) {
    if std::env::var("SIDESPAWN_FAULT").is_ok_and(|v| v == point) {
        warn!("fault injection: killing the sync at {point}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Longest wait for another sync of the same kind to finish.
const SYNC_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Back-off after `failures` failed runs in a row: 1 s doubling to 60 s.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(Duration::from_secs(60))
}

struct KindCtx<'a> {
    kind: Kind,
    profile: &'a Profile,
    shared: SharedDir,
    journal: Journal,
    rejects: RejectLog,
    /// Whether the journal (or, in a dry run, the queue) holds a request.
    has_requests: bool,
    /// A dry run's requests read from the queue, planned after the
    /// journal's (a real run claims them into the journal instead).
    peeked: Vec<Record>,
    claimed: usize,
    /// Lines the claim refused (already in the reject log).
    claim_rejected: usize,
}

/// Runs the sync as configured. Returns the summary; per-request failures are
/// in it and in the acknowledgements, not in the error.
pub fn run(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    opts: &SyncOptions,
) -> Result<Summary, SyncError> {
    let kinds: Vec<Kind> = if opts.kinds.is_empty() {
        cfg.enabled_kinds()
    } else {
        opts.kinds.clone()
    };
    if kinds.is_empty() {
        return Err(SyncError::NothingConfigured(cfg.path.clone()));
    }
    // Rolled-back kinds start the image they were rolled back to. This is the
    // first read of the host state, and it checks the state directory first.
    let effective = crate::upgrade::effective_config(cfg)?;
    let cfg = &effective;
    if !opts.dry_run {
        StateDir::new(&cfg.state_dir).claim_owner(&cfg.queue_root, true)?;
    }
    // A named kind without a usable profile is a configuration error.
    for &k in &kinds {
        cfg.profile(k)?;
    }
    let state = StateDir::new(&cfg.state_dir);
    let limits = Limits {
        max_queue_bytes: cfg.max_queue_bytes,
        lock_timeout: cfg.lock_timeout,
        ..Limits::default()
    };
    let mut summary = Summary::default();
    let mut failed_kinds: Vec<Kind> = Vec::new();
    // Desired entries whose files were unreadable and could not be rebuilt.
    let mut lost_entries: Vec<(Kind, Vec<String>)> = Vec::new();

    // One sync per kind at a time: the backstop's full sync and a path
    // unit's sync of one kind may start together, and two syncs replaying
    // the same journal would race for the same container names. Taken in
    // kind order, so two syncs of several kinds cannot deadlock.
    let mut sorted = kinds.clone();
    sorted.sort();
    sorted.dedup();
    let _sync_locks = if opts.dry_run {
        Vec::new()
    } else {
        sorted
            .iter()
            .map(|&k| state.sync_lock(k, SYNC_LOCK_TIMEOUT))
            .collect::<Result<Vec<_>, _>>()?
    };

    if !opts.dry_run {
        state.clean_stale_tmp();
    }
    if opts.backoff && !opts.dry_run {
        // From the failure mark, which a full state directory cannot stop
        // (the JSON status may be stale then). A last sync "after now" (the
        // clock went back) counts as now: the wait is the delay at most.
        let worst = kinds
            .iter()
            .filter_map(|&k| Some((k, state.failures(k)?)))
            .map(|(k, (n, at))| (backoff_delay(n), k, n, at))
            .max_by_key(|(d, ..)| *d);
        if let Some((delay, kind, failures, at)) = worst {
            let since = Duration::from_millis(now_ms().saturating_sub(at));
            if let Some(wait) = delay.checked_sub(since).filter(|w| !w.is_zero()) {
                let why = state
                    .status(kind)
                    .ok()
                    .flatten()
                    .filter(|st| st.last_sync_ms == at)
                    .and_then(|st| st.error)
                    .unwrap_or_else(|| {
                        "its status could not be written; see `sidespawn status`".to_owned()
                    });
                warn!(
                    "previous sync failed {failures} time(s) in a row ({kind}: {why}); retrying in {wait:?}"
                );
                std::thread::sleep(wait);
            }
        }
    }

    // The last container list while nothing has been started or removed
    // since it was taken.
    let mut unchanged_list: Option<Vec<ContainerInfo>> = None;
    for pass in 1..=cfg.max_passes {
        let mut ctxs: Vec<KindCtx> = Vec::new();
        for &kind in &kinds {
            if failed_kinds.contains(&kind) {
                continue;
            }
            match prepare_kind(cfg, kind, &limits, opts) {
                Ok(ctx) => ctxs.push(ctx),
                Err(msg) => kind_failed(
                    &state,
                    kind,
                    msg,
                    &Summary::default(),
                    &mut summary,
                    &mut failed_kinds,
                ),
            }
        }
        fault_point("after-claim");

        let busy = ctxs.iter().any(|c| c.has_requests);
        let actual: Vec<ContainerInfo> = if busy || (opts.full && pass == 1) {
            match runtime.list(&cfg.instance) {
                Ok(a) => {
                    unchanged_list = Some(a.clone());
                    a
                }
                Err(e) => {
                    for c in &ctxs {
                        let claimed = Summary {
                            claimed: c.claimed,
                            rejected: c.claim_rejected,
                            ..Summary::default()
                        };
                        record_status(&state, c.kind, Err(&e.to_string()), &claimed);
                    }
                    return Err(SyncError::List(e));
                }
            }
        } else {
            Vec::new()
        };

        for ctx in &mut ctxs {
            let mut kind_sum = Summary {
                claimed: ctx.claimed,
                rejected: ctx.claim_rejected,
                ..Summary::default()
            };
            if !(ctx.has_requests || (opts.full && pass == 1)) {
                record_status(&state, ctx.kind, Ok(()), &kind_sum);
                summary.add(&kind_sum);
                continue;
            }
            // A broken state file stops this kind only, and shows in its status.
            let mut generation = match next_generation(&state, ctx.profile, &actual) {
                Ok(g) => g,
                Err(e) => {
                    let msg = e.to_string();
                    kind_failed(
                        &state,
                        ctx.kind,
                        msg,
                        &kind_sum,
                        &mut summary,
                        &mut failed_kinds,
                    );
                    continue;
                }
            };
            let collect_orphans = opts.full || ctx.has_requests;
            let mut plan =
                match plan_kind(ctx, &actual, namespaces, &mut generation, collect_orphans) {
                    Ok(p) => p,
                    Err(e) => {
                        let msg = e.to_string();
                        kind_failed(
                            &state,
                            ctx.kind,
                            msg,
                            &kind_sum,
                            &mut summary,
                            &mut failed_kinds,
                        );
                        continue;
                    }
                };
            // Containers were listed for this pass: the moment to notice
            // desired sidecars whose process died. Without their argv, read
            // below only for those that may be started again.
            let change = !opts.dry_run;
            let mut desired = match DesiredTable::open(&state, ctx.kind, change) {
                Ok((mut t, unreadable)) => {
                    let lost = desired::recover(&mut t, &unreadable, ctx.profile, &actual, runtime);
                    if !lost.is_empty() {
                        lost_entries.push((ctx.kind, lost));
                    }
                    t
                }
                Err(e) => {
                    let msg = e.to_string();
                    kind_failed(
                        &state,
                        ctx.kind,
                        msg,
                        &kind_sum,
                        &mut summary,
                        &mut failed_kinds,
                    );
                    continue;
                }
            };
            let busy: HashSet<String> = plan.jobs.iter().map(|j| j.key.clone()).collect();
            let unhealthy = if opts.full && pass == 1 && !opts.dry_run {
                check_health(cfg, ctx.profile, runtime, &desired, &actual)
            } else {
                HashSet::new()
            };
            let seen = Observed {
                actual: &actual,
                busy: &busy,
                unhealthy: &unhealthy,
            };
            let need = desired::argv_needed(&desired, ctx.kind, &seen);
            match desired.load_argv(&state, ctx.kind, &need, change) {
                Ok(unreadable) if unreadable.is_empty() => {}
                Ok(unreadable) => {
                    let lost =
                        desired::recover(&mut desired, &unreadable, ctx.profile, &actual, runtime);
                    if !lost.is_empty() {
                        lost_entries.push((ctx.kind, lost));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    kind_failed(
                        &state,
                        ctx.kind,
                        msg,
                        &kind_sum,
                        &mut summary,
                        &mut failed_kinds,
                    );
                    continue;
                }
            }
            let now = now_ms();
            // Stored by the end of this sync, so the clamp sticks.
            desired::clamp_future(&mut desired, now);
            let restarts = desired::plan_restarts(
                ctx.profile,
                &desired,
                &seen,
                namespaces,
                &mut generation,
                now,
            );
            log_restart_decisions(ctx.kind, &restarts);
            plan.jobs.extend(restarts.jobs.iter().cloned());
            crate::limit::apply(cfg, ctx.profile, &mut plan, &desired, &actual);
            if opts.dry_run {
                print_dry_run(ctx.kind, &plan, runtime);
                continue;
            }
            if let Err(e) = state.store_generation(ctx.kind, generation) {
                let msg = e.to_string();
                kind_failed(
                    &state,
                    ctx.kind,
                    msg,
                    &kind_sum,
                    &mut summary,
                    &mut failed_kinds,
                );
                continue;
            }
            // Stops leave the table before they run: a sync killed after a
            // stop but before the table is written would otherwise restart
            // a sidecar the agent stopped (the replayed stop request finds
            // no container, so it cannot name the sidecar any more).
            if desired::apply_intents(&mut desired, &plan)
                && let Err(e) = desired.store(&state, ctx.kind)
            {
                let msg = e.to_string();
                kind_failed(
                    &state,
                    ctx.kind,
                    msg,
                    &kind_sum,
                    &mut summary,
                    &mut failed_kinds,
                );
                continue;
            }
            fault_point("after-plan");
            if !plan.jobs.is_empty() {
                unchanged_list = None;
            }
            let outcomes = execute_kind(cfg, ctx, &plan, runtime, namespaces, &mut kind_sum);
            desired::apply_restart_decisions(&mut desired, ctx.kind, &restarts);
            desired::apply(&mut desired, &plan, &outcomes, &actual, now);
            // Written before the journal is cleared: a rerun replays the
            // requests and rebuilds what this write would have said.
            if let Err(e) = desired.store(&state, ctx.kind) {
                let msg = e.to_string();
                error!(kind = %ctx.kind, "cannot record the desired sidecars: {msg}");
                record_status(&state, ctx.kind, Err(&msg), &kind_sum);
                summary.add(&kind_sum);
                summary.errors.push((ctx.kind, msg));
                continue;
            }
            fault_point("after-acks");
            if let Err(e) = ctx.journal.clear() {
                // The requests were acknowledged; a rerun replays them as
                // no-ops. Say so, but the sync itself ran.
                error!(kind = %ctx.kind, "cannot clear the journal: {e}");
            }
            if let Err(e) = ctx.shared.prune_acks(cfg.ack_max_age) {
                warn!(kind = %ctx.kind, "cannot prune old acknowledgements: {e}");
            }
            match lost_entries
                .iter()
                .position(|(k, _)| *k == ctx.kind)
                .map(|i| lost_entries.swap_remove(i))
            {
                // Said once, in the status of the pass that found them.
                Some((_, lost)) => {
                    let msg = format!(
                        "desired sidecars lost with unreadable state files (moved aside to {}): {}; the agent's next start request for each restores it",
                        desired::corrupt_dir(&state).display(),
                        lost.join("; ")
                    );
                    error!(kind = %ctx.kind, "{msg}");
                    record_status(&state, ctx.kind, Err(&msg), &kind_sum);
                }
                None => record_status(&state, ctx.kind, Ok(()), &kind_sum),
            }
            summary.add(&kind_sum);
        }
        if opts.dry_run {
            break;
        }
        let pending: Vec<Kind> = ctxs
            .iter()
            .filter(|c| !failed_kinds.contains(&c.kind) && c.shared.is_pending())
            .map(|c| c.kind)
            .collect();
        if pending.is_empty() {
            break;
        }
        debug!("pass {pass} done; still pending: {pending:?}");
        if pass == cfg.max_passes {
            warn!(
                "stopping after {pass} passes with requests still pending for {pending:?}; the next trigger continues"
            );
        }
    }
    // The backstop's run also collects garbage: leftovers no agent wants.
    if opts.full && !opts.dry_run {
        let live: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| !failed_kinds.contains(k))
            .collect();
        // A list taken by this run and still true saves the collection
        // its own `podman ps`: a steady-state backstop makes one call.
        match crate::gc::run(cfg, runtime, namespaces, &live, false, unchanged_list) {
            Ok(r) => summary.removed += r.removed.len(),
            Err(e) => warn!("garbage collection skipped: {e}"),
        }
    }
    Ok(summary)
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.claimed += o.claimed;
        self.started += o.started;
        self.replaced += o.replaced;
        self.unchanged += o.unchanged;
        self.signalled += o.signalled;
        self.removed += o.removed;
        self.failed += o.failed;
        self.rejected += o.rejected;
        self.restarts += o.restarts;
    }
}

/// Gives up on `kind` for this run: logs why, records it in the kind's status (so `status`
/// and the back-off see it), counts what its claim did, and leaves it out of later passes.
fn kind_failed(
    state: &StateDir,
    kind: Kind,
    msg: String,
    counts: &Summary,
    summary: &mut Summary,
    failed_kinds: &mut Vec<Kind>,
) {
    error!(kind = %kind, "cannot sync {kind}: {msg}");
    record_status(state, kind, Err(&msg), counts);
    summary.add(counts);
    summary.errors.push((kind, msg));
    failed_kinds.push(kind);
}

/// The generation to hand out next for `kind`: the stored counter; without one (the first
/// sync, or its file lost or moved aside), the next after the highest generation podman
/// reports for the kind, so that `sync --full` (which lists the containers) carries on from
/// the sidecars' labels instead of going back to 1. A stored counter is never second-guessed.
fn next_generation(
    state: &StateDir,
    profile: &Profile,
    actual: &[ContainerInfo],
) -> Result<u64, StateError> {
    let kind = profile.kind;
    if let Some(stored) = state.stored_generation(kind)? {
        return Ok(stored);
    }
    // Only this configuration's sidecars (its profile labels), like gc and
    // status: another configuration's counter is not ours to follow.
    let seen = actual
        .iter()
        .filter(|c| c.labels.get(labels::KIND).map(String::as_str) == Some(kind.as_str()))
        .filter(|c| {
            profile
                .labels
                .iter()
                .all(|(k, v)| c.labels.get(k) == Some(v))
        })
        .filter_map(|c| c.labels.get(labels::GENERATION)?.parse::<u64>().ok())
        .max();
    Ok(seen.map_or(1, |g| g.saturating_add(1)))
}

fn record_status(state: &StateDir, kind: Kind, result: Result<(), &str>, s: &Summary) {
    let prev = state.status(kind).ok().flatten().unwrap_or_default();
    let prev_failures = state.failures(kind).map_or(0, |(n, _)| n);
    let st = KindStatus {
        last_sync_ms: now_ms(),
        ok: result.is_ok(),
        error: result
            .err()
            .map(|e| bounded(e, MAX_MESSAGE_BYTES).into_owned()),
        consecutive_failures: if result.is_ok() {
            0
        } else {
            prev_failures.saturating_add(1)
        },
        claimed: s.claimed,
        failed: s.failed,
        rejected: s.rejected,
        total_claimed: prev.total_claimed + s.claimed as u64,
        total_rejected: prev.total_rejected + s.rejected as u64,
        previous_sync_ms: prev.last_sync_ms,
    };
    // First, and needing no free block: the back-off works on a full disk.
    if let Err(e) = state.mark_failures(kind, st.consecutive_failures, st.last_sync_ms) {
        warn!("cannot record the failures of {kind}: {e}");
    }
    if let Err(e) = state.store_status(kind, &st) {
        warn!("cannot record the sync status of {kind}: {e}");
    }
}

/// Claims (or, in a dry run, only reads) one kind's queue. The journal is
/// only looked at here; [`plan_kind`] streams it.
fn prepare_kind<'a>(
    cfg: &'a HostConfig,
    kind: Kind,
    limits: &Limits,
    opts: &SyncOptions,
) -> Result<KindCtx<'a>, String> {
    let profile = cfg.profile(kind).map_err(|e| e.to_string())?;
    let shared = SharedDir::open(&cfg.queue_root, kind, !opts.dry_run, limits.clone())
        .map_err(|e| e.to_string())?;
    let journal = Journal::open(&cfg.state_dir, kind).map_err(|e| e.to_string())?;
    let rejects = RejectLog::open(&cfg.state_dir, kind).map_err(|e| e.to_string())?;
    let mut claimed = 0;
    let mut claim_rejected = 0;
    let mut peeked = Vec::new();
    let mut has_requests = journal.has_records().map_err(|e| e.to_string())?;
    if opts.dry_run {
        let (queued, bad) = shared.peek().map_err(|e| e.to_string())?;
        for r in &bad {
            println!(
                "# would reject line {} of the {kind} queue: {}",
                r.line, r.reason
            );
        }
        has_requests |= !queued.is_empty();
        peeked = queued;
    } else {
        let report = shared
            .claim(&journal, &rejects)
            .map_err(|e| e.to_string())?;
        debug!(kind = %kind, "claimed {} request(s), lock held {:?}", report.claimed, report.lock_held);
        claimed = report.claimed;
        claim_rejected = report.rejected.len();
        // The claim already logged them and kept them in the reject log.
        for r in &report.rejected {
            if let Some(id) = &r.id {
                write_ack(&shared, id, Outcome::Rejected, &r.reason, None);
            }
        }
        has_requests |= report.claimed > 0;
    }
    Ok(KindCtx {
        kind,
        profile,
        shared,
        journal,
        rejects,
        has_requests,
        peeked,
        claimed,
        claim_rejected,
    })
}

/// Plans a kind's batch, streaming the journal (then a dry run's queued
/// requests) through the planner, so no request is held once folded.
fn plan_kind(
    ctx: &mut KindCtx,
    actual: &[ContainerInfo],
    namespaces: &dyn Namespaces,
    next_generation: &mut u64,
    collect_orphans: bool,
) -> Result<Plan, ClaimError> {
    let mut planner = Planner::new(ctx.profile, actual);
    ctx.journal.for_each_record(|r| planner.push(r))?;
    for r in std::mem::take(&mut ctx.peeked) {
        planner.push(r);
    }
    Ok(planner.finish(namespaces, next_generation, collect_orphans))
}

fn write_ack(
    shared: &SharedDir,
    id: &str,
    result: Outcome,
    message: &str,
    container: Option<&str>,
) {
    let ack = Ack {
        v: VERSION,
        id: id.to_owned(),
        result,
        message: message.to_owned(),
        container: container.map(str::to_owned),
        ts: now_ms(),
    };
    if let Err(e) = shared.write_ack(&ack) {
        error!("cannot acknowledge request {id}: {e}");
    }
}

fn print_dry_run(kind: Kind, plan: &Plan, runtime: &dyn Runtime) {
    if plan.jobs.is_empty() {
        println!("# {kind}: nothing to do");
    }
    for a in &plan.answers {
        println!(
            "# {kind}: request {} -> {:?}: {}",
            a.id, a.result, a.message
        );
    }
    for job in &plan.jobs {
        println!("# {kind}: {:?} {}", job.what, job.container);
        for step in &job.steps {
            println!("{}", runtime.describe(&step_call(step)));
        }
    }
}

fn step_call(step: &Step) -> Call {
    match step {
        Step::Remove { name } => Call::Remove(name.clone()),
        Step::Signal { name, signal } => Call::Kill(name.clone(), *signal),
        Step::Stop { name, signal } => match signal {
            crate::record::Signal::Kill => Call::Kill(name.clone(), *signal),
            _ => Call::Stop(name.clone(), Duration::from_secs(10)),
        },
        Step::Run { spec, .. } => Call::Run(spec.clone()),
    }
}

/// A finished job: its index in the plan, outcome and duration.
type JobResult = (usize, Result<Done, JobFailure>, Duration);

/// How a job that succeeded ended.
enum Done {
    /// As planned: the planned messages are true.
    AsPlanned,
    /// Its start found the sidecar already running as requested (an
    /// interrupted sync had started it) and took it over: the start
    /// request's answer says so instead.
    Adopted(String),
}

/// Why a job did not complete.
struct JobFailure {
    outcome: Outcome,
    message: String,
}

fn run_job(
    job: &Job,
    profile: &Profile,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
) -> Result<Done, JobFailure> {
    let failed = |e: RuntimeError| JobFailure {
        outcome: Outcome::Failed,
        message: e.to_string(),
    };
    let mut done = Done::AsPlanned;
    for step in &job.steps {
        match step {
            Step::Remove { name } => runtime.remove(name).map_err(failed)?,
            Step::Signal { name, signal } => match runtime.kill(name, *signal) {
                Err(RuntimeError::NoSuchContainer(_) | RuntimeError::NotRunning(_)) => {
                    return Err(JobFailure {
                        outcome: Outcome::Failed,
                        message: format!("No such process: sidecar {name} is not running"),
                    });
                }
                r => r.map_err(failed)?,
            },
            Step::Stop { name, signal } => {
                let r = match signal {
                    crate::record::Signal::Kill => runtime.kill(name, *signal),
                    _ => runtime.stop(name, profile.stop_timeout),
                };
                match r {
                    // Already gone or stopped is what a stop wants.
                    Err(RuntimeError::NoSuchContainer(_) | RuntimeError::NotRunning(_)) => {}
                    r => r.map_err(failed)?,
                }
            }
            Step::Run { spec, netns } => {
                if let Some(ns) = netns
                    && let Err(e) = namespaces.verify(ns)
                {
                    return Err(JobFailure {
                        outcome: Outcome::Rejected,
                        message: e.to_string(),
                    });
                }
                match runtime.run(spec) {
                    Ok(_) => {}
                    Err(RuntimeError::NameInUse(_)) => done = take_over_name(spec, runtime)?,
                    Err(e) => return Err(failed(e)),
                }
            }
        }
    }
    Ok(done)
}

/// Labels that differ between two starts of the same sidecar with the same
/// arguments.
const PER_START_LABELS: [&str; 2] = [labels::REQUEST_ID, labels::GENERATION];

/// `podman run` of `spec` found its name taken. The list this sync planned
/// from did not show that container, so something created it since: most
/// often the `podman run` of a sync killed (timeout, SIGKILL) while it was
/// in flight, which the units' `KillMode=process` leaves running. If it is
/// this very sidecar (every label but the request id and generation equal:
/// same configuration, key, namespace inode and argv hash) and runs, it is
/// adopted; if it is an older or broken start of this configuration's
/// sidecar, it is replaced. A container of that name that is not this
/// configuration's sidecar of this kind is left alone and the start fails
/// saying so.
fn take_over_name(spec: &RunSpec, runtime: &dyn Runtime) -> Result<Done, JobFailure> {
    let failed = |e: RuntimeError| JobFailure {
        outcome: Outcome::Failed,
        message: e.to_string(),
    };
    let name = &spec.name;
    let c = match runtime.inspect_container(name) {
        Ok(c) => c,
        // Removed since: the name is free again.
        Err(RuntimeError::NoSuchContainer(_)) => {
            runtime.run(spec).map_err(failed)?;
            return Ok(Done::AsPlanned);
        }
        Err(e) => return Err(failed(e)),
    };
    let has = |k: &str, v: &str| c.labels.get(k).map(String::as_str) == Some(v);
    let identity = spec.labels.iter().filter(|(k, _)| {
        !k.starts_with("io.sidespawn.")
            || [
                labels::MANAGED_BY,
                labels::INSTANCE,
                labels::KIND,
                labels::KEY,
            ]
            .contains(&k.as_str())
    });
    if !identity.clone().all(|(k, v)| has(k, v)) {
        return Err(JobFailure {
            outcome: Outcome::Failed,
            message: format!(
                "the container name {name} is already in use by container {}, which is not this configuration's sidecar for {} (its labels differ); remove or rename it (`podman rm -f {name}`) and ask again",
                short_id(&c.id),
                spec.labels.get(labels::KEY).map_or("?", String::as_str),
            ),
        });
    }
    let same = spec
        .labels
        .iter()
        .filter(|(k, _)| !PER_START_LABELS.contains(&k.as_str()))
        .all(|(k, v)| has(k, v));
    if same && c.state == State::Running {
        info!(container = %name, id = %short_id(&c.id), "adopting the sidecar an interrupted sync started with these arguments");
        return Ok(Done::Adopted(format!(
            "{name} already runs with these arguments (container {}, generation {}, started by an interrupted sync)",
            short_id(&c.id),
            c.labels.get(labels::GENERATION).map_or("?", String::as_str)
        )));
    }
    warn!(container = %name, id = %short_id(&c.id), state = ?c.state, "replacing a container of this sidecar that an interrupted sync left behind");
    runtime.remove(name).map_err(failed)?;
    runtime.run(spec).map_err(failed)?;
    Ok(Done::AsPlanned)
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Runs the kind's health check in its running desired sidecars; returns
/// the names of those that failed it (they count as dead).
fn check_health(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    desired: &DesiredTable,
    actual: &[ContainerInfo],
) -> HashSet<String> {
    let names: Vec<String> = desired
        .sidecars
        .values()
        .filter(|d| {
            actual
                .iter()
                .any(|c| c.name == d.container && c.state == crate::runtime::State::Running)
        })
        .map(|d| d.container.clone())
        .collect();
    let failed = crate::health::failures(profile, runtime, &names, cfg.parallelism);
    for (name, why) in &failed {
        warn!(kind = %profile.kind, container = %name, "{why}; restarting it as dead");
    }
    failed.into_keys().collect()
}

/// Logs why dead sidecars are left dead or forgotten.
fn log_restart_decisions(kind: Kind, rp: &RestartPlan) {
    for (key, why) in &rp.forget {
        info!(kind = %kind, key = %key, "forgetting the desired sidecar: {why}");
    }
    for (key, why) in &rp.blocked {
        match why {
            desired::Blocked::Backoff { .. } => {
                info!(kind = %kind, key = %key, "{}", why.message(kind));
            }
            _ => error!(kind = %kind, key = %key, "{}", why.message(kind)),
        }
    }
}

/// Runs the plan's jobs; returns how each ended, by index.
fn execute_kind(
    cfg: &HostConfig,
    ctx: &KindCtx,
    plan: &Plan,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    sum: &mut Summary,
) -> Vec<JobOutcome> {
    let kind = ctx.kind;
    let mut plan_rejects = Vec::new();
    for a in &plan.answers {
        match a.result {
            Outcome::Rejected => {
                warn!(kind = %kind, id = %a.id, "rejected: {}", a.message);
                plan_rejects.push(Reject {
                    line: 0,
                    id: Some(a.id.clone()),
                    reason: a.message.clone(),
                    excerpt: String::new(),
                });
                sum.rejected += 1;
            }
            Outcome::Failed => {
                info!(kind = %kind, id = %a.id, "{}", a.message);
                sum.failed += 1;
            }
            Outcome::Ok => {}
        }
        write_ack(
            &ctx.shared,
            &a.id,
            a.result,
            &a.message,
            a.container.as_deref(),
        );
    }
    sum.unchanged += plan.unchanged;

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<JobResult>> = Mutex::new(Vec::new());
    let workers = cfg.parallelism.min(plan.jobs.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = plan.jobs.get(i) else { break };
                    let t = Instant::now();
                    // Bounded once here: the message goes into the acks,
                    // the reject log and the desired table's last_error.
                    let r =
                        run_job(job, ctx.profile, runtime, namespaces).map_err(|f| JobFailure {
                            message: bounded(&f.message, MAX_MESSAGE_BYTES).into_owned(),
                            ..f
                        });
                    let elapsed = t.elapsed();
                    // Answer as soon as a job ends: a kill script is waiting.
                    answer_job(&ctx.shared, job, &r);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r, elapsed));
                    if i == 0 {
                        fault_point("mid-run");
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut outcomes = vec![JobOutcome::Ok; plan.jobs.len()];
    for (i, r, elapsed) in results {
        let job = &plan.jobs[i];
        match r {
            Ok(_) => {
                info!(kind = %kind, container = %job.container, "{:?} done in {elapsed:?}", job.what);
                match job.what {
                    JobKind::Start => sum.started += 1,
                    JobKind::Replace => sum.replaced += 1,
                    JobKind::Signal => sum.signalled += 1,
                    JobKind::Stop | JobKind::Orphan => sum.removed += 1,
                    JobKind::Restart => sum.restarts += 1,
                }
            }
            Err(f) => {
                outcomes[i] = if f.outcome == Outcome::Rejected {
                    JobOutcome::Rejected(f.message.clone())
                } else {
                    JobOutcome::Failed(f.message.clone())
                };
                if f.outcome == Outcome::Rejected {
                    warn!(kind = %kind, container = %job.container, "rejected: {}", f.message);
                    sum.rejected += job.answers.len().max(1);
                    plan_rejects.extend(job.answers.iter().map(|(id, _)| Reject {
                        line: 0,
                        id: Some(id.clone()),
                        reason: f.message.clone(),
                        excerpt: String::new(),
                    }));
                } else {
                    error!(kind = %kind, container = %job.container, "{:?} failed: {}", job.what, f.message);
                    sum.failed += job.answers.len().max(1);
                }
            }
        }
    }
    if !plan_rejects.is_empty()
        && let Err(e) = ctx.rejects.append(&plan_rejects)
    {
        error!(kind = %kind, "cannot write the reject log: {e}");
    }
    outcomes
}

fn answer_job(shared: &SharedDir, job: &Job, r: &Result<Done, JobFailure>) {
    let start_id = job.request.as_ref().map(|r| r.id.as_str());
    for (id, message) in &job.answers {
        match r {
            Ok(Done::Adopted(adopted)) if Some(id.as_str()) == start_id => {
                write_ack(shared, id, Outcome::Ok, adopted, Some(&job.container));
            }
            Ok(_) => write_ack(shared, id, Outcome::Ok, message, Some(&job.container)),
            Err(f) => write_ack(shared, id, f.outcome, &f.message, Some(&job.container)),
        }
    }
}

/// Reads this configuration's containers once, for `status`.
pub fn containers(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
) -> Result<Vec<ContainerInfo>, RuntimeError> {
    runtime.list(&cfg.instance)
}
