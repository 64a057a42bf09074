//! The sync: claim queued requests, reconcile sidecars, acknowledge, and
//! repeat until nothing is pending.
//!
//! A pass reads top to bottom, per kind: **claim** (under the queue lock,
//! into the host-private journal; `claim_kind`) → one `podman ps` for all
//! kinds (or, for a batch of starts of keys the host state does not know,
//! the view that state predicts: [`crate::host::predict`]) → **fold** the journal into per-sidecar decisions (`fold`) and
//! **plan** the complete set of jobs, restarts of dead sidecars and limits
//! included (`Syncer::plan_kind`) → record the intents (stops leave the
//! desired table before they run; `record_intents`) → **execute** the
//! jobs with bounded parallelism, each **acknowledged** as soon as it ends
//! (`execute`) → **persist** the outcomes in the desired table and clear
//! the journal (`persist`). Every step maps a planned [`Step`] to an
//! engine call through [`Step::call`], and so does the dry run, so the two
//! cannot diverge. A kind that fails takes the one `Syncer::kind_failed`
//! path with a [`KindError`] that names what failed; the other kinds go on.
//!
//! Invariants: the journal is cleared only after every request in it was
//! acknowledged, and planning compares with what podman reports (or with
//! a prediction only where a wrong one ends in the same plan), so a sync
//! killed at any point and run again converges with nothing lost and no
//! duplicate container. The queue lock is never held across a podman call.
//! The backstop's garbage collection is the lower-level [`crate::host::gc::collect`]
//! (the sync already holds the locks); `gc::run` is the command above it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::host::claim::{ClaimError, Journal, Limits, Reject, RejectLog, SharedDir};
use crate::host::config::{ConfigError, HostConfig, Profile};
use crate::host::desired::{self, DesiredTable, JobOutcome, Observed, RestartPlan};
use crate::host::namespaces::Namespaces;
use crate::host::plan::{Job, JobKind, Plan, Planner, Step};
use crate::host::runtime::{
    ContainerInfo, RunSpec, Runtime, RuntimeError, SidecarLabels, State, labels,
};
use crate::host::state::{KindStatus, SYNC_LOCK_TIMEOUT, StateDir, StateError};
use crate::shared::ack::{Ack, MAX_MESSAGE_BYTES, Outcome, bounded};
use crate::shared::kind::Kind;
use crate::shared::record::{Action, Record, VERSION, now_ms};

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
    /// List containers and run the kinds' health checks even with nothing
    /// queued, restarting unhealthy sidecars under the restart policy
    /// (`watch`'s health rounds). Implied by `full`.
    pub health: bool,
    /// List containers and start desired sidecars that died again (under
    /// the restart policy), even with nothing queued: the engine reported
    /// a death. Lighter than `full`: no health checks, no garbage
    /// collection.
    pub restart: bool,
}

/// Totals of one sync, printed as its last line.
#[derive(Debug, Default)]
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
    /// Kinds whose sync could not run, with why.
    pub errors: Vec<(Kind, KindError)>,
    /// A dry run's report, one line each, in order: comments (`# ...`) and
    /// the exact command lines a real run would execute.
    pub dry_run: Vec<String>,
    /// A dry run's summary: the counts are what a real run would do if
    /// every planned command succeeded, and the line says so.
    pub would: bool,
    /// The earliest time (unix ms) a dead sidecar held back by the restart
    /// policy's back-off may be started again: when a follower of the
    /// engine's events runs the next restart pass.
    pub next_restart_ms: Option<u64>,
}

/// Summaries are equal when their counts, dry-run lines and failed kinds
/// (with their messages) are: errors are compared by what they say.
impl PartialEq for Summary {
    fn eq(&self, o: &Summary) -> bool {
        let errors = |s: &Summary| {
            s.errors
                .iter()
                .map(|(k, e)| (*k, e.to_string()))
                .collect::<Vec<_>>()
        };
        self.counts() == o.counts() && self.dry_run == o.dry_run && errors(self) == errors(o)
    }
}

impl Eq for Summary {}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.would {
            // A new user reading "started 0" after a dry run would think
            // nothing is due; the line says what the real run would do.
            write!(f, "sync --dry-run, nothing changed:")?;
            for (i, (name, n)) in Summary::WOULD.iter().zip(self.counts()).enumerate() {
                write!(f, "{} would {name} {n}", if i == 0 { "" } else { "," })?;
            }
        } else {
            write!(f, "sync:")?;
            for (i, (name, n)) in Summary::COUNTS.iter().zip(self.counts()).enumerate() {
                write!(f, "{} {name} {n}", if i == 0 { "" } else { "," })?;
            }
        }
        if !self.errors.is_empty() {
            write!(f, "; could not sync {} kind(s)", self.errors.len())?;
        }
        Ok(())
    }
}

impl Summary {
    /// The counts' names, in the order of [`Summary::counts`] and of the
    /// summary line.
    const COUNTS: [&str; 9] = [
        "claimed",
        "started",
        "replaced",
        "unchanged",
        "signalled",
        "removed",
        "failed",
        "rejected",
        "restarts",
    ];

    /// [`Summary::COUNTS`] as a dry run says them: what would happen.
    const WOULD: [&str; 9] = [
        "claim",
        "start",
        "replace",
        "leave unchanged",
        "signal",
        "remove",
        "fail",
        "reject",
        "restart",
    ];

