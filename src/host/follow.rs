//! Following the engine's container events: the view of one
//! configuration's containers kept current from the event stream, and the
//! cue that a sidecar died.
//!
//! [`Follower`] runs one thread per configuration that reads
//! [`Runtime::events`]. Each event updates the [`ContainerView`], and a
//! `died` of a sidecar calls the `on_death` cue with its kind. Like the
//! queue watch, **an event is only a cue**: what happens after a death is
//! decided by the ordinary sync from the desired table and the restart
//! policy (an intentional stop has already taken the sidecar out of the
//! desired table before its container was stopped, so its `died` finds
//! nothing to restart).
//!
//! [`Viewed`] is a [`Runtime`] whose `list` is answered from the view when
//! the view can be trusted, and which records its own `run`/`stop`/`remove`
//! in the view: the sync pipeline is the same one, it only gets its
//! container list from another source. The view is not trusted — and
//! `list` asks the engine, which refreshes it — when:
//!
//! * no stream is connected (not yet, or it ended or failed: an engine
//!   restart), or the stream was (re)started after the last listing,
//!   since events before a subscription are not in it;
//! * an event could not be read (a gap);
//! * a container started that the view cannot account for and could not
//!   be inspected;
//! * the caller resolves pids (a batch holding a kill request: `list`)
//!   and a running container's pid is not known yet.
//!
//! A sidecar our own `run` starts is recorded from that call's result,
//! without its pid: the engine reports no pid in its events, and learning
//! each one would cost an inspection per start, competing with the starts
//! of a burst for the engine. Only kill requests resolve pids, so a batch
//! of starts lists through [`Runtime::list_without_pids`] and is answered
//! from the view; a batch with a kill request lists through `list`, which
//! asks the engine (and so learns every pid) when one is missing. The
//! `start` event of a run still underway is left to that run's result;
//! a `died` or `remove` event that arrives before the result is kept and
//! applied to it.
//!
//! Invariant: the view never holds a container the engine did not report
//! or that a successful call of ours did not make; every doubt falls back
//! to a listing, so a wrong view costs one `podman ps`, never a wrong plan.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::host::runtime::{
    Call, ContainerEvent, ContainerInfo, EventAction, Events, Inspected, RunSpec, Runtime,
    RuntimeError, SidecarLabels, State,
};
use crate::shared::kind::Kind;
use crate::shared::record::Signal;

/// Wait before subscribing again after the stream failed or ended, doubled
/// up to [`RECONNECT_MAX`] while it keeps failing.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct ViewState {
    /// By container name.
    containers: BTreeMap<String, ContainerInfo>,
    /// A stream is connected and the listing was taken after it started.
    trusted: bool,
    /// A stream is connected.
    connected: bool,
    /// Names our own `run` calls are starting, with the `died`/`remove`
    /// events that arrived for them meanwhile (applied to the result).
    in_flight: BTreeMap<String, Vec<ContainerEvent>>,
}

/// One configuration's containers as last listed and updated since.
#[derive(Debug, Clone, Default)]
pub struct ContainerView(Arc<(Mutex<ViewState>, Condvar)>);

impl ContainerView {
    fn state(&self) -> MutexGuard<'_, ViewState> {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The containers, if the view can stand in for a listing now. With
    /// `pids`, only while every running container's pid is known; without,
    /// a running container whose pid the view has not learnt has pid 0.
    pub fn current(&self, pids: bool) -> Option<Vec<ContainerInfo>> {
        let st = self.state();
        let pid_missing = pids
            && st
                .containers
                .values()
                .any(|c| c.state == State::Running && c.pid == 0);
        (st.trusted && st.connected && !pid_missing)
            .then(|| st.containers.values().cloned().collect())
    }

    /// A fresh listing: the view becomes exactly it, trusted while the
    /// stream stays connected.
    pub fn replace(&self, listed: &[ContainerInfo]) {
        let mut st = self.state();
        st.containers = listed.iter().map(|c| (c.name.clone(), c.clone())).collect();
        st.trusted = st.connected;
    }

    /// Distrusts the view until the next listing.
    pub fn doubt(&self, why: &str) {
        let mut st = self.state();
        if st.trusted {
            debug!("container view needs a listing: {why}");
        }
        st.trusted = false;
    }

