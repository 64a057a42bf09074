//! `sidespawn watch`: a long-running alternative to the `sidespawn@KIND.path`
//! units. It watches each kind's shared queue directory with inotify (the
//! `notify` crate) and runs the ordinary sync of that kind when a request
//! arrives.
//!
//! Invariants:
//!
//! * **Events are only a cue.** No event is trusted to say what changed or
//!   that nothing else did: an event that may mean a request (see
//!   [`classify`]) marks the kind dirty, and the kind's worker then looks at
//!   the queue itself ([`SharedDir::is_pending`]) and runs [`sync::run`] —
//!   the same claim and the same locks as the oneshot, so the two may run
//!   at once. A lost event therefore costs latency, never a request: an
//!   overflowed inotify queue, a replaced or deleted directory and the
//!   periodic full reconcile all lead to the same rescan.
//! * **Bursts coalesce without delaying a lone request.** One worker thread
//!   per kind; an event sets a dirty flag; an idle worker syncs at once (no
//!   debounce), and events that arrive during a sync make exactly one more
//!   run after it, however many there were.
//! * **A failing sync cannot spin.** After a failed run the worker waits
//!   ([`sync::backoff_delay`]: 1 s doubling to 60 s) before the next one,
//!   whatever events arrive, and says why in the log and in the status. A
//!   reload (SIGHUP) ends the wait, since it may have fixed the cause.
//! * **The daemon's own work raises no new work.** Events about `acks/`
//!   and plain opens are ignored, and the pending check only opens
//!   directories and stats files (passive events), so a sync's own claim
//!   (closing the lock, removing the marker) ends in one cheap "nothing
//!   pending" check, not in another sync.
//! * **Watches follow the directories.** The queue root is watched too;
//!   when a kind directory is renamed, deleted or recreated its watch is
//!   moved to whatever now has the name, and the kind is rescanned, since a
//!   request may have landed before the new watch existed. An event about
//!   the name always places a new watch: device and inode cannot tell a
//!   directory made again on a reused inode from the one whose watch the
//!   kernel dropped. Whatever cannot be watched is retried every second.
//! * **Health rounds on their own schedule.** Each kind with a
//!   `health_cmd` gets a health round every `health_interval_s`
//!   ([`Schedule`]): a sync of that kind that checks its running sidecars
//!   and restarts the unhealthy ones under the restart policy, run by the
//!   kind's worker like any other job (so it never overlaps that kind's
//!   syncs).
//! * **Signals without an async runtime.** SIGTERM, SIGINT and SIGHUP are
//!   blocked before any thread starts and read from a `signalfd` by one
//!   thread, so no thread is ever interrupted mid-sync. (Child processes do
//!   not inherit the block: std's `Command` resets the signal mask.)
//!   SIGTERM/SIGINT let the sync in progress finish — podman calls,
//!   acknowledgements, journal — and exit 0. SIGHUP re-reads the
//!   configuration and re-arms the watches; a configuration that does not
//!   load is logged and the old one kept.
//!
//! * **Deaths are events too.** A [`Follower`] reads the engine's events
//!   for the configuration (`crate::host::follow`): a sidecar's `died`
//!   cues its kind's worker for a restart pass (`SyncOptions::restart`),
//!   and a restart the policy's back-off holds is cued again by a timer
//!   (`Cue::restart_at`), not by polling. The workers' syncs list from the
//!   container view the events keep current ([`Viewed`]), falling back to
//!   `podman ps` on any doubt. `--restarts-only` (sidespawn-restart.service,
//!   beside the path units) keeps only this part: no queue watches, no
//!   view, no periodic full reconcile.
//!
//! With `$NOTIFY_SOCKET` set (a `Type=notify` unit) it reports `READY=1`
//! once every kind's first sync has run and the watches are in place,
//! `STATUS=`, `WATCHDOG=1` pings, `RELOADING=1` (with `MONOTONIC_USEC=`)
//! and `STOPPING=1`, through the `sd-notify` crate (a path socket; a
//! failed send is logged once and the daemon goes on).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, INotifyWatcher, RecursiveMode, Watcher};
use tracing::{debug, error, info, warn};

use crate::host::claim::{Limits, SharedDir};
use crate::host::config::{ConfigError, HostConfig};
use crate::host::follow::{ContainerView, Follower, Viewed};
use crate::host::health::Schedule;
use crate::host::namespaces::HostNamespaces;
use crate::host::runtime::Runtime;
use crate::host::sync::{self, Summary, SyncOptions};
use crate::shared::kind::Kind;
use crate::shared::queue::{LOCK_FILE, PENDING_FILE, QUEUE_FILE, TIMESTAMP_FILE};
use crate::shared::record::now_ms;
use sd_notify::NotifyState as State;

/// Default of `--interval`: how often every kind gets a full sync anyway.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// How often watches that could not be placed are tried again.
const REARM_RETRY: Duration = Duration::from_secs(1);
/// Test-only fault injection: `SIDESPAWN_WATCH_FAULT=overflow` treats every
/// relevant event as an inotify queue overflow (its content is dropped and
/// only the rescan flag is kept), to prove the rescan path alone loses
/// nothing.
pub const FAULT_ENV: &str = "SIDESPAWN_WATCH_FAULT";
/// Longest error text put into the one-line systemd status.
const STATUS_ERROR_CHARS: usize = 160;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Only these kinds (empty: every enabled kind of the configuration,
    /// re-read on SIGHUP).
    pub kinds: Vec<Kind>,
    /// Interval of the full reconcile backstop (`sync --full`).
    pub interval: Duration,
    /// Whether the configuration file was named explicitly; a missing
    /// default file means "no kinds" rather than an error, on reload too.
    pub explicit_config: bool,
    /// Rewritten with the Prometheus metrics after every sync that ran.
    pub metrics_file: Option<PathBuf>,
    /// Follow only the engine's events and start dead sidecars again; the
    /// queues are left to the path units, and the full reconcile to their
    /// backstop timer (`sidespawn-restart.service`).
    pub restarts_only: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            kinds: Vec::new(),
            interval: DEFAULT_INTERVAL,
            explicit_config: true,
            metrics_file: None,
            restarts_only: false,
        }
    }
}