    /// Only what a kind's claim did, before anything was planned.
    fn claimed(claimed: usize, rejected: usize) -> Summary {
        Summary {
            claimed,
            rejected,
            ..Summary::default()
        }
    }

    fn counts(&self) -> [usize; 9] {
        let Summary {
            claimed,
            started,
            replaced,
            unchanged,
            signalled,
            removed,
            failed,
            rejected,
            restarts,
            errors: _,
            dry_run: _,
            would: _,
            next_restart_ms: _,
        } = *self;
        [
            claimed, started, replaced, unchanged, signalled, removed, failed, rejected, restarts,
        ]
    }

    fn add(&mut self, o: &Summary) {
        let Summary {
            claimed,
            started,
            replaced,
            unchanged,
            signalled,
            removed,
            failed,
            rejected,
            restarts,
            errors: _,
            dry_run: _,
            would: _,
            next_restart_ms,
        } = self;
        *next_restart_ms = match (*next_restart_ms, o.next_restart_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mine = [
            claimed, started, replaced, unchanged, signalled, removed, failed, rejected, restarts,
        ];
        for (n, more) in mine.into_iter().zip(o.counts()) {
            *n += more;
        }
    }
}

/// Why one kind could not be synced. The kind's status records it, the
/// summary carries it to `main`, and the other kinds go on.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// The kind has no usable profile (its message names the file and fix).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The queue, journal or reject log could not be opened, claimed or
    /// read (its message names the path and what is wrong with it).
    #[error("cannot claim its requests: {0}")]
    Claim(#[from] ClaimError),
    /// The generation counter under the state directory could not be read
    /// or stored.
    #[error("cannot read or store its generation counter: {0}{fix}", fix = state_fix(.0))]
    Generation(#[source] StateError),
    /// The desired table could not be read, or its stops recorded before
    /// they run.
    #[error("cannot read or update its desired sidecars: {0}{fix}", fix = state_fix(.0))]
    Desired(#[source] StateError),
    /// The jobs ran and were acknowledged, but the desired table could not
    /// be written: the journal is kept, and the next sync replays it.
    #[error(
        "cannot record the desired sidecars after running the jobs (the journal is kept; the next sync replays it): {0}{fix}",
        fix = state_fix(.0)
    )]
    Record(#[source] StateError),
}

/// The fix for a state error whose own message names none: a failed read
/// or write says only what the system call said.
fn state_fix(e: &StateError) -> &'static str {
    match e {
        StateError::Io { .. } => {
            "; the state directory must be root's and writable, with free space and inodes (`sidespawn status` checks it), then sync again"
        }
        _ => "",
    }
}

impl KindError {
    /// Whether the rest of this run leaves the kind out. Only a failure
    /// to record what already ran lets later passes try the kind again.
    fn leaves_kind_out(&self) -> bool {
        !matches!(self, KindError::Record(_))
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

/// Back-off after `failures` failed runs in a row: 1 s doubling to 60 s.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(Duration::from_secs(60))
}

/// One kind's claimed work for a pass.
struct KindCtx<'a> {
    kind: Kind,
    profile: &'a Profile,
    shared: SharedDir,
    journal: Journal,
    rejects: RejectLog,
    /// Whether the journal (or, in a dry run, the queue) holds a request.
    has_requests: bool,
    /// Whether the batch may hold a kill request, which resolves a pid
    /// among the listed containers: it claimed one, or the journal held
    /// records before this claim (left by a run that did not finish; not
    /// read here, so assumed).
    may_signal: bool,
    /// A dry run's requests read from the queue, planned after the
    /// journal's (a real run claims them into the journal instead).
    peeked: Vec<Record>,
    claimed: usize,
    /// Lines the claim refused (already in the reject log).
    claim_rejected: usize,
}

/// A kind's complete plan for a pass: the jobs (requests, restarts of dead
/// sidecars, within the limits), the restart decisions, and the desired
/// table they apply to.
struct KindPlan {
    plan: Plan,
    restarts: RestartPlan,
    desired: DesiredTable,
    generation: u64,
    now: u64,
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
    let effective = crate::host::images::effective_config(cfg)?;
    let cfg = &effective;
    let state = StateDir::new(&cfg.state_dir);
    if !opts.dry_run {
        state.claim_owner(&cfg.queue_root, true)?;
    }
    // A named kind without a usable profile is a configuration error.
    for &k in &kinds {
        cfg.profile(k)?;
    }
    // One sync per kind at a time: the backstop's full sync and a path
    // unit's sync of one kind may start together, and two syncs replaying
    // the same journal would race for the same container names.
    let _sync_locks = if opts.dry_run {
        Vec::new()
    } else {
        state.sync_locks(&kinds, SYNC_LOCK_TIMEOUT)?
    };
    if !opts.dry_run {
        state.clean_stale_tmp();
        if opts.backoff {
            wait_for_backoff(&state, &kinds);
        }
    }
    let mut s = Syncer {
        cfg,
        state,
        runtime,
        namespaces,
        opts,
        summary: Summary::default(),
        failed_kinds: Vec::new(),
        lost_entries: Vec::new(),
        unchanged_list: None,
        predicted: None,
        opened: Vec::new(),
    };
    for pass in 1..=cfg.max_passes {
        let mut ctxs = s.claim_all(&kinds);
        fault_point("after-claim");
        let actual = s.list_containers(&ctxs, pass)?;
        for ctx in &mut ctxs {
            s.sync_kind(ctx, &actual, pass);
        }
        if opts.dry_run || !s.still_pending(&ctxs, pass) {
            break;
        }
    }
    if opts.full && !opts.dry_run {
        s.collect_garbage(&kinds);
    }
    s.summary.would = opts.dry_run;
    Ok(s.summary)
}

/// Waits out the back-off of the kind that failed most often in a row. From
/// the failure mark, which a full state directory cannot stop (the JSON
/// status may be stale then). A last sync "after now" (the clock went back)
/// counts as now: the wait is the delay at most.
fn wait_for_backoff(state: &StateDir, kinds: &[Kind]) {
    let worst = kinds
        .iter()
        .filter_map(|&k| Some((k, state.failures(k)?)))
        .map(|(k, (n, at))| (backoff_delay(n), k, n, at))
        .max_by_key(|(d, ..)| *d);
    let Some((delay, kind, failures, at)) = worst else {
        return;
    };
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

/// One run of the sync: what it works with and what it found so far.
struct Syncer<'a> {
    cfg: &'a HostConfig,
    state: StateDir,
    runtime: &'a dyn Runtime,
    namespaces: &'a dyn Namespaces,
    opts: &'a SyncOptions,
    summary: Summary,
    /// Kinds left out of later passes.
    failed_kinds: Vec<Kind>,
    /// Desired entries whose files were unreadable and could not be rebuilt.
    lost_entries: Vec<(Kind, Vec<String>)>,
    /// The last container list while nothing has been started or removed
    /// since it was taken.
    unchanged_list: Option<Vec<ContainerInfo>>,
    /// When this pass plans from the host state's prediction instead of a
    /// listing ([`crate::host::predict`]): each kind's extras as the last
    /// listing recorded them, carried into the marker this pass writes.
    predicted: Option<Carried>,
    /// Desired tables this pass's prediction opened, each taken by the
    /// kind's plan stage instead of opening it again.
    opened: Vec<(Kind, Opened)>,
}

/// A desired table as [`DesiredTable::open`] returns it.
type Opened = (DesiredTable, Vec<desired::Corrupt>);

/// Each predicted kind's extras, as the last listing recorded them.
type Carried = Vec<(Kind, usize)>;

impl<'a> Syncer<'a> {
    /// Stage 1, claim: every kind still in the run claims its queue.
    fn claim_all(&mut self, kinds: &[Kind]) -> Vec<KindCtx<'a>> {
        let mut ctxs = Vec::new();
        for &kind in kinds {
            if self.failed_kinds.contains(&kind) {
                continue;
            }
            match claim_kind(self.cfg, kind, self.opts.dry_run, &mut self.summary.dry_run) {
                Ok(ctx) => ctxs.push(ctx),
                Err(e) => self.kind_failed(kind, e, &Summary::default()),
            }
        }
        ctxs
    }