    fn set_connected(&self, connected: bool) {
        let mut st = self.state();
        st.connected = connected;
        // Events before the subscription are not in the stream.
        st.trusted = false;
        drop(st);
        self.0.1.notify_all();
    }

    /// Waits until a stream is connected, at most `timeout`. True if it is.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let st = self.state();
        let (st, _) = self
            .0
            .1
            .wait_timeout_while(st, timeout, |s| !s.connected)
            .unwrap_or_else(|p| p.into_inner());
        st.connected
    }

    /// Our own `run` of `name` is about to start.
    fn starting(&self, name: &str) {
        self.state().in_flight.insert(name.to_owned(), Vec::new());
    }

    /// A container our own successful call started (`id` from `podman
    /// run`), running with its pid unknown, then the `died`/`remove`
    /// events that arrived for it while the call ran.
    fn ran(&self, spec: &RunSpec, id: &str) {
        let mut st = self.state();
        let late = st.in_flight.remove(&spec.name).unwrap_or_default();
        // A listing taken meanwhile may already hold it.
        if !st
            .containers
            .get(&spec.name)
            .is_some_and(|c| same_id(&c.id, id))
        {
            st.containers.insert(
                spec.name.clone(),
                ContainerInfo {
                    id: id.to_owned(),
                    name: spec.name.clone(),
                    state: State::Running,
                    pid: 0,
                    image: spec.image.clone(),
                    labels: spec.labels.clone(),
                    started_at: 0,
                    exit_code: 0,
                },
            );
        }
        for ev in &late {
            ended(&mut st, ev);
        }
    }

    /// Our own `run` of `name` failed: the engine may hold anything under
    /// the name now, so the next listing asks it.
    fn run_failed(&self, name: &str, why: &str) {
        self.state().in_flight.remove(name);
        self.doubt(why);
    }

    fn stopped(&self, name: &str) {
        if let Some(c) = self.state().containers.get_mut(name) {
            c.state = State::Exited;
            c.pid = 0;
        }
    }

    fn removed(&self, name: &str) {
        self.state().containers.remove(name);
    }

    /// The entry of `ev`'s container, if the view holds that very one.
    fn known(&self, ev: &ContainerEvent) -> bool {
        self.state()
            .containers
            .get(&ev.name)
            .is_some_and(|c| same_id(&c.id, &ev.id))
    }

    /// Applies one event; `runtime` inspects a container that started
    /// and that the view cannot account for.
    fn apply(&self, ev: &ContainerEvent, runtime: &dyn Runtime) {
        let mut st = self.state();
        match &ev.action {
            EventAction::Started => {
                if let Some(c) = st.containers.get_mut(&ev.name)
                    && same_id(&c.id, &ev.id)
                {
                    // Started again (its pid, if it changed, is learnt by
                    // the next listing that needs it).
                    if c.state != State::Running {
                        c.state = State::Running;
                        c.pid = 0;
                    }
                    return;
                }
                if st.in_flight.contains_key(&ev.name) {
                    // Our own run, still underway: its result records it.
                    return;
                }
                drop(st);
                // Who started it, and its pid: the engine's own record.
                match runtime.inspect_container(&ev.name) {
                    Ok(c) if same_id(&c.id, &ev.id) => {
                        self.state().containers.insert(c.name.clone(), c);
                    }
                    Ok(_) => self.doubt("a container started under a name now held by another"),
                    Err(RuntimeError::NoSuchContainer(_)) => {
                        // Gone again already: its removal event follows.
                    }
                    Err(e) => self.doubt(&format!("cannot inspect {}: {e}", ev.name)),
                }
            }
            EventAction::Died { .. } | EventAction::Removed => {
                let held = st
                    .containers
                    .get(&ev.name)
                    .is_some_and(|c| same_id(&c.id, &ev.id));
                match st.in_flight.get_mut(&ev.name) {
                    Some(late) if !held => late.push(ev.clone()),
                    _ => ended(&mut st, ev),
                }
            }
            EventAction::Other(_) => {}
        }
    }
}