/// The daemon could not start, or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no kind to watch: none is enabled in {0}; add a profile under \"kinds\"")]
    NothingConfigured(PathBuf),
    #[error("cannot set up signal handling ({op}): {source}")]
    Signals {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(
        "cannot watch {path}: the inotify watch limit is reached; raise the sysctl fs.inotify.max_user_watches (e.g. `sysctl -w fs.inotify.max_user_watches=524288`, and a file in /etc/sysctl.d/ to keep it)"
    )]
    WatchLimit { path: PathBuf },
    #[error(
        "cannot create an inotify instance: too many open (or this process is out of file descriptors); raise the sysctl fs.inotify.max_user_instances (e.g. `sysctl -w fs.inotify.max_user_instances=1024`, and a file in /etc/sysctl.d/ to keep it), or LimitNOFILE="
    )]
    InstanceLimit,
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Maps an inotify failure to advice naming the sysctl to raise.
pub fn watch_error(path: Option<&Path>, e: notify::Error) -> WatchError {
    let path = path
        .map(Path::to_owned)
        .or_else(|| e.paths.first().cloned())
        .unwrap_or_default();
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit { path },
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(nix::libc::ENOSPC) => {
            WatchError::WatchLimit { path }
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(nix::libc::EMFILE) => {
            WatchError::InstanceLimit
        }
        _ => WatchError::Watch { path, source: e },
    }
}

// ---------------------------------------------------------------------------
// The per-kind worker: coalescing and back-off.

/// One run asked of a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Job {
    /// A full reconcile (`sync --full`): list containers, collect orphans.
    pub full: bool,
    /// Run the sync even if the queue looks idle (start-up, retries after
    /// a failure, full runs: the journal may hold claimed requests).
    pub forced: bool,
    /// Check the kind's running sidecars' health (a health round).
    pub health: bool,
    /// A restart pass (`SyncOptions::restart`): the engine reported a
    /// death, or a restart held back by the policy's back-off is due.
    pub restart: bool,
}

#[derive(Debug, Default)]
struct CueState {
    dirty: bool,
    full: bool,
    forced: bool,
    health: bool,
    /// End a back-off now (the configuration was reloaded).
    reset: bool,
    stop: bool,
    restart: bool,
    /// When a restart held back by the restart policy's back-off is due.
    restart_at: Option<Instant>,
}

/// The flags a worker waits on. Setting one never blocks and never queues:
/// a thousand pokes during a sync leave one dirty flag.
#[derive(Debug, Clone, Default)]
pub struct Cue(Arc<(Mutex<CueState>, Condvar)>);