    /// One `podman ps` for every kind, when any has work (or the backstop's
    /// first pass). A failed listing stops the whole run.
    fn list_containers(
        &mut self,
        ctxs: &[KindCtx],
        pass: u32,
    ) -> Result<Vec<ContainerInfo>, SyncError> {
        self.predicted = None;
        self.opened.clear();
        let busy = ctxs.iter().any(|c| c.has_requests);
        if !(busy || self.first_pass_looks(pass)) {
            return Ok(Vec::new());
        }
        if let Some((view, carried)) = self.predict(ctxs, pass) {
            debug!("acting on the host state's prediction: no listing before the starts");
            self.predicted = Some(carried);
            return Ok(view);
        }
        // Pids resolve kill requests only: a batch of starts lets a runtime
        // that keeps a view answer without learning its new sidecars' pids.
        let listed = if ctxs.iter().any(|c| c.has_requests && c.may_signal) {
            self.runtime.list(&self.cfg.instance)
        } else {
            self.runtime.list_without_pids(&self.cfg.instance)
        };
        match listed {
            Ok(a) => {
                self.unchanged_list = Some(a.clone());
                Ok(a)
            }
            Err(e) => {
                for c in ctxs {
                    let counts = Summary::claimed(c.claimed, c.claim_rejected);
                    record_status(&self.state, c.kind, Err(&e.to_string()), &counts);
                }
                Err(SyncError::List(e))
            }
        }
    }

    /// The containers the host state predicts for this pass, with each
    /// kind's carried extras, when every kind with requests can be predicted
    /// ([`crate::host::predict`]); `None`: list.
    fn predict(&mut self, ctxs: &[KindCtx], pass: u32) -> Option<(Vec<ContainerInfo>, Carried)> {
        let o = self.opts;
        if pass != 1 || o.dry_run || o.full || o.health || o.restart {
            return None;
        }
        let mut view = Vec::new();
        let mut carried = Vec::new();
        for ctx in ctxs.iter().filter(|c| c.has_requests) {
            let mut batch = crate::host::predict::Batch::new(ctx.kind, ctx.profile.max_sidecars);
            if ctx.journal.peek_records(|r| batch.push(&r)).is_err() {
                return None;
            }
            let rebooted = rebooted(&self.state, ctx.kind).is_some();
            // Opened as the plan stage opens it, and handed to it: one read
            // of the table per pass (unreadable files are set aside here and
            // rebuilt there).
            let Ok(opened) = DesiredTable::open(&self.state, ctx.kind, true) else {
                return None;
            };
            let (desired, unreadable) = &opened;
            let predicted = crate::host::predict::view(
                &self.state,
                ctx.profile,
                desired,
                !unreadable.is_empty(),
                &batch,
                rebooted,
            );
            self.opened.push((ctx.kind, opened));
            match predicted {
                Ok((v, extras)) => {
                    view.extend(v);
                    carried.push((ctx.kind, extras));
                }
                Err(why) => {
                    crate::host::predict::log_unsure(ctx.kind, &why);
                    return None;
                }
            }
        }
        Some((view, carried))
    }