/// Applies a `died` or `remove` event to the container it names, if the
/// view holds that very one.
fn ended(st: &mut ViewState, ev: &ContainerEvent) {
    let Some(c) = st.containers.get_mut(&ev.name) else {
        return;
    };
    if !same_id(&c.id, &ev.id) {
        return;
    }
    match ev.action {
        EventAction::Died { exit_code } => {
            c.state = State::Exited;
            c.pid = 0;
            c.exit_code = exit_code.unwrap_or(c.exit_code);
        }
        EventAction::Removed => {
            st.containers.remove(&ev.name);
        }
        _ => {}
    }
}

/// Whether two container ids name the same container (one may be short).
fn same_id(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && (a.starts_with(b) || b.starts_with(a))
}

/// A runtime whose listing comes from a [`ContainerView`] when it can be
/// trusted and whose own changes are recorded there; everything else is
/// the inner runtime's.
pub struct Viewed {
    pub inner: Arc<dyn Runtime>,
    pub view: ContainerView,
    pub instance: String,
}

impl Viewed {
    /// The view when it can stand in for a listing (see
    /// [`ContainerView::current`]); otherwise the engine's listing, which
    /// then becomes the view.
    fn listed(&self, instance: &str, pids: bool) -> Result<Vec<ContainerInfo>, RuntimeError> {
        if instance == self.instance
            && let Some(cs) = self.view.current(pids)
        {
            return Ok(cs);
        }
        let listed = self.inner.list(instance)?;
        if instance == self.instance {
            self.view.replace(&listed);
        }
        Ok(listed)
    }
}

impl Runtime for Viewed {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.listed(instance, true)
    }
    fn list_without_pids(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.listed(instance, false)
    }
    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.list_unlabelled()
    }
    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        self.view.starting(&spec.name);
        let r = self.inner.run(spec);
        match &r {
            Ok(id) => self.view.ran(spec, id),
            // Someone holds the name: the view did not know them.
            Err(RuntimeError::NameInUse(_)) => {
                self.view.run_failed(&spec.name, "a name was in use")
            }
            Err(_) => self.view.run_failed(&spec.name, "a start failed"),
        }
        r
    }
    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.inner.kill(name, signal)
    }
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let r = self.inner.stop(name, timeout);
        match &r {
            Ok(()) => self.view.stopped(name),
            Err(RuntimeError::NoSuchContainer(_)) => self.view.removed(name),
            Err(_) => self.view.doubt("a stop failed"),
        }
        r
    }
    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let r = self.inner.remove(name);
        match &r {
            Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => self.view.removed(name),
            Err(_) => self.view.doubt("a removal failed"),
        }
        r
    }
    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        self.inner.inspect(name)
    }
    fn describe(&self, call: &Call) -> String {
        self.inner.describe(call)
    }
    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        self.inner.logs(name, follow)
    }
    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.inner.exec_check(name, argv, timeout)
    }
    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        self.inner.events(instance)
    }
    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        self.inner.ensure_image(image, pull)
    }
    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.inner.probe_image(image, argv, timeout)
    }
}

/// What the follower tells its owner.
pub trait Cues: Send + Sync {
    /// A sidecar of `kind` died (or may have: the stream was restarted and
    /// deaths may have been missed meanwhile, `kind` is then every kind).
    fn died(&self, kind: Kind);
    /// The stream (re)connected: deaths while nobody followed may have
    /// been missed; every kind should look.
    fn reconnected(&self);
}

/// The thread following one configuration's events. Dropping it stops the
/// thread at its next event or reconnection (the stream is owned by the
/// thread; the engine's next event, or the reconnect wait, ends it).
pub struct Follower {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following `instance`'s events on `runtime`, keeping `view`
    /// current (when there is one: without, no container is inspected)
    /// and calling `cues`.
    pub fn start(
        runtime: Arc<dyn Runtime>,
        instance: String,
        view: Option<ContainerView>,
        cues: Arc<dyn Cues>,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("engine-events".to_owned())
            .spawn(move || {
                follow(
                    runtime.as_ref(),
                    &instance,
                    view.as_ref(),
                    cues.as_ref(),
                    &s,
                )
            })?;
        Ok(Follower {
            stop,
            handle: Some(handle),
        })
    }

    /// Asks the thread to end; it does at its next event or wait.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
        // Not joined: a quiet stream can block the thread for as long as
        // no event comes; it holds nothing but the subscription.
        drop(self.handle.take());
    }
}