impl Cue {
    fn state(&self) -> MutexGuard<'_, CueState> {
        // The flags stay meaningful even if a holder panicked.
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut CueState)) {
        f(&mut self.state());
        self.0.1.notify_all();
    }

    /// Something may have been queued: check and sync.
    pub fn poke(&self) {
        self.set(|s| s.dirty = true);
    }

    /// Sync even if nothing looks pending.
    pub fn force(&self) {
        self.set(|s| s.forced = true);
    }

    /// Run a full reconcile.
    pub fn full(&self) {
        self.set(|s| {
            s.full = true;
            s.forced = true;
        });
    }

    /// Run a health round: check the running sidecars, restart the
    /// unhealthy ones.
    pub fn health(&self) {
        self.set(|s| {
            s.health = true;
            s.forced = true;
        });
    }

    /// Sync now even if waiting out a back-off: what failed may have been
    /// fixed (a reloaded configuration).
    pub fn retry_now(&self) {
        self.set(|s| {
            s.forced = true;
            s.reset = true;
        });
    }

    /// A sidecar of this kind died: run a restart pass.
    pub fn restart(&self) {
        self.set(|s| {
            s.restart = true;
            s.forced = true;
        });
    }

    /// Run a restart pass at `at` (the earliest of those asked), a timer
    /// rather than a poll.
    pub fn restart_at(&self, at: Instant) {
        self.set(|s| s.restart_at = Some(s.restart_at.map_or(at, |t| t.min(at))));
    }

    /// Finish the run in progress, if any, and exit.
    pub fn stop(&self) {
        self.set(|s| s.stop = true);
    }

    /// Waits for the next job; `None` once stopped. While `retry_at` is in
    /// the future only a stop ends the wait (back-off after a failure); when
    /// it has passed the next job is forced.
    fn next(&self, retry_at: &mut Option<Instant>) -> Option<Job> {
        let mut st = self.state();
        loop {
            if st.stop {
                return None;
            }
            if st.reset {
                st.reset = false;
                *retry_at = None;
            }
            let now = Instant::now();
            if let Some(at) = st.restart_at
                && now >= at
            {
                st.restart_at = None;
                st.restart = true;
                st.forced = true;
            }
            match *retry_at {
                Some(at) if now < at => {
                    st = self
                        .0
                        .1
                        .wait_timeout(st, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                Some(_) => {
                    *retry_at = None;
                    st.forced = true;
                }
                None => {}
            }
            if st.dirty || st.forced || st.full {
                // Cleared before the run: an event during it sets them anew.
                let job = Job {
                    full: st.full,
                    forced: st.forced || st.full,
                    health: st.health,
                    restart: st.restart,
                };
                st.dirty = false;
                st.forced = false;
                st.full = false;
                st.health = false;
                st.restart = false;
                return Some(job);
            }
            st = match st.restart_at {
                Some(at) => {
                    self.0
                        .1
                        .wait_timeout(st, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.0.1.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// A worker's loop: waits on `cue`, runs `sync(job, failures so far)`, and
/// after a failed run (`false`) waits `backoff(failures)` before the next.
/// Returns when the cue is stopped, after the run in progress.
pub fn work(cue: &Cue, backoff: impl Fn(u32) -> Duration, mut sync: impl FnMut(Job, u32) -> bool) {
    let mut failures = 0u32;
    let mut retry_at = None;
    while let Some(job) = cue.next(&mut retry_at) {
        if sync(job, failures) {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            retry_at = Some(Instant::now() + backoff(failures));
        }
    }
}

// ---------------------------------------------------------------------------
// Events.

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Events were lost (queue overflow, read error) or the queue root
    /// itself changed: re-check every watch and every queue.
    RescanAll,
    /// The kind directory itself changed (renamed, deleted, created,
    /// attributes): re-check its watch, then its queue.
    Rearm(Kind),
    /// Something in the kind directory that a request touches changed.
    Check(Kind),
}

/// Whether an event is only an open, a read or a close without writing:
/// those come from every sync and every pending check, and never mean a
/// new request (which always writes).
fn is_passive(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

/// Whether an event on the entry `name` of a kind directory may mean a
/// new request. A wrapper writes the marker, the queue and the timestamp
/// under the lock and then closes the lock file (opened for writing), so the
/// close of `lock` is the cue that comes once the lock is free: a sync cued
/// by the writes themselves would start while the wrapper still holds it,
/// and wait. The marker, queue and timestamp still cue when they appear,
/// vanish or are renamed, which no well-behaved wrapper does under the lock
/// alone. Acknowledgements (`acks/`) never cue.
fn is_request_cue(name: &str, kind: &EventKind) -> bool {
    use notify::event::ModifyKind;
    match name {
        LOCK_FILE => matches!(
            kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        ),
        PENDING_FILE | QUEUE_FILE | TIMESTAMP_FILE => matches!(
            kind,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ),
        _ => false,
    }
}

/// The actions one event asks for, given the queue root and the kinds
/// watched.
pub fn classify(root: &Path, kinds: &BTreeSet<Kind>, ev: &Event) -> Vec<Action> {
    if ev.need_rescan() {
        return vec![Action::RescanAll];
    }
    if is_passive(&ev.kind) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in &ev.paths {
        if p == root {
            out.push(Action::RescanAll);
            continue;
        }
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        if parent == root {
            if let Some(&k) = kinds.iter().find(|k| k.as_str() == name) {
                out.push(Action::Rearm(k));
            }
            continue;
        }
        if let (Some(grand), Some(dir)) = (parent.parent(), parent.file_name())
            && grand == root
            && let Some(&k) = kinds.iter().find(|k| k.as_str() == dir.to_string_lossy())
            && is_request_cue(&name, &ev.kind)
        {
            out.push(Action::Check(k));
        }
    }
    out.sort();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------
// Watches.

/// Device and inode of a directory: which directory a watch is on.
type DirId = (u64, u64);

/// The directory at `path` without following a link, or `None` when there
/// is no directory there (a symlink is not one: the sync refuses it too).
fn dir_id(path: &Path) -> Option<DirId> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_dir().then(|| (m.dev(), m.ino()))
}

/// The inotify watches on the queue root and on each kind directory, each
/// remembered with the identity of the directory it was placed on.
struct Watches {
    watcher: INotifyWatcher,
    root: PathBuf,
    root_id: Option<DirId>,
    kinds: BTreeMap<Kind, Option<DirId>>,
    /// The last failure to arm, logged once until it changes.
    last_error: Option<String>,
}

impl Watches {
    fn kind_path(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.as_str())
    }

    /// Points the watch on `path` at whatever directory has that name now.
    /// Returns whether the directory changed.
    ///
    /// Without `force`, a directory with the identity already armed keeps
    /// its watch (the retry timer only fills gaps). An event about the name
    /// itself forces a new watch: the identity cannot prove the kernel
    /// still watches it, because a directory deleted and made again can get
    /// the freed inode back, and when the events of both are read only
    /// after both happened, the new directory has the old identity and no
    /// watch (the kernel dropped it with the old one).
    fn arm_path(
        watcher: &mut INotifyWatcher,
        path: &Path,
        armed: &mut Option<DirId>,
        force: bool,
    ) -> Result<bool, WatchError> {
        // Identity first, watch second: if the directory is swapped in
        // between, the recorded identity is the older one, the next check
        // sees the difference and re-arms. The other order could keep a
        // watch on a directory that no longer has the name.
        let now = dir_id(path);
        let changed = now != *armed;
        if now.is_some() && !changed && !force {
            return Ok(false);
        }
        // The old watch may already be gone (the kernel drops it with its
        // directory, notify when the parent reports the rename).
        let _ = watcher.unwatch(path);
        *armed = None;
        if let Some(id) = now {
            match watcher.watch(path, RecursiveMode::NonRecursive) {
                Ok(()) => *armed = Some(id),
                // Vanished between the look and the watch: not armed, and
                // the parent's watch or the retry timer brings it back.
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {}
                Err(e) => return Err(watch_error(Some(path), e)),
            }
        }
        Ok(changed)
    }

    fn arm_root(&mut self, force: bool) -> Result<bool, WatchError> {
        Self::arm_path(&mut self.watcher, &self.root, &mut self.root_id, force)
    }

    fn arm_kind(&mut self, kind: Kind, force: bool) -> Result<bool, WatchError> {
        let path = self.kind_path(kind);
        let armed = self.kinds.entry(kind).or_default();
        Self::arm_path(&mut self.watcher, &path, armed, force)
    }

    fn disarm_kind(&mut self, kind: Kind) {
        if self.kinds.remove(&kind).is_some() {
            let _ = self.watcher.unwatch(&self.kind_path(kind));
        }
    }

    fn disarm_all(&mut self) {
        for k in self.kinds.keys().copied().collect::<Vec<_>>() {
            self.disarm_kind(k);
        }
        if self.root_id.take().is_some() {
            let _ = self.watcher.unwatch(&self.root);
        }
    }

    fn complete(&self) -> bool {
        self.root_id.is_some() && self.kinds.values().all(Option::is_some)
    }

    /// Logs an arming failure once per distinct message.
    fn report(&mut self, r: Result<bool, WatchError>) -> bool {
        match r {
            Ok(changed) => changed,
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    error!("{msg}; retrying every {REARM_RETRY:?}");
                    self.last_error = Some(msg);
                }
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon.

/// Everything that reaches the main loop.
enum Msg {
    Fs(notify::Result<Event>),
    Signal(Signal),
    Synced(Report),
    /// A worker's thread ends (by its id: a kind removed and added again by
    /// reloads has had several).
    WorkerDone(u64),
    /// The engine reported a sidecar of this kind dead.
    Died(Kind),
    /// The engine's event stream (re)connected, or an event was lost:
    /// every kind looks for deaths it may have missed.
    EventsDoubt,
}

/// The follower's cues, as messages to the main loop.
struct ChannelCues(Mutex<Sender<Msg>>);

impl crate::host::follow::Cues for ChannelCues {
    fn died(&self, kind: Kind) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Msg::Died(kind));
    }
    fn reconnected(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Msg::EventsDoubt);
    }
}

/// The view of containers the workers' syncs list from, with the
/// configuration instance it belongs to (none in `--restarts-only` mode,
/// whose rare syncs list).
type SharedView = Arc<Mutex<Option<(String, ContainerView)>>>;

/// A sync a worker ran.
struct Report {
    kind: Kind,
    result: Result<Summary, String>,
    /// Failed runs in a row, this one included.
    failures: u32,
    retry_in: Option<Duration>,
    at_ms: u64,
}

struct Worker {
    id: u64,
    cue: Cue,
    handle: JoinHandle<()>,
}

/// Makes the container runtime for a configuration (its engine, or a fake).
pub type RuntimeFactory = dyn Fn(&HostConfig) -> Box<dyn Runtime> + Send + Sync;

/// The configuration every worker reads at the start of each run.
type SharedConfig = Arc<Mutex<Arc<HostConfig>>>;

fn current(cfg: &SharedConfig) -> Arc<HostConfig> {
    Arc::clone(&cfg.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs the daemon with the configured engine until SIGTERM or SIGINT.
///
/// Call it from the main thread before any other thread starts: it blocks
/// SIGTERM, SIGINT and SIGHUP in the calling thread so every thread started
/// after inherits the block and only the signal thread receives them.
pub fn run(cfg: HostConfig, opts: &WatchOptions) -> Result<(), WatchError> {
    run_with(cfg, opts, Arc::new(crate::host::runtime::for_config))
}

/// [`run`] with a chosen container runtime.
pub fn run_with(
    cfg: HostConfig,
    opts: &WatchOptions,
    runtime: Arc<RuntimeFactory>,
) -> Result<(), WatchError> {
    let kinds = kinds_of(&cfg, opts)?;

    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(|source| WatchError::Signals {
        op: "block",
        source,
    })?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|source| {
        WatchError::Signals {
            op: "signalfd",
            source,
        }
    })?;

    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(sfd, sig_tx))
        .map_err(|source| WatchError::Thread {
            what: "signal".into(),
            source,
        })?;

    let fs_tx = tx.clone();
    let watcher = INotifyWatcher::new(
        move |ev: notify::Result<Event>| {
            // A closed channel means the daemon is shutting down.
            let _ = fs_tx.send(Msg::Fs(ev));
        },
        notify::Config::default(),
    )
    .map_err(|e| watch_error(None, e))?;

    // Half of `$WATCHDOG_USEC` (for this process), as sd_watchdog_enabled(3)
    // recommends; 0 means none.
    let watchdog = sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2);
    let fault_overflow = std::env::var(FAULT_ENV).is_ok_and(|v| v == "overflow");
    if fault_overflow {
        warn!("{FAULT_ENV}=overflow: every event is treated as an inotify queue overflow");
    }

    let root = cfg.queue_root.clone();
    let mut d = Daemon {
        cfg: Arc::new(Mutex::new(Arc::new(cfg))),
        opts: opts.clone(),
        runtime,
        tx,
        workers: BTreeMap::new(),
        watches: Watches {
            watcher,
            root,
            root_id: None,
            kinds: BTreeMap::new(),
            last_error: None,
        },
        notify_failed: std::cell::Cell::new(false),
        status: BTreeMap::new(),
        awaiting_first: BTreeSet::new(),
        ready: false,
        fault_overflow,
        next_worker_id: 0,
        retired: Vec::new(),
        view: Arc::new(Mutex::new(None)),
        follower: None,
    };
    d.follow_events();
    if !d.opts.restarts_only {
        // Directories first, so the watches can be placed before the first
        // sync; the sync would create them too, but a request queued
        // between that and the watch would wait for the next cue.
        d.prepare_dirs(&kinds);
        // Fatal at start-up: an operator watching the service start should
        // see a missing inotify limit at once, not a daemon that never
        // wakes.
        d.arm_strict(&kinds)?;
    }
    for &k in &kinds {
        d.start_worker(k)?;
    }
    info!("watching {}", list(&kinds));
    d.main_loop(&rx, watchdog)
}

/// The kinds to watch under `cfg`: `--kind`s or every enabled kind, each
/// with a usable profile.
fn kinds_of(cfg: &HostConfig, opts: &WatchOptions) -> Result<BTreeSet<Kind>, WatchError> {
    let kinds: BTreeSet<Kind> = if opts.kinds.is_empty() {
        cfg.enabled_kinds().into_iter().collect()
    } else {
        opts.kinds.iter().copied().collect()
    };
    if kinds.is_empty() {
        return Err(WatchError::NothingConfigured(cfg.path.clone()));
    }
    for &k in &kinds {
        cfg.profile(k)?;
    }
    Ok(kinds)
}

fn list(kinds: &BTreeSet<Kind>) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn signal_thread(sfd: SignalFd, tx: Sender<Msg>) {
    loop {
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if tx.send(Msg::Signal(sig)).is_err() {
                    return;
                }
            }
            Ok(None) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                error!("cannot read signals: {e}; SIGTERM and SIGHUP are no longer handled");
                return;
            }
        }
    }
}

/// `HH:MM:SS UTC` of a unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// One kind's part of the status line.
fn describe(r: &Report) -> String {
    match &r.result {
        Ok(s) => format!(
            "{} ok at {} (claimed {}, started {}, failed {})",
            r.kind,
            clock(r.at_ms),
            s.claimed,
            s.started + s.replaced,
            s.failed
        ),
        Err(full) => {
            let mut e: String = full.chars().take(STATUS_ERROR_CHARS).collect();
            if full.chars().count() > STATUS_ERROR_CHARS {
                e.push('…');
            }
            format!(
                "{} FAILED at {} ({} in a row, retry in {}s): {e}",
                r.kind,
                clock(r.at_ms),
                r.failures,
                r.retry_in.unwrap_or_default().as_secs()
            )
        }
    }
}

struct Daemon {
    cfg: SharedConfig,
    opts: WatchOptions,
    runtime: Arc<RuntimeFactory>,
    tx: Sender<Msg>,
    workers: BTreeMap<Kind, Worker>,
    watches: Watches,
    /// A notification could not be sent (said once; the daemon goes on).
    notify_failed: std::cell::Cell<bool>,
    /// The last sync of each kind, as shown in STATUS=.
    status: BTreeMap<Kind, String>,
    /// Kinds whose first sync has not finished: READY=1 waits for them.
    awaiting_first: BTreeSet<Kind>,
    ready: bool,
    fault_overflow: bool,
    next_worker_id: u64,
    /// Workers of kinds dropped by a reload, joined at shutdown.
    retired: Vec<JoinHandle<()>>,
    view: SharedView,
    /// Follows the engine's events of the configuration's instance.
    follower: Option<(String, Follower)>,
}

impl Daemon {
    /// Tells the service manager `states` (sd_notify(3), through the
    /// sd-notify crate; nothing when `$NOTIFY_SOCKET` is unset).
    fn notify(&self, states: &[State]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.notify_failed.replace(true)
        {
            warn!(
                "cannot notify the service manager at {:?}: {e}; going on without",
                std::env::var_os("NOTIFY_SOCKET").unwrap_or_default()
            );
        }
    }

    /// READY=1 with the status line.
    fn notify_ready(&self) {
        let line = self.status_line();
        self.notify(&[State::Ready, State::Status(&line)]);
    }

    fn kinds(&self) -> BTreeSet<Kind> {
        self.workers.keys().copied().collect()
    }

    fn status_line(&self) -> String {
        let mut s = format!("watching {}", list(&self.kinds()));
        if !self.ready {
            s.push_str("; first sync running");
        }
        let done: Vec<&str> = self
            .kinds()
            .iter()
            .filter_map(|k| self.status.get(k).map(String::as_str))
            .collect();
        if !done.is_empty() {
            s.push_str("; last sync: ");
            s.push_str(&done.join("; "));
        }
        s
    }

    /// Creates the queue directories (as the sync would) so they can be
    /// watched at once. Failures are left for the sync to report.
    fn prepare_dirs(&self, kinds: &BTreeSet<Kind>) {
        let cfg = current(&self.cfg);
        for &k in kinds {
            if let Err(e) = SharedDir::open(&cfg.queue_root, k, true, limits(&cfg)) {
                warn!(kind = %k, "{e}");
            }
        }
    }

    /// Arms every watch; any failure but a missing directory is an error.
    fn arm_strict(&mut self, kinds: &BTreeSet<Kind>) -> Result<(), WatchError> {
        self.watches.arm_root(false)?;
        for &k in kinds {
            self.watches.arm_kind(k, false)?;
        }
        Ok(())
    }

    /// Follows the engine's events for the configuration's instance (again,
    /// when a reload changed it): deaths cue restart passes, and the
    /// workers list from the view the events keep current.
    fn follow_events(&mut self) {
        let cfg = current(&self.cfg);
        if self
            .follower
            .as_ref()
            .is_some_and(|(i, _)| *i == cfg.instance)
        {
            return;
        }
        self.follower = None;
        // `--restarts-only` lists for its rare syncs: no view to keep.
        let view = (!self.opts.restarts_only).then(ContainerView::default);
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) =
            view.clone().map(|v| (cfg.instance.clone(), v));
        let runtime: Arc<dyn Runtime> = Arc::from((self.runtime)(&cfg));
        let cues = Arc::new(ChannelCues(Mutex::new(self.tx.clone())));
        match Follower::start(runtime, cfg.instance.clone(), view, cues) {
            Ok(f) => self.follower = Some((cfg.instance.clone(), f)),
            Err(e) => error!(
                "cannot start the thread that follows the engine's events: {e}; dead sidecars wait for the full reconcile"
            ),
        }
    }

    fn start_worker(&mut self, kind: Kind) -> Result<(), WatchError> {
        let cue = Cue::default();
        self.next_worker_id += 1;
        let id = self.next_worker_id;
        if self.opts.restarts_only {
            // Deaths while nobody followed the events.
            cue.restart();
        } else {
            // The first run drains what waited while no one watched, and
            // reconciles like the backstop's run at boot.
            cue.full();
        }
        let (cfg, runtime, tx, c, view) = (
            Arc::clone(&self.cfg),
            Arc::clone(&self.runtime),
            self.tx.clone(),
            cue.clone(),
            Arc::clone(&self.view),
        );
        let metrics = self
            .opts
            .metrics_file
            .clone()
            .map(|path| (path, self.opts.kinds.clone()));
        let handle = std::thread::Builder::new()
            .name(format!("sync-{kind}"))
            .spawn(move || {
                work(&c, sync::backoff_delay, |job, failures| {
                    let ran = run_job(kind, job, failures, &cfg, runtime.as_ref(), &tx, &c, &view);
                    if let (Some(ok), Some((path, kinds))) = (ran, &metrics) {
                        write_metrics(kind, path, kinds, &cfg, runtime.as_ref());
                        return ok;
                    }
                    ran.unwrap_or(true)
                });
                let _ = tx.send(Msg::WorkerDone(id));
            })
            .map_err(|source| WatchError::Thread {
                what: format!("sync worker for {kind}"),
                source,
            })?;
        self.awaiting_first.insert(kind);
        self.workers.insert(kind, Worker { id, cue, handle });
        Ok(())
    }

    /// Re-arms `kind`'s watch (`force`: even on a directory that looks
    /// armed, see [`Watches::arm_path`]) and has its queue looked at, for
    /// whatever was queued before the watch existed.
    fn rearm(&mut self, kind: Kind, force: bool) {
        let r = self.watches.arm_kind(kind, force);
        if self.watches.report(r) {
            debug!(kind = %kind, "queue directory changed; watch re-armed");
        }
        if let Some(w) = self.workers.get(&kind) {
            // Whatever was queued before the watch existed.
            w.cue.poke();
        }
    }

    /// Re-arms every watch and looks at every queue; `force` as in
    /// [`Self::rearm`] (only the retry timer, which fills gaps, does not).
    fn rescan_all(&mut self, force: bool) {
        if self.opts.restarts_only {
            return;
        }
        let r = self.watches.arm_root(force);
        if self.watches.report(r) {
            info!(
                "queue root {} changed; re-arming every watch",
                self.watches.root.display()
            );
        }
        for k in self.kinds() {
            self.rearm(k, force);
        }
        if self.watches.complete() {
            self.watches.last_error = None;
        }
    }

    fn on_event(&mut self, ev: notify::Result<Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                let e = watch_error(None, e);
                warn!("inotify reported an error: {e}; rescanning every queue");
                self.rescan_all(true);
                return;
            }
        };
        let mut actions = classify(&self.watches.root, &self.kinds(), &ev);
        if ev.need_rescan() {
            warn!("the inotify event queue overflowed; rescanning every queue");
        } else if self.fault_overflow && !actions.is_empty() {
            actions = vec![Action::RescanAll];
        }
        for a in actions {
            match a {
                Action::RescanAll => self.rescan_all(true),
                Action::Rearm(k) => self.rearm(k, true),
                Action::Check(k) => {
                    if let Some(w) = self.workers.get(&k) {
                        w.cue.poke();
                    }
                }
            }
        }
    }

    fn on_report(&mut self, r: Report) {
        self.status.insert(r.kind, describe(&r));
        self.awaiting_first.remove(&r.kind);
        if !self.ready && self.awaiting_first.is_empty() {
            self.ready = true;
            info!("ready: {}", self.status_line());
            self.notify_ready();
        } else {
            // Only runs that did something report (a cue that found nothing
            // pending does not), so this is not chatty.
            let line = self.status_line();
            self.notify(&[State::Status(&line)]);
        }
    }

    /// SIGHUP: a new configuration, or the old one if the new one is bad.
    fn reload(&mut self) {
        info!("SIGHUP: re-reading the configuration");
        // systemd 253 and later want the monotonic time with RELOADING=1.
        let mut reloading = vec![
            State::Reloading,
            State::Status("reloading the configuration"),
        ];
        if let Ok(now) = State::monotonic_usec_now() {
            reloading.push(now);
        }
        self.notify(&reloading);
        let old = current(&self.cfg);
        let loaded = HostConfig::load(&old.path, self.opts.explicit_config)
            .map_err(WatchError::from)
            .and_then(|c| kinds_of(&c, &self.opts).map(|k| (c, k)));
        let (new, kinds) = match loaded {
            Ok(v) => v,
            Err(e) => {
                error!("{e}; keeping the previous configuration");
                self.rescan_all(true);
                self.notify_ready();
                return;
            }
        };
        let root_moved = new.queue_root != old.queue_root;
        *self.cfg.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        for k in self.kinds().difference(&kinds).copied().collect::<Vec<_>>() {
            info!(kind = %k, "no longer watching {k}");
            if let Some(w) = self.workers.remove(&k) {
                // Joined at shutdown; it finishes the run in progress.
                w.cue.stop();
                self.retired.push(w.handle);
            }
            self.watches.disarm_kind(k);
            self.status.remove(&k);
            self.awaiting_first.remove(&k);
        }
        if root_moved {
            self.watches.disarm_all();
            self.watches.root = current(&self.cfg).queue_root.clone();
        }
        self.follow_events();
        if !self.opts.restarts_only {
            self.prepare_dirs(&kinds);
        }
        for &k in &kinds {
            if !self.workers.contains_key(&k) {
                info!(kind = %k, "now watching {k}");
                if let Err(e) = self.start_worker(k) {
                    error!("{e}");
                }
            } else {
                // Profiles may have changed: converge under the new ones,
                // and a sync that failed may work now.
                self.workers[&k].cue.retry_now();
            }
        }
        self.rescan_all(true);
        info!("configuration reloaded: watching {}", list(&self.kinds()));
        self.notify_ready();
    }

    fn main_loop(
        mut self,
        rx: &Receiver<Msg>,
        watchdog: Option<Duration>,
    ) -> Result<(), WatchError> {
        let interval = self.opts.interval.max(Duration::from_secs(1));
        let mut next_full = Instant::now() + interval;
        let mut health = Schedule::new(&current(&self.cfg), self.kinds(), Instant::now());
        let mut next_ping = watchdog.map(|_| Instant::now());
        let mut stopping = false;
        loop {
            let now = Instant::now();
            if let (Some(at), Some(every)) = (next_ping, watchdog)
                && now >= at
            {
                self.notify(&[State::Watchdog]);
                next_ping = Some(now + every);
            }
            if !stopping && now >= next_full && !self.opts.restarts_only {
                debug!("periodic full reconcile");
                self.rescan_all(true);
                for w in self.workers.values() {
                    w.cue.full();
                }
                next_full = now + interval;
            }
            for k in health.due(now) {
                if let Some(w) = self.workers.get(&k).filter(|_| !stopping) {
                    debug!(kind = %k, "health round");
                    w.cue.health();
                }
            }
            if stopping && self.workers.is_empty() {
                break;
            }
            let mut wake = next_ping.into_iter().collect::<Vec<_>>();
            if !stopping {
                wake.push(next_full);
                wake.extend(health.next_due());
                if !self.watches.complete() && !self.opts.restarts_only {
                    wake.push(now + REARM_RETRY);
                }
            }
            let timeout = wake
                .into_iter()
                .min()
                .map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(now)
                });
            match rx.recv_timeout(timeout) {
                Ok(Msg::Fs(ev)) if !stopping => self.on_event(ev),
                Ok(Msg::Fs(_)) => {}
                Ok(Msg::Signal(Signal::SIGHUP)) if !stopping => {
                    self.reload();
                    health = Schedule::new(&current(&self.cfg), self.kinds(), Instant::now());
                }
                Ok(Msg::Signal(sig)) => {
                    if stopping {
                        info!("{sig}: still finishing the sync in progress");
                        continue;
                    }
                    info!("{sig}: stopping once the sync in progress finishes");
                    stopping = true;
                    self.notify(&[
                        State::Stopping,
                        State::Status("stopping: finishing the sync in progress"),
                    ]);
                    self.watches.disarm_all();
                    for w in self.workers.values() {
                        w.cue.stop();
                    }
                }
                Ok(Msg::Synced(r)) => self.on_report(r),
                Ok(Msg::Died(kind)) if !stopping => {
                    if let Some(w) = self.workers.get(&kind) {
                        w.cue.restart();
                    }
                }
                Ok(Msg::EventsDoubt) if !stopping => {
                    for w in self.workers.values() {
                        w.cue.restart();
                    }
                }
                Ok(Msg::Died(_) | Msg::EventsDoubt) => {}
                Ok(Msg::WorkerDone(id)) => {
                    if let Some(k) = self
                        .workers
                        .iter()
                        .find(|(_, w)| w.id == id)
                        .map(|(k, _)| *k)
                        && let Some(w) = self.workers.remove(&k)
                    {
                        // Only a stopped worker ends; its last run is over.
                        let _ = w.handle.join();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !stopping && !self.watches.complete() && !self.opts.restarts_only {
                        self.rescan_all(false);
                    }
                }
                // Every sender lives in this struct or in a thread it owns.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for h in self.retired.drain(..) {
            let _ = h.join();
        }
        info!("stopped");
        Ok(())
    }
}