    /// Whether pass `pass` looks at the containers with nothing queued: the
    /// first pass of a full, a health or a restart run.
    fn first_pass_looks(&self, pass: u32) -> bool {
        pass == 1 && (self.opts.full || self.opts.health || self.opts.restart)
    }

    /// Stages 2 to 5 for one kind: plan, execute, acknowledge, persist.
    /// Records the kind's status either way.
    fn sync_kind(&mut self, ctx: &mut KindCtx, actual: &[ContainerInfo], pass: u32) {
        // A pass that checks health (the backstop's, a health round's).
        let full_pass = (self.opts.full || self.opts.health) && pass == 1;
        let mut sum = Summary::claimed(ctx.claimed, ctx.claim_rejected);
        if !(ctx.has_requests || self.first_pass_looks(pass)) {
            // A dry run changes nothing, not even the kind's last sync.
            if !self.opts.dry_run {
                record_status(&self.state, ctx.kind, Ok(()), &sum);
            }
            self.summary.add(&sum);
            return;
        }
        let kp = match self.plan_kind(ctx, actual, full_pass) {
            Ok(kp) => kp,
            Err(e) => return self.kind_failed(ctx.kind, e, &sum),
        };
        if self.opts.dry_run {
            self.summary.dry_run.extend(dry_run_lines(
                ctx.kind,
                &kp.plan,
                ctx.profile,
                self.runtime,
            ));
            count_plan(&kp.plan, &mut sum);
            self.summary.add(&sum);
            return;
        }
        match self.run_plan(ctx, kp, actual, &mut sum) {
            Ok(()) => self.kind_done(ctx, &sum),
            Err(e) => self.kind_failed(ctx.kind, e, &sum),
        }
    }

    /// Stage 2, fold and plan: the journal folded into jobs, the desired
    /// table read (and what it lost rebuilt), dead sidecars' restarts added
    /// and the limits applied. Changes nothing.
    fn plan_kind(
        &mut self,
        ctx: &mut KindCtx,
        actual: &[ContainerInfo],
        full_pass: bool,
    ) -> Result<KindPlan, KindError> {
        let (kind, profile) = (ctx.kind, ctx.profile);
        let mut generation =
            next_generation(&self.state, profile, actual).map_err(KindError::Generation)?;
        // A predicted view holds no orphans: the backstop collects them.
        let collect_orphans = (self.opts.full || ctx.has_requests) && self.predicted.is_none();
        let mut plan = fold(
            ctx,
            actual,
            self.namespaces,
            &mut generation,
            collect_orphans,
        )?;
        // Containers were listed for this pass: the moment to notice desired
        // sidecars whose process died. Without their argv, read below only
        // for those that may be started again.
        let change = !self.opts.dry_run;
        let opened = match self.opened.iter().position(|(k, _)| *k == kind) {
            Some(i) => self.opened.swap_remove(i).1,
            None => DesiredTable::open(&self.state, kind, change).map_err(KindError::Desired)?,
        };
        let (mut desired, unreadable) = opened;
        self.recover(kind, profile, &mut desired, &unreadable, actual);
        let busy: HashSet<String> = plan.jobs.iter().map(|j| j.key.clone()).collect();
        let unhealthy = if full_pass && !self.opts.dry_run {
            check_health(self.cfg, profile, self.runtime, &desired, actual)
        } else {
            HashSet::new()
        };
        let seen = Observed {
            actual,
            busy: &busy,
            unhealthy: &unhealthy,
        };
        let need = desired::argv_needed(&desired, kind, &seen);
        let unreadable = desired
            .load_argv(&self.state, kind, &need, change)
            .map_err(KindError::Desired)?;
        self.recover(kind, profile, &mut desired, &unreadable, actual);
        let now = now_ms();
        // Stored by the end of this sync, so the clamp sticks.
        desired::clamp_future(&mut desired, now);
        let mut restarts = desired::plan_restarts(
            profile,
            &desired,
            &seen,
            self.namespaces,
            &mut generation,
            now,
        );
        if let Some(boot) = rebooted(&self.state, kind) {
            forget_from_before_boot(&desired, &seen, &boot, &mut restarts);
        }
        log_restart_decisions(kind, &restarts);
        self.summary.next_restart_ms = restarts
            .blocked
            .iter()
            .filter_map(|(_, b)| match b {
                desired::Blocked::Backoff { until_ms } => Some(*until_ms),
                _ => None,
            })
            .chain(self.summary.next_restart_ms)
            .min();
        plan.jobs.extend(restarts.jobs.iter().cloned());
        crate::host::limit::apply(self.cfg, profile, &mut plan, &desired, actual);
        Ok(KindPlan {
            plan,
            restarts,
            desired,
            generation,
            now,
        })
    }