/// The follower's loop: subscribe, apply events, re-subscribe on failure.
fn follow(
    runtime: &dyn Runtime,
    instance: &str,
    view: Option<&ContainerView>,
    cues: &dyn Cues,
    stop: &AtomicBool,
) {
    let mut wait = RECONNECT_MIN;
    let mut said_failing = false;
    while !stop.load(Ordering::SeqCst) {
        let events = match runtime.events(instance) {
            Ok(ev) => ev,
            Err(e) => {
                if !said_failing {
                    warn!(
                        "cannot follow the engine's events: {e}; sidecars that die are restarted by the next full sync only, retrying in {wait:?}"
                    );
                    said_failing = true;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if said_failing {
            info!("following the engine's events again");
            said_failing = false;
        }
        if let Some(v) = view {
            v.set_connected(true);
        }
        cues.reconnected();
        let ended_cleanly = drain(events, runtime, view, cues, stop);
        if let Some(v) = view {
            v.set_connected(false);
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if ended_cleanly {
            // The engine ended the stream (a daemon restart): at once.
            info!("the engine's event stream ended; subscribing again");
            wait = RECONNECT_MIN;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Applies a stream's events until it ends (true) or fails (false).
fn drain(
    events: Events,
    runtime: &dyn Runtime,
    view: Option<&ContainerView>,
    cues: &dyn Cues,
    stop: &AtomicBool,
) -> bool {
    for item in events {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        match item {
            Ok(ev) => {
                if let Some(view) = view {
                    if matches!(ev.action, EventAction::Died { .. } | EventAction::Removed)
                        && !view.known(&ev)
                    {
                        debug!(container = %ev.name, "event for a container the view does not hold");
                    }
                    view.apply(&ev, runtime);
                }
                if let EventAction::Died { exit_code } = ev.action {
                    let kind = SidecarLabels::of_labels(&ev.labels)
                        .kind()
                        .and_then(|k| k.parse::<Kind>().ok());
                    debug!(container = %ev.name, ?exit_code, "sidecar died");
                    match kind {
                        Some(k) => cues.died(k),
                        None => cues.reconnected(),
                    }
                }
            }
            Err(RuntimeError::Parse { message, .. }) => {
                warn!("unreadable engine event ({message}); re-listing containers");
                if let Some(view) = view {
                    view.doubt("an unreadable event");
                }
                cues.reconnected();
            }
            Err(e) => {
                warn!("the engine's event stream failed: {e}");
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::{FakeRuntime, labels};
    use std::time::Instant;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Cues for Seen {
        fn died(&self, kind: Kind) {
            self.0.lock().unwrap().push(format!("died {kind}"));
        }
        fn reconnected(&self) {
            self.0.lock().unwrap().push("reconnected".to_owned());
        }
    }

    fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A follower of `instance` on `fake` keeping a view, connected, and
    /// the runtime that lists from that view.
    fn followed(
        fake: &Arc<FakeRuntime>,
        instance: &str,
        cues: Arc<Seen>,
    ) -> (Follower, ContainerView, Viewed) {
        let view = ContainerView::default();
        let f =
            Follower::start(fake.clone(), instance.to_owned(), Some(view.clone()), cues).unwrap();
        assert!(view.wait_connected(Duration::from_secs(10)));
        let rt = Viewed {
            inner: fake.clone(),
            view: view.clone(),
            instance: instance.to_owned(),
        };
        (f, view, rt)
    }

    fn lists(fake: &FakeRuntime) -> usize {
        fake.calls()
            .iter()
            .filter(|c| matches!(c, Call::List(_)))
            .count()
    }

    #[test]
    fn the_view_stands_in_for_listings_and_every_doubt_lists_again() {
        let kind = (labels::KIND, "dnsmasq");
        let fake = Arc::new(FakeRuntime::new(vec![FakeRuntime::container(
            "a",
            State::Running,
            &[kind],
        )]));
        let instance = SidecarLabels::of(&fake.containers()[0])
            .instance()
            .unwrap()
            .to_owned();
        let seen = Arc::new(Seen::default());
        let (_f, view, rt) = followed(&fake, &instance, seen.clone());
        assert_eq!(rt.list(&instance).unwrap().len(), 1);
        assert_eq!(rt.list(&instance).unwrap().len(), 1);
        assert_eq!(lists(&fake), 1, "the second listing came from the view");

        // A death reaches the view and the cue, without a listing.
        assert!(fake.die("a", 137));
        wait("the death cue", || {
            seen.0.lock().unwrap().iter().any(|s| s == "died dnsmasq")
        });
        let a = rt.list(&instance).unwrap();
        assert_eq!((a[0].state.clone(), a[0].pid), (State::Exited, 0));
        assert_eq!(lists(&fake), 1);

        // Our own start: known at once, trusted once its pid is known.
        let mut spec = crate::host::runtime::RunSpec {
            name: "b".to_owned(),
            image: "i".to_owned(),
            labels: fake.containers()[0].labels.clone(),
            ..Default::default()
        };
        spec.labels.insert(labels::KEY.to_owned(), "k".to_owned());
        rt.run(&spec).unwrap();
        let b = rt.list_without_pids(&instance).unwrap();
        let b = b.iter().find(|c| c.name == "b").unwrap();
        assert_eq!((b.state.clone(), b.pid), (State::Running, 0));
        assert_eq!(lists(&fake), 1, "a batch of starts needs no pid");
        // A batch with a kill request needs b's pid: the engine is asked.
        let b = rt.list(&instance).unwrap();
        let b = b.iter().find(|c| c.name == "b").unwrap();
        assert_eq!((b.state.clone(), b.pid), (State::Running, 10000));
        assert_eq!(lists(&fake), 2);
        rt.remove("a").unwrap();
        assert_eq!(rt.list(&instance).unwrap().len(), 1);
        assert_eq!(lists(&fake), 2);
        assert!(
            !fake.calls().iter().any(|c| matches!(c, Call::Inspect(_))),
            "our own start is never inspected"
        );

        // A gap (an unreadable event) makes the next listing real.
        fake.inject_event(Err(RuntimeError::Parse {
            args: "events".to_owned(),
            message: "garbage".to_owned(),
        }));
        wait("the doubt", || view.current(false).is_none());
        rt.list(&instance).unwrap();
        assert_eq!(lists(&fake), 3);

        // The stream ends (an engine restart): subscribed again, every kind
        // cued, and the view listed afresh.
        let before = seen.0.lock().unwrap().len();
        fake.end_events();
        wait("a new subscription", || {
            seen.0.lock().unwrap()[before..]
                .iter()
                .any(|s| s == "reconnected")
                && view.wait_connected(Duration::ZERO)
        });
        rt.list(&instance).unwrap();
        assert_eq!(lists(&fake), 4);
        rt.list(&instance).unwrap();
        assert_eq!(lists(&fake), 4);
    }

    #[test]
    fn a_start_that_dies_before_its_run_returns_is_seen_dead() {
        let fake = Arc::new(FakeRuntime::default());
        let instance = "mine".to_owned();
        let (_f, view, rt) = followed(&fake, &instance, Arc::new(Seen::default()));
        assert!(rt.list(&instance).unwrap().is_empty());
        fake.set_image_crashing("crashing");
        for i in 0..20 {
            let ours = BTreeMap::from([
                (
                    labels::MANAGED_BY.to_owned(),
                    labels::MANAGED_BY_VALUE.to_owned(),
                ),
                (labels::INSTANCE.to_owned(), instance.clone()),
            ]);
            let spec = RunSpec {
                name: format!("c{i}"),
                image: "crashing".to_owned(),
                labels: ours,
                ..Default::default()
            };
            rt.run(&spec).unwrap();
            // Its start and death events race the run's result; whichever
            // comes first, the view ends with it exited, without asking.
            wait("the death reaches the view", || {
                view.current(false).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.name == spec.name && c.state == State::Exited)
                })
            });
        }
        assert_eq!(lists(&fake), 1);
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::Inspect(_))));
    }

    #[test]
    fn another_configurations_listing_never_touches_the_view() {
        let fake = Arc::new(FakeRuntime::default());
        let view = ContainerView::default();
        let rt = Viewed {
            inner: fake.clone(),
            view: view.clone(),
            instance: "mine".to_owned(),
        };
        rt.list("theirs").unwrap();
        rt.list("theirs").unwrap();
        assert_eq!(lists(&fake), 2);
        assert!(view.current(false).is_none());
    }
}