fn limits(cfg: &HostConfig) -> Limits {
    Limits {
        max_queue_bytes: cfg.max_queue_bytes,
        lock_timeout: cfg.lock_timeout,
        ..Limits::default()
    }
}

/// Whether `kind`'s queue has anything for a sync. A directory that cannot
/// be opened counts as pending: the sync then says what is wrong with it.
fn queue_pending(cfg: &HostConfig, kind: Kind) -> bool {
    match SharedDir::open(&cfg.queue_root, kind, false, limits(cfg)) {
        Ok(dir) => dir.is_pending(),
        Err(_) => true,
    }
}

/// `--metrics-file`: the status report of the watched kinds (every enabled
/// one when none was named), after `kind`'s sync. Each worker writes the
/// whole file through its own temporary name, so parallel writers leave one
/// complete file, the last one's. A failure is logged; the watch goes on.
fn write_metrics(
    kind: Kind,
    path: &Path,
    kinds: &[Kind],
    cfg: &SharedConfig,
    runtime: &RuntimeFactory,
) {
    let cfg = current(cfg);
    let rt = runtime(&cfg);
    let written = crate::host::status::report(&cfg, rt.as_ref(), kinds)
        .map_err(|e| e.to_string())
        .and_then(|rep| {
            crate::host::metrics::write(path, &rep, kind.as_str())
                .map_err(|e| format!("{} {}: {}", e.op, e.path.display(), e.source))
        });
    if let Err(e) = written {
        warn!(kind = %kind, "cannot write the metrics file {}: {e}", path.display());
    }
}