    /// Rebuilds unreadable desired entries from their containers, keeping
    /// those that could not be for the kind's status.
    fn recover(
        &mut self,
        kind: Kind,
        profile: &Profile,
        desired: &mut DesiredTable,
        unreadable: &[desired::Corrupt],
        actual: &[ContainerInfo],
    ) {
        if unreadable.is_empty() {
            return;
        }
        // A predicted view knows no argv to rebuild from: recovery lists.
        let listed;
        let actual = match self.predicted {
            Some(_) => match self.runtime.list(&self.cfg.instance) {
                Ok(l) => {
                    listed = l;
                    &listed[..]
                }
                Err(e) => {
                    warn!(kind = %kind, "cannot list the containers to rebuild unreadable desired entries: {e}");
                    actual
                }
            },
            None => actual,
        };
        let lost = desired::recover(desired, unreadable, profile, actual, self.runtime);
        if !lost.is_empty() {
            self.lost_entries.push((kind, lost));
        }
    }

    /// Stages 3 to 5: record the intents, execute and acknowledge, persist.
    fn run_plan(
        &mut self,
        ctx: &KindCtx,
        mut kp: KindPlan,
        actual: &[ContainerInfo],
        sum: &mut Summary,
    ) -> Result<(), KindError> {
        record_intents(&self.state, ctx.kind, &mut kp)?;
        fault_point("after-plan");
        if !kp.plan.jobs.is_empty() {
            self.unchanged_list = None;
        }
        let outcomes = execute(self.cfg, ctx, &kp.plan, self.runtime, self.namespaces, sum);
        let carried = self.predicted.as_ref().map(|c| {
            c.iter()
                .find(|(k, _)| *k == ctx.kind)
                .map_or(0, |(_, e)| *e)
        });
        persist(self.cfg, &self.state, ctx, kp, &outcomes, actual, carried)
    }

    /// The kind synced: records its status (naming desired entries this
    /// run lost, once) and counts it.
    fn kind_done(&mut self, ctx: &KindCtx, sum: &Summary) {
        let lost = self
            .lost_entries
            .iter()
            .position(|(k, _)| *k == ctx.kind)
            .map(|i| self.lost_entries.swap_remove(i));
        match lost {
            // Said once, in the status of the pass that found them.
            Some((_, lost)) => {
                let msg = format!(
                    "desired sidecars lost with unreadable state files (moved aside to {}): {}; the agent's next start request for each restores it",
                    desired::corrupt_dir(&self.state).display(),
                    lost.join("; ")
                );
                error!(kind = %ctx.kind, "{msg}");
                record_status(&self.state, ctx.kind, Err(&msg), sum);
            }
            None => record_status(&self.state, ctx.kind, Ok(()), sum),
        }
        self.summary.add(sum);
    }

    /// Gives up on `kind` for this run: logs why, records it in the kind's
    /// status (so `status` and the back-off see it), counts what it did, and
    /// (unless only the record of its outcomes failed) leaves it out of
    /// later passes.
    fn kind_failed(&mut self, kind: Kind, e: KindError, counts: &Summary) {
        let msg = e.to_string();
        error!(kind = %kind, "cannot sync {kind}: {msg}");
        record_status(&self.state, kind, Err(&msg), counts);
        self.summary.add(counts);
        if e.leaves_kind_out() {
            self.failed_kinds.push(kind);
        }
        self.summary.errors.push((kind, e));
    }

    /// Whether another pass is due: a kind still in the run has new
    /// requests queued.
    fn still_pending(&self, ctxs: &[KindCtx], pass: u32) -> bool {
        let pending: Vec<Kind> = ctxs
            .iter()
            .filter(|c| !self.failed_kinds.contains(&c.kind) && c.shared.is_pending())
            .map(|c| c.kind)
            .collect();
        if pending.is_empty() {
            return false;
        }
        debug!("pass {pass} done; still pending: {pending:?}");
        if pass == self.cfg.max_passes {
            warn!(
                "stopping after {pass} passes with requests still pending for {pending:?}; the next trigger continues"
            );
        }
        true
    }

    /// The backstop's run also collects garbage: leftovers no agent wants.
    /// The sync already holds the kinds' locks, so it calls the collection
    /// itself rather than the `gc` command.
    fn collect_garbage(&mut self, kinds: &[Kind]) {
        let live: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| !self.failed_kinds.contains(k))
            .collect();
        // A list taken by this run and still true saves the collection
        // its own `podman ps`: a steady-state backstop makes one call.
        let list = self.unchanged_list.take();
        match crate::host::gc::collect(self.cfg, self.runtime, self.namespaces, &live, false, list)
        {
            Ok(r) => self.summary.removed += r.removed.len(),
            Err(e) => warn!("garbage collection skipped: {e}"),
        }
    }
}

/// Claims (or, in a dry run, only reads) one kind's queue; a dry run's
/// would-be rejects go to `report`. The journal is only looked at here;
/// [`fold`] streams it.
fn claim_kind<'a>(
    cfg: &'a HostConfig,
    kind: Kind,
    dry_run: bool,
    report: &mut Vec<String>,
) -> Result<KindCtx<'a>, KindError> {
    let profile = cfg.profile(kind)?;
    let limits = Limits {
        max_queue_bytes: cfg.max_queue_bytes,
        lock_timeout: cfg.lock_timeout,
        ..Limits::default()
    };
    let shared = SharedDir::open(&cfg.queue_root, kind, !dry_run, limits)?;
    let journal = Journal::open(&cfg.state_dir, kind)?;
    let rejects = RejectLog::open(&cfg.state_dir, kind)?;
    let leftover = journal.has_records()?;
    let mut ctx = KindCtx {
        kind,
        profile,
        has_requests: leftover,
        may_signal: leftover,
        shared,
        journal,
        rejects,
        peeked: Vec::new(),
        claimed: 0,
        claim_rejected: 0,
    };
    if dry_run {
        let (queued, bad) = ctx.shared.peek()?;
        for r in &bad {
            report.push(format!(
                "# would reject line {} of the {kind} queue: {}",
                r.line, r.reason
            ));
        }
        ctx.has_requests |= !queued.is_empty();
        ctx.may_signal |= queued.iter().any(|r| r.action == Action::Signal);
        // What the claim would take and reject, for the dry run's summary.
        ctx.claimed = queued.len();
        ctx.claim_rejected = bad.len();
        ctx.peeked = queued;
        return Ok(ctx);
    }
    let claim = ctx.shared.claim(&ctx.journal, &ctx.rejects)?;
    debug!(kind = %kind, "claimed {} request(s), lock held {:?}", claim.claimed, claim.lock_held);
    ctx.claimed = claim.claimed;
    ctx.claim_rejected = claim.rejected.len();
    // The claim already logged them and kept them in the reject log.
    for r in &claim.rejected {
        if let Some(id) = &r.id {
            write_ack(&ctx.shared, id, Outcome::Rejected, &r.reason, None);
        }
    }
    ctx.has_requests |= claim.claimed > 0;
    ctx.may_signal |= claim.signals > 0;
    Ok(ctx)
}

/// Folds a kind's batch into a plan, streaming the journal (then a dry
/// run's queued requests) through the planner, so no request is held once
/// folded.
fn fold(
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

/// Stage 3, before anything runs: stores the generation counter and takes
/// the sidecars the plan stops out of the desired table. Stops leave the
/// table before they run: a sync killed after a stop but before the table
/// is written would otherwise restart a sidecar the agent stopped (the
/// replayed stop request finds no container, so it cannot name the sidecar
/// any more).
fn record_intents(state: &StateDir, kind: Kind, kp: &mut KindPlan) -> Result<(), KindError> {
    if !kp.plan.jobs.is_empty() {
        // Written again once the outcomes are recorded: a pass that does
        // not get there leaves no prediction behind.
        crate::host::predict::clear(state, kind);
    }
    state
        .store_generation(kind, kp.generation)
        .map_err(KindError::Generation)?;
    if desired::apply_intents(&mut kp.desired, &kp.plan) {
        kp.desired.store(state, kind).map_err(KindError::Desired)?;
    }
    Ok(())
}

/// Stage 5, persist: applies the outcomes to the desired table and writes
/// it, then clears the journal. Written before the journal is cleared: a
/// rerun replays the requests and rebuilds what this write would have said.
/// Then records what the next start may predict from: the extras this
/// pass's listing saw, or (`carried`) those a predicted pass carried over.
fn persist(
    cfg: &HostConfig,
    state: &StateDir,
    ctx: &KindCtx,
    kp: KindPlan,
    outcomes: &[JobOutcome],
    actual: &[ContainerInfo],
    carried: Option<usize>,
) -> Result<(), KindError> {
    let KindPlan {
        plan,
        restarts,
        mut desired,
        now,
        generation,
    } = kp;
    desired::apply_outcomes(
        &mut desired,
        ctx.kind,
        &plan,
        &restarts,
        outcomes,
        actual,
        now,
    );
    desired.store(state, ctx.kind).map_err(KindError::Record)?;
    let extras =
        carried.unwrap_or_else(|| crate::host::predict::extras(ctx.profile, &desired, actual));
    crate::host::predict::store(
        state,
        ctx.kind,
        crate::host::predict::Marker { generation, extras },
    );
    crate::host::dropped::record(state, ctx.kind, restarts.forget.iter().cloned());
    // Only now: a pass that failed before this point finds the reboot
    // again and drops what it could not.
    store_boot(state, ctx.kind);
    fault_point("after-acks");
    if let Err(e) = ctx.journal.clear() {
        // The requests were acknowledged; a rerun replays them as
        // no-ops. Say so, but the sync itself ran.
        error!(kind = %ctx.kind, "cannot clear the journal: {e}");
    }
    if let Err(e) = ctx.shared.prune_acks(cfg.ack_max_age) {
        warn!(kind = %ctx.kind, "cannot prune old acknowledgements: {e}");
    }
    Ok(())
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
        .map(SidecarLabels::of)
        .filter(|l| l.is_profiles(kind, &profile.labels))
        .filter_map(|l| l.generation())
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
    // The request's last word, with the fields a journal search uses
    // (`SIDESPAWN_REQUEST=<id>`, `RESULT=failed`).
    let outcome = match result {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Rejected => "rejected",
    };
    let kind = shared.kind();
    match shared.write_ack(&ack) {
        Ok(()) => info!(
            kind = %kind,
            sidespawn_request = %id,
            result = outcome,
            container = container.unwrap_or("-"),
            "answered {outcome}: {message}"
        ),
        Err(e) => error!(
            kind = %kind,
            sidespawn_request = %id,
            result = outcome,
            "cannot acknowledge request {id}: {e}"
        ),
    }
}

/// What a dry run reports for a kind's plan: the answers it would give, and
/// for each job the exact command lines a real run executes ([`Step::call`]
/// with the profile's stop timeout, as [`run_job`] uses).
fn dry_run_lines(kind: Kind, plan: &Plan, profile: &Profile, runtime: &dyn Runtime) -> Vec<String> {
    let mut out = Vec::new();
    if plan.jobs.is_empty() {
        out.push(format!("# {kind}: nothing to do"));
    }
    for a in &plan.answers {
        out.push(format!(
            "# {kind}: request {} -> {:?}: {}",
            a.id, a.result, a.message
        ));
    }
    for job in &plan.jobs {
        out.push(format!("# {kind}: {:?} {}", job.what, job.container));
        for step in &job.steps {
            out.push(runtime.describe(&step.call(profile.stop_timeout)));
        }
    }
    out
}

/// Counts a plan as a dry run reports it: the answers decided while
/// planning, and each job as if its commands succeed (the real run counts
/// in [`acknowledge_answers`] and [`count_job`]).
fn count_plan(plan: &Plan, sum: &mut Summary) {
    for a in &plan.answers {
        match a.result {
            Outcome::Rejected => sum.rejected += 1,
            Outcome::Failed => sum.failed += 1,
            Outcome::Ok => {}
        }
    }
    sum.unchanged += plan.unchanged;
    for job in &plan.jobs {
        count_done(job.what, sum);
    }
}

/// Counts a job that succeeded (or, in a dry run, would).
fn count_done(what: JobKind, sum: &mut Summary) {
    match what {
        JobKind::Start => sum.started += 1,
        JobKind::Replace => sum.replaced += 1,
        JobKind::Signal => sum.signalled += 1,
        JobKind::Stop | JobKind::Orphan => sum.removed += 1,
        JobKind::Restart => sum.restarts += 1,
    }
}

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

/// Runs a job's steps in order, each through [`Step::call`] (the mapping
/// the dry run prints), stopping at the first failure.
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
        if let Step::Run {
            netns: Some(ns), ..
        } = step
            && let Err(e) = namespaces.verify(ns)
        {
            return Err(JobFailure {
                outcome: Outcome::Rejected,
                message: e.to_string(),
            });
        }
        match (
            step,
            crate::host::runtime::perform(runtime, &step.call(profile.stop_timeout)),
        ) {
            (_, Ok(())) => {}
            (
                Step::Signal { name, .. },
                Err(RuntimeError::NoSuchContainer(_) | RuntimeError::NotRunning(_)),
            ) => {
                return Err(JobFailure {
                    outcome: Outcome::Failed,
                    message: format!("No such process: sidecar {name} is not running"),
                });
            }
            // Already gone or stopped is what a stop wants.
            (
                Step::Stop { .. },
                Err(RuntimeError::NoSuchContainer(_) | RuntimeError::NotRunning(_)),
            ) => {}
            (Step::Run { spec, .. }, Err(RuntimeError::NameInUse(_))) => {
                done = take_over_name(spec, runtime)?;
            }
            (_, Err(e)) => return Err(failed(e)),
        }
    }
    Ok(done)
}

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
                "the container name {name} is already in use by container {}, which is not this configuration's sidecar for {} (its labels differ); remove or rename it (`podman rm -f {name}`, or `docker rm -f {name}` on docker) and ask again",
                short_id(&c.id),
                SidecarLabels::of_spec(spec).key().unwrap_or("?"),
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
            SidecarLabels::of(&c).generation_text()
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