/// One worker run: the pending check, then the ordinary sync of one kind,
/// reported to the main loop. `None` when nothing was pending, else whether
/// the sync succeeded.
#[allow(clippy::too_many_arguments)]
fn run_job(
    kind: Kind,
    job: Job,
    failures: u32,
    cfg: &SharedConfig,
    runtime: &RuntimeFactory,
    tx: &Sender<Msg>,
    cue: &Cue,
    view: &SharedView,
) -> Option<bool> {
    let cfg = current(cfg);
    if !job.forced && !queue_pending(&cfg, kind) {
        debug!(kind = %kind, "nothing pending");
        return None;
    }
    // The same sync, listing from the view the engine's events keep
    // current when there is one for this configuration.
    let rt = match view.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        Some((instance, view)) if instance == cfg.instance => Box::new(Viewed {
            inner: Arc::from(runtime(&cfg)),
            view,
            instance,
        }) as Box<dyn Runtime>,
        _ => runtime(&cfg),
    };
    let ns = HostNamespaces(cfg.netns_dir.clone());
    let opts = SyncOptions {
        kinds: vec![kind],
        full: job.full,
        health: job.health,
        restart: job.restart,
        ..SyncOptions::default()
    };
    let started = Instant::now();
    let result = match sync::run(&cfg, rt.as_ref(), &ns, &opts) {
        Ok(s) if s.errors.is_empty() => Ok(s),
        Ok(s) => Err(s
            .errors
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")),
        Err(e) => Err(e.to_string()),
    };
    if let Ok(s) = &result
        && let Some(at) = s.next_restart_ms
    {
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        debug!(kind = %kind, "a restart held back by the back-off is due in {wait:?}");
        cue.restart_at(Instant::now() + wait);
    }
    let (failures, retry_in) = match &result {
        Ok(s) => {
            if s.claimed > 0 || job.full || s.restarts > 0 {
                info!(kind = %kind, "{s} in {:?}", started.elapsed());
            } else {
                debug!(kind = %kind, "{s} in {:?}", started.elapsed());
            }
            (0, None)
        }
        Err(e) => {
            let failures = failures.saturating_add(1);
            let delay = sync::backoff_delay(failures);
            error!(
                kind = %kind,
                "sync failed ({failures} in a row): {e}; retrying in {delay:?}, still watching"
            );
            (failures, Some(delay))
        }
    };
    let ok = result.is_ok();
    let _ = tx.send(Msg::Synced(Report {
        kind,
        result,
        failures,
        retry_in,
        at_ms: now_ms(),
    }));
    Some(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The kernel dropped a kind directory's watch (its directory was
    /// deleted) while a directory of the same identity has the name again
    /// (a freed inode reused before the daemon read the events): an event
    /// about the name must still place a new watch, or nothing queued in
    /// the new directory is seen until the next full reconcile.
    #[test]
    fn an_event_rearms_a_directory_that_looks_armed() {
        let root = std::env::temp_dir().join(format!(
            "sidespawn-watch-{}",
            crate::shared::record::new_id(0)
        ));
        let kind_dir = root.join("dnsmasq");
        std::fs::create_dir_all(&kind_dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = INotifyWatcher::new(
            move |e: notify::Result<Event>| {
                let _ = tx.send(e);
            },
            notify::Config::default(),
        )
        .unwrap();
        let mut w = Watches {
            watcher,
            root: root.clone(),
            root_id: None,
            kinds: BTreeMap::new(),
            last_error: None,
        };
        assert!(w.arm_kind(Kind::Dnsmasq, false).unwrap());
        // The kernel's watch is gone; the recorded identity still matches.
        w.watcher.unwatch(&kind_dir).unwrap();
        // Whether a write into the directory reaches the watcher within `wait`.
        let sees_a_write = |rx: &Receiver<notify::Result<Event>>, name: &str, wait: Duration| {
            while rx.try_recv().is_ok() {}
            std::fs::write(kind_dir.join(name), b"x").unwrap();
            let until = Instant::now() + wait;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(Ok(ev)) if ev.paths.iter().any(|p| p.ends_with(name)) => return true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            false
        };
        // The retry timer's look trusts the identity...
        assert!(!w.arm_kind(Kind::Dnsmasq, false).unwrap());
        assert!(!sees_a_write(&rx, "before", Duration::from_secs(1)));
        // ...an event about the name does not.
        assert!(!w.arm_kind(Kind::Dnsmasq, true).unwrap());
        assert!(sees_a_write(&rx, "after", Duration::from_secs(30)));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn kinds() -> BTreeSet<Kind> {
        [Kind::Dnsmasq, Kind::Haproxy].into_iter().collect()
    }

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn events_are_classified_as_cues() {
        use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        let root = Path::new("/q");
        let k = kinds();
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        // The wrapper's last step: closing the lock file it unlocked.
        assert_eq!(
            classify(root, &k, &ev(closed, "/q/dnsmasq/lock")),
            [Action::Check(Kind::Dnsmasq)]
        );
        assert_eq!(
            classify(
                root,
                &k,
                &ev(
                    EventKind::Remove(RemoveKind::File),
                    "/q/dnsmasq/queue.jsonl"
                )
            ),
            [Action::Check(Kind::Dnsmasq)]
        );
        assert_eq!(
            classify(
                root,
                &k,
                &ev(EventKind::Create(CreateKind::File), "/q/haproxy/pending")
            ),
            [Action::Check(Kind::Haproxy)]
        );
        // Writes under the lock (the lock's close follows), acknowledging,
        // opening.
        for (kind, path) in [
            (data, "/q/dnsmasq/queue.jsonl"),
            (closed, "/q/dnsmasq/timestamp"),
            (
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                "/q/dnsmasq/timestamp",
            ),
            (EventKind::Create(CreateKind::Folder), "/q/dnsmasq/acks"),
            (closed, "/q/dnsmasq/acks"),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/q/dnsmasq/queue.jsonl",
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/q/dnsmasq",
            ),
            (closed, "/q/radvd/lock"),
            (closed, "/elsewhere/dnsmasq/lock"),
            (EventKind::Create(CreateKind::File), "/q/stray"),
        ] {
            assert!(
                classify(root, &k, &ev(kind, path)).is_empty(),
                "{kind:?} {path}"
            );
        }
        // The kind directory itself: renamed away, deleted, created.
        for kind in [
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(RemoveKind::Folder),
            EventKind::Create(CreateKind::Folder),
        ] {
            assert_eq!(
                classify(root, &k, &ev(kind, "/q/dnsmasq")),
                [Action::Rearm(Kind::Dnsmasq)]
            );
        }
        assert_eq!(
            classify(root, &k, &ev(EventKind::Remove(RemoveKind::Folder), "/q")),
            [Action::RescanAll]
        );
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(root, &k, &overflow), [Action::RescanAll]);
    }

    #[test]
    fn limit_errors_name_the_sysctl() {
        let e = watch_error(
            Some(Path::new("/q/dnsmasq")),
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
        )
        .to_string();
        assert!(
            e.contains("fs.inotify.max_user_watches") && e.contains("/q/dnsmasq"),
            "{e}"
        );
        let e = watch_error(
            None,
            notify::Error::io(std::io::Error::from_raw_os_error(nix::libc::EMFILE)),
        )
        .to_string();
        assert!(e.contains("fs.inotify.max_user_instances"), "{e}");
        let e = watch_error(
            Some(Path::new("/q")),
            notify::Error::io(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)),
        )
        .to_string();
        assert!(e.contains("fs.inotify.max_user_watches"), "{e}");
        let e = watch_error(
            Some(Path::new("/q")),
            notify::Error::io(std::io::Error::from_raw_os_error(nix::libc::EACCES)),
        )
        .to_string();
        assert!(e.contains("/q") && !e.contains("sysctl"), "{e}");
    }

    /// A worker on a fake sync that takes `run_time` and counts its runs.
    struct Harness {
        cue: Cue,
        runs: Arc<AtomicUsize>,
        jobs: Arc<Mutex<Vec<(Job, Instant)>>>,
        handle: Option<JoinHandle<()>>,
    }

    impl Harness {
        fn start(run_time: Duration, fail: bool, backoff: Duration) -> Harness {
            let cue = Cue::default();
            let runs = Arc::new(AtomicUsize::new(0));
            let jobs = Arc::new(Mutex::new(Vec::new()));
            let (c, r, j) = (cue.clone(), Arc::clone(&runs), Arc::clone(&jobs));
            let handle = std::thread::spawn(move || {
                work(
                    &c,
                    |_| backoff,
                    |job, _| {
                        j.lock().unwrap().push((job, Instant::now()));
                        std::thread::sleep(run_time);
                        r.fetch_add(1, Ordering::SeqCst);
                        !fail
                    },
                )
            });
            Harness {
                cue,
                runs,
                jobs,
                handle: Some(handle),
            }
        }

        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }

        fn started(&self) -> usize {
            self.jobs.lock().unwrap().len()
        }

        fn wait_runs(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.runs() < n {
                assert!(Instant::now() < deadline, "only {} runs", self.runs());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.cue.stop();
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    #[test]
    fn a_lone_event_syncs_once_at_once() {
        let h = Harness::start(Duration::ZERO, false, Duration::ZERO);
        let t = Instant::now();
        h.cue.poke();
        h.wait_runs(1);
        // No debounce: far below any timer a debounce would use.
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.runs(), 1);
        assert_eq!(
            h.jobs.lock().unwrap()[0].0,
            Job {
                full: false,
                forced: false,
                health: false,
                restart: false,
            }
        );
    }

    #[test]
    fn a_death_runs_a_restart_pass_and_a_back_off_is_a_timer() {
        let h = Harness::start(Duration::ZERO, false, Duration::ZERO);
        h.cue.restart();
        h.wait_runs(1);
        assert_eq!(
            h.jobs.lock().unwrap()[0].0,
            Job {
                full: false,
                forced: true,
                health: false,
                restart: true,
            }
        );
        let t = Instant::now();
        h.cue.restart_at(t + Duration::from_millis(300));
        // A later deadline does not postpone the earlier one.
        h.cue.restart_at(t + Duration::from_secs(3600));
        h.wait_runs(2);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "ran before its time"
        );
        assert!(h.jobs.lock().unwrap()[1].0.restart);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.runs(), 2, "the timer fires once");
    }

    #[test]
    fn a_thousand_events_during_a_slow_sync_make_one_more_run() {
        let h = Harness::start(Duration::from_millis(300), false, Duration::ZERO);
        h.cue.poke();
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.started() < 1 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..1000 {
            h.cue.poke();
        }
        h.wait_runs(2);
        std::thread::sleep(Duration::from_millis(700));
        let runs = h.runs();
        assert!((2..=3).contains(&runs), "{runs} runs for 1001 events");
    }

    #[test]
    fn a_failing_sync_backs_off_instead_of_spinning() {
        let backoff = Duration::from_secs(1);
        let h = Harness::start(Duration::ZERO, true, backoff);
        h.cue.poke();
        h.wait_runs(1);
        // Events keep coming; the worker still waits out its back-off.
        for _ in 0..100 {
            h.cue.poke();
        }
        std::thread::sleep(Duration::from_millis(300));
        h.cue.poke();
        assert_eq!(h.runs(), 1, "retried during the back-off");
        h.wait_runs(2);
        let jobs = h.jobs.lock().unwrap();
        let gap = jobs[1].1 - jobs[0].1;
        assert!(gap >= backoff, "{gap:?}");
        // The retry runs even if the queue looks idle: the journal may hold
        // claimed requests.
        assert!(jobs[1].0.forced);
        drop(jobs);
        // A reload ends the back-off at once.
        h.wait_runs(2);
        let t = Instant::now();
        h.cue.retry_now();
        h.wait_runs(3);
        assert!(t.elapsed() < backoff, "{:?}", t.elapsed());
    }

    #[test]
    fn full_runs_are_forced_and_stop_ends_the_worker() {
        let mut h = Harness::start(Duration::ZERO, false, Duration::ZERO);
        h.cue.full();
        h.wait_runs(1);
        assert_eq!(
            h.jobs.lock().unwrap()[0].0,
            Job {
                full: true,
                forced: true,
                health: false,
                restart: false,
            }
        );
        h.cue.stop();
        let handle = h.handle.take().unwrap();
        handle.join().unwrap();
        h.cue.poke();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.runs(), 1);
    }

    #[test]
    fn status_line_parts() {
        let r = Report {
            kind: Kind::Dnsmasq,
            result: Ok(Summary {
                claimed: 3,
                started: 2,
                ..Summary::default()
            }),
            failures: 0,
            retry_in: None,
            at_ms: 3_723_000,
        };
        assert_eq!(
            describe(&r),
            "dnsmasq ok at 01:02:03 UTC (claimed 3, started 2, failed 0)"
        );
        let r = Report {
            result: Err("podman: not found\nsecond line".into()),
            failures: 2,
            retry_in: Some(Duration::from_secs(2)),
            ..r
        };
        let d = describe(&r);
        assert!(d.starts_with("dnsmasq FAILED at 01:02:03 UTC (2 in a row, retry in 2s): podman"));
    }
}