/// Runs the kind's health check in its running desired sidecars, storing
/// the round for `status`; returns the names of those that failed it (they
/// count as dead).
fn check_health(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    desired: &DesiredTable,
    actual: &[ContainerInfo],
) -> HashSet<String> {
    let running: Vec<&ContainerInfo> = actual
        .iter()
        .filter(|c| {
            c.state == crate::host::runtime::State::Running
                && desired.sidecars.values().any(|d| d.container == c.name)
        })
        .collect();
    let failed = crate::host::health::check_and_store(cfg, profile, runtime, &running);
    for (name, why) in &failed {
        warn!(kind = %profile.kind, container = %name, "{why}; restarting it as dead");
    }
    failed.into_keys().collect()
}

/// The kernel's identity of this boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Where the boot of `kind`'s last completed pass is recorded.
fn boot_path(state: &StateDir, kind: Kind) -> std::path::PathBuf {
    state.path().join("boot").join(kind.as_str())
}

fn current_boot() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    Some(id.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The boot `kind`'s last completed pass ran in, when it was another than
/// this one: the host rebooted since. `None` when unknown (no record yet,
/// or no boot id).
fn rebooted(state: &StateDir, kind: Kind) -> Option<String> {
    let stored = std::fs::read_to_string(boot_path(state, kind)).ok()?;
    let stored = stored.trim().to_owned();
    (current_boot()? != stored && !stored.is_empty()).then_some(stored)
}

fn store_boot(state: &StateDir, kind: Kind) {
    let Some(now) = current_boot() else {
        return;
    };
    if let Err(e) = crate::host::state::write_atomic(&boot_path(state, kind), now.as_bytes()) {
        warn!(kind = %kind, "cannot record this boot's id: {e}");
    }
}

/// After a reboot, drops the desired sidecars whose namespace reference
/// predates it and that nothing asked for since (not running, no request
/// in this pass). Every named namespace lived in /run and died with the
/// old boot; one of the same name now was made anew, and the kernel hands
/// out namespace inodes afresh at each boot, so a new namespace can carry
/// the very inode a record names: the inode check cannot tell, the boot
/// can. Those the inode check already dropped keep its reason.
fn forget_from_before_boot(
    desired: &DesiredTable,
    seen: &Observed,
    previous_boot: &str,
    restarts: &mut RestartPlan,
) {
    for (key, d) in &desired.sidecars {
        let Some(ns) = &d.record.netns else {
            continue;
        };
        let running = seen
            .actual
            .iter()
            .any(|c| c.name == d.container && c.state == crate::host::runtime::State::Running);
        if running || seen.busy.contains(key) || restarts.forget.iter().any(|(k, _)| k == key) {
            continue;
        }
        restarts.jobs.retain(|j| j.key != *key);
        restarts.blocked.retain(|(k, _)| k != key);
        restarts.forget.push((
            key.clone(),
            format!(
                "the host rebooted since it was started (boot {previous_boot}): its network namespace {:?} (inode {}) is from before the reboot, and no request named it since",
                ns.name, ns.ino
            ),
        ));
    }
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

/// Stage 4, execute and acknowledge: answers the requests the plan decided
/// at once, then runs the jobs with bounded parallelism, answering each
/// job's requests as soon as it ends (a kill script is waiting). Counts
/// into `sum`, logs rejects; returns how each job ended, by index.
fn execute(
    cfg: &HostConfig,
    ctx: &KindCtx,
    plan: &Plan,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    sum: &mut Summary,
) -> Vec<JobOutcome> {
    let mut rejects = acknowledge_answers(ctx, plan, sum);
    let results = crate::host::parallel::map(&plan.jobs, cfg.parallelism, |i, job| {
        let t = Instant::now();
        // Bounded once here: the message goes into the acks, the reject log
        // and the desired table's last_error.
        let r = run_job(job, ctx.profile, runtime, namespaces).map_err(|f| JobFailure {
            message: bounded(&f.message, MAX_MESSAGE_BYTES).into_owned(),
            ..f
        });
        let elapsed = t.elapsed();
        answer_job(&ctx.shared, job, &r);
        if i == 0 {
            fault_point("mid-run");
        }
        (r, elapsed)
    });
    let outcomes = plan
        .jobs
        .iter()
        .zip(results)
        .map(|(job, (r, elapsed))| count_job(ctx.kind, job, r, elapsed, sum, &mut rejects))
        .collect();
    if !rejects.is_empty()
        && let Err(e) = ctx.rejects.append(&rejects)
    {
        error!(kind = %ctx.kind, "cannot write the reject log: {e}");
    }
    outcomes
}

/// Writes the acknowledgements the plan decided without a job; returns the
/// rejects among them, for the reject log.
fn acknowledge_answers(ctx: &KindCtx, plan: &Plan, sum: &mut Summary) -> Vec<Reject> {
    let kind = ctx.kind;
    let mut rejects = Vec::new();
    for a in &plan.answers {
        match a.result {
            Outcome::Rejected => {
                warn!(kind = %kind, sidespawn_request = %a.id, "rejected: {}", a.message);
                rejects.push(reject_of(&a.id, &a.message));
                sum.rejected += 1;
            }
            Outcome::Failed => {
                info!(kind = %kind, sidespawn_request = %a.id, "{}", a.message);
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
    rejects
}

fn reject_of(id: &str, reason: &str) -> Reject {
    Reject {
        line: 0,
        id: Some(id.to_owned()),
        reason: reason.to_owned(),
        excerpt: String::new(),
    }
}

/// Counts and logs how one job ended; its outcome for the desired table.
fn count_job(
    kind: Kind,
    job: &Job,
    r: Result<Done, JobFailure>,
    elapsed: Duration,
    sum: &mut Summary,
    rejects: &mut Vec<Reject>,
) -> JobOutcome {
    let f = match r {
        Ok(_) => {
            info!(kind = %kind, container = %job.container, "{:?} done in {elapsed:?}", job.what);
            count_done(job.what, sum);
            return JobOutcome::Ok;
        }
        Err(f) => f,
    };
    if f.outcome == Outcome::Rejected {
        warn!(kind = %kind, container = %job.container, "rejected: {}", f.message);
        sum.rejected += job.answers.len().max(1);
        rejects.extend(job.answers.iter().map(|(id, _)| reject_of(id, &f.message)));
        JobOutcome::Rejected(f.message)
    } else {
        error!(kind = %kind, container = %job.container, "{:?} failed: {}", job.what, f.message);
        sum.failed += job.answers.len().max(1);
        JobOutcome::Failed(f.message)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_names_every_count_in_order_and_adds_up() {
        let mut s = Summary {
            claimed: 9,
            rejected: 2,
            ..Summary::default()
        };
        s.add(&Summary {
            claimed: 1,
            started: 2,
            replaced: 3,
            unchanged: 4,
            signalled: 5,
            removed: 6,
            failed: 7,
            rejected: 8,
            restarts: 9,
            ..Summary::default()
        });
        assert_eq!(
            s.to_string(),
            "sync: claimed 10, started 2, replaced 3, unchanged 4, signalled 5, removed 6, failed 7, rejected 10, restarts 9"
        );
        s.errors.push((
            Kind::Dnsmasq,
            KindError::Generation(StateError::Corrupt {
                path: "/x".into(),
                message: "bad".into(),
            }),
        ));
        assert!(s.to_string().ends_with("; could not sync 1 kind(s)"), "{s}");
        s.errors.clear();
        s.would = true;
        assert_eq!(
            s.to_string(),
            "sync --dry-run, nothing changed: would claim 10, would start 2, would replace 3, would leave unchanged 4, would signal 5, would remove 6, would fail 7, would reject 10, would restart 9"
        );
    }
}
