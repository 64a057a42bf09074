//! [`FakeRuntime`]: an in-memory engine for tests and benchmarks, compiled
//! only for the crate's own tests and with the `test-support` feature, so
//! the product never carries it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::process::{describe_argv, error_args};
use super::*;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide the state
    // from the assertions that follow.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An in-memory runtime for tests: a list of "existing containers" that
/// the calls act on, a record of every call, and injectable failures.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    containers: Mutex<Vec<ContainerInfo>>,
    /// What each container runs after its image, by name (for `command`).
    commands: Mutex<BTreeMap<String, Vec<String>>>,
    calls: Mutex<Vec<Call>>,
    failures: Mutex<BTreeMap<String, Injected>>,
    list_failure: Mutex<Option<Injected>>,
    serial: AtomicU32,
    /// Containers whose health check fails.
    unhealthy: Mutex<std::collections::BTreeSet<String>>,
    /// Containers `list` leaves out, as a `ps` taken before an interrupted
    /// sync's `podman run` created them would.
    hidden: Mutex<std::collections::BTreeSet<String>>,
    /// Images that are not in local storage (every other one is).
    missing_images: Mutex<std::collections::BTreeSet<String>>,
    /// Images whose probe fails (the program cannot start at all).
    broken_images: Mutex<std::collections::BTreeSet<String>>,
    /// Images whose containers exit with code 3 as soon as they start,
    /// though their probe answers (a daemon that cannot serve).
    crashing_images: Mutex<std::collections::BTreeSet<String>>,
    /// Images pulled, in order.
    pulled: Mutex<Vec<String>>,
    /// Open event subscriptions: each one's instance and sender. Every
    /// change the fake makes is sent as podman would report it.
    subscribers: Mutex<Vec<(String, std::sync::mpsc::Sender<EventItem>)>>,
}

type EventItem = Result<ContainerEvent, RuntimeError>;

/// A failure injected into [`FakeRuntime`].
#[derive(Debug, Clone)]
enum Injected {
    /// Fails like podman exiting 125 with this stderr.
    Stderr(String),
    Error(RuntimeError),
}

impl Injected {
    fn to_error(&self, call: &Call) -> RuntimeError {
        match self {
            Injected::Stderr(message) => RuntimeError::Failed {
                args: error_args("podman", &call_args(call)),
                status: "exit status: 125".to_owned(),
                stderr: message.clone(),
            },
            Injected::Error(e) => e.clone(),
        }
    }
}

/// First pid the fake hands out, far from the test process's own.
const FAKE_FIRST_PID: u32 = 10000;

impl FakeRuntime {
    pub fn new(existing: Vec<ContainerInfo>) -> FakeRuntime {
        FakeRuntime {
            containers: Mutex::new(existing),
            ..FakeRuntime::default()
        }
    }

    /// A container carrying our managed-by label, the instance of
    /// [`crate::host::config::Profile::defaults`] and `labels` (which may name
    /// another instance), for seeding [`FakeRuntime::new`]. Running ones
    /// get a pid.
    pub fn container(name: &str, state: State, labels: &[(&str, &str)]) -> ContainerInfo {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.insert(
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        );
        l.entry(labels::INSTANCE.to_owned()).or_insert_with(|| {
            crate::host::config::instance_id(std::path::Path::new(
                crate::host::config::DEFAULT_STATE_DIR,
            ))
        });
        let running = state == State::Running;
        ContainerInfo {
            // FNV-1a of the name: stable and distinct per name.
            id: format!(
                "{:064x}",
                name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                })
            ),
            name: name.to_owned(),
            state,
            pid: if running { 9000 } else { 0 },
            image: "localhost/fake:latest".to_owned(),
            labels: l,
            started_at: if running { 1_700_000_000 } else { 0 },
            exit_code: 0,
        }
    }

    /// Every call made so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// The containers as they are now, in every state.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        lock(&self.containers).clone()
    }

    /// From now on every run/kill/stop/remove of `name` fails like a
    /// podman that exits 125 with `message` on stderr.
    pub fn fail_on(&self, name: &str, message: &str) {
        lock(&self.failures).insert(name.to_owned(), Injected::Stderr(message.to_owned()));
    }

    /// Like [`FakeRuntime::fail_on`] with any error (e.g. a timeout).
    pub fn fail_on_with(&self, name: &str, err: RuntimeError) {
        lock(&self.failures).insert(name.to_owned(), Injected::Error(err));
    }

    /// From now on `list` fails like podman exiting 125 with `message`.
    pub fn fail_list(&self, message: &str) {
        *lock(&self.list_failure) = Some(Injected::Stderr(message.to_owned()));
    }

    pub fn fail_list_with(&self, err: RuntimeError) {
        *lock(&self.list_failure) = Some(Injected::Error(err));
    }

    /// From now on the health check of `name` fails (or passes again).
    pub fn set_unhealthy(&self, name: &str, unhealthy: bool) {
        let mut u = lock(&self.unhealthy);
        if unhealthy {
            u.insert(name.to_owned());
        } else {
            u.remove(name);
        }
    }

    /// Leaves `name` out of every `list` until it is removed: the container
    /// a killed sync's `podman run` created after the next sync listed.
    pub fn hide_from_list(&self, name: &str) {
        lock(&self.hidden).insert(name.to_owned());
    }

    /// From now on `image` is absent from local storage (a pull brings it).
    pub fn set_image_missing(&self, image: &str) {
        lock(&self.missing_images).insert(image.to_owned());
    }

    /// From now on `image`'s program cannot start: its probe fails and
    /// its containers exit with code 3 as soon as they start.
    pub fn set_image_broken(&self, image: &str) {
        lock(&self.broken_images).insert(image.to_owned());
        self.set_image_crashing(image);
    }

    /// From now on `image`'s containers exit with code 3 as soon as they
    /// start, though its probe still answers.
    pub fn set_image_crashing(&self, image: &str) {
        lock(&self.crashing_images).insert(image.to_owned());
    }

    /// The images pulled so far, in order.
    pub fn pulled(&self) -> Vec<String> {
        lock(&self.pulled).clone()
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        lock(&self.failures).clear();
        *lock(&self.list_failure) = None;
    }

    /// Records the call, then fails it if a failure was injected for
    /// `name`.
    fn record(&self, call: Call, name: Option<&str>) -> Result<(), RuntimeError> {
        let injected = match name {
            Some(n) => lock(&self.failures).get(n).cloned(),
            None => lock(&self.list_failure).clone(),
        };
        let result = injected.map_or(Ok(()), |i| Err(i.to_error(&call)));
        lock(&self.calls).push(call);
        result
    }

    /// Sends `action` about `c` to every subscription of its instance
    /// (dropped subscriptions are forgotten).
    fn emit(&self, c: &ContainerInfo, action: EventAction) {
        let ev = ContainerEvent {
            name: c.name.clone(),
            id: c.id.clone(),
            action,
            labels: c.labels.clone(),
        };
        lock(&self.subscribers)
            .retain(|(instance, tx)| !is_managed(c, instance) || tx.send(Ok(ev.clone())).is_ok());
    }

    /// The main process of `name` exits with `code` on its own (a crash, an
    /// OOM kill, `kill -9` from the host): the container is left exited and
    /// a `died` event is sent. False if there is no such running container.
    pub fn die(&self, name: &str, code: i32) -> bool {
        let mut cs = lock(&self.containers);
        let Some(c) = cs
            .iter_mut()
            .find(|c| c.name == name && c.state == State::Running)
        else {
            return false;
        };
        FakeRuntime::exit(c, code);
        let c = c.clone();
        drop(cs);
        self.emit(
            &c,
            EventAction::Died {
                exit_code: Some(code),
            },
        );
        true
    }

    /// Sends `item` to every open subscription as it is: an event the
    /// fake's containers did not cause, or a stream error.
    pub fn inject_event(&self, item: EventItem) {
        lock(&self.subscribers).retain(|(_, tx)| tx.send(item.clone()).is_ok());
    }

    /// Ends every open subscription, as an engine restart does.
    pub fn end_events(&self) {
        lock(&self.subscribers).clear();
    }

    /// How many subscriptions are open (one per follower).
    pub fn subscriptions(&self) -> usize {
        let mut subs = lock(&self.subscribers);
        // A dropped receiver is seen at the next send; probe with nothing.
        subs.retain(|(_, tx)| {
            tx.send(Ok(ContainerEvent {
                name: String::new(),
                id: String::new(),
                action: EventAction::Other("probe".to_owned()),
                labels: BTreeMap::new(),
            }))
            .is_ok()
        });
        subs.len()
    }

    fn exit(c: &mut ContainerInfo, code: i32) {
        if c.state == State::Running {
            c.exit_code = code;
        }
        c.state = State::Exited;
        c.pid = 0;
    }
}

impl Runtime for FakeRuntime {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.record(Call::List(instance.to_owned()), None)?;
        let hidden = lock(&self.hidden).clone();
        Ok(lock(&self.containers)
            .iter()
            .filter(|c| is_managed(c, instance) && !hidden.contains(&c.name))
            .cloned()
            .collect())
    }

    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        let mut names: Vec<String> = lock(&self.containers)
            .iter()
            .filter(|c| {
                SidecarLabels::of(c).is_managed()
                    && SidecarLabels::of(c).instance().is_none_or(str::is_empty)
            })
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        self.record(Call::Run(spec.clone()), Some(&spec.name))?;
        let mut cs = lock(&self.containers);
        if cs.iter().any(|c| c.name == spec.name) {
            // What podman does: a name held by any container, even an
            // exited or created one, blocks a new one.
            return Err(RuntimeError::NameInUse(spec.name.clone()));
        }
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:064x}", 0xfa4e_0000_u64 + u64::from(n));
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        lock(&self.commands).insert(
            spec.name.clone(),
            spec.command
                .iter()
                .chain(&spec.daemon_argv)
                .cloned()
                .collect(),
        );
        let c = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            state: State::Running,
            pid: FAKE_FIRST_PID + n,
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            started_at,
            exit_code: 0,
        };
        let crashing = lock(&self.crashing_images).contains(&spec.image);
        cs.push(c.clone());
        drop(cs);
        self.emit(&c, EventAction::Started);
        if crashing {
            self.die(&spec.name, 3);
        }
        Ok(id)
    }

    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.record(Call::Kill(name.to_owned(), signal), Some(name))?;
        let mut cs = lock(&self.containers);
        let c = cs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        if c.state != State::Running {
            return Err(RuntimeError::NotRunning(name.to_owned()));
        }
        let code = match signal {
            // A daemon reloads on HUP and keeps running.
            Signal::Hup => return Ok(()),
            Signal::Term => 128 + 15,
            Signal::Kill => 128 + 9,
        };
        FakeRuntime::exit(c, code);
        let c = c.clone();
        drop(cs);
        self.emit(
            &c,
            EventAction::Died {
                exit_code: Some(code),
            },
        );
        Ok(())
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.record(Call::Stop(name.to_owned(), timeout), Some(name))?;
        let mut cs = lock(&self.containers);
        let c = cs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        let was_running = c.state == State::Running;
        FakeRuntime::exit(c, 128 + 15);
        let c = c.clone();
        drop(cs);
        if was_running {
            self.emit(
                &c,
                EventAction::Died {
                    exit_code: Some(128 + 15),
                },
            );
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(Call::Remove(name.to_owned()), Some(name))?;
        let gone: Vec<ContainerInfo> = {
            let mut cs = lock(&self.containers);
            let gone = cs.iter().filter(|c| c.name == name).cloned().collect();
            cs.retain(|c| c.name != name);
            gone
        };
        lock(&self.hidden).remove(name);
        for c in gone {
            if c.state == State::Running {
                self.emit(
                    &c,
                    EventAction::Died {
                        exit_code: Some(137),
                    },
                );
            }
            self.emit(&c, EventAction::Removed);
        }
        Ok(())
    }

    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        lock(&self.calls).push(Call::Inspect(name.to_owned()));
        let container = lock(&self.containers)
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        // A seeded container was never run here: podman would report no command.
        let command = lock(&self.commands).get(name).cloned().unwrap_or_default();
        Ok(Inspected { container, command })
    }

    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let running = lock(&self.containers)
            .iter()
            .any(|c| c.name == name && c.state == State::Running);
        if !running {
            return Err(RuntimeError::NotRunning(name.to_owned()));
        }
        if lock(&self.unhealthy).contains(name) {
            return Err(RuntimeError::Failed {
                args: error_args(
                    "podman",
                    &[&["exec".to_owned(), name.to_owned()][..], argv].concat(),
                ),
                status: "exit status: 1".to_owned(),
                stderr: "unhealthy".to_owned(),
            });
        }
        Ok(())
    }

    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        let mut missing = lock(&self.missing_images);
        if pull {
            lock(&self.pulled).push(image.to_owned());
            missing.remove(image);
            return Ok(());
        }
        if missing.contains(image) {
            return Err(RuntimeError::NoSuchImage(image.to_owned()));
        }
        Ok(())
    }

    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<(), RuntimeError> {
        if lock(&self.missing_images).contains(image) {
            return Err(RuntimeError::NoSuchImage(image.to_owned()));
        }
        if lock(&self.broken_images).contains(image) {
            return Err(RuntimeError::Failed {
                args: error_args(
                    "podman",
                    &[&["run".to_owned(), image.to_owned()][..], argv].concat(),
                ),
                status: "exit status: 3".to_owned(),
                stderr: "broken image".to_owned(),
            });
        }
        Ok(())
    }

    fn describe(&self, call: &Call) -> String {
        describe_argv(Path::new("podman"), &call_args(call))
    }

    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.subscribers).push((instance.to_owned(), tx));
        Ok(Box::new(rx.into_iter().filter(|e| {
            !matches!(e, Ok(ContainerEvent { action: EventAction::Other(a), .. }) if a == "probe")
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::test_util::*;

    // ---- the fake ----

    #[test]
    fn fake_acts_like_podman_and_records_every_call() {
        let exited = FakeRuntime::container("old", State::Exited, &[(labels::KIND, "dnsmasq")]);
        let mut foreign = FakeRuntime::container("foreign", State::Running, &[]);
        foreign.labels.clear();
        let other = FakeRuntime::container(
            "other",
            State::Running,
            &[(labels::KIND, "dnsmasq"), (labels::INSTANCE, "b")],
        );
        let fake = FakeRuntime::new(vec![exited.clone(), foreign, other]);
        let own =
            crate::host::config::Profile::defaults(crate::shared::kind::Kind::Dnsmasq).instance;

        let listed = fake.list(&own).unwrap();
        assert_eq!(
            listed,
            vec![exited.clone()],
            "only our label and instance are listed"
        );
        assert_eq!(fake.list("b").unwrap().len(), 1);
        fake.clear_calls();
        let listed = fake.list(&own).unwrap();
        assert_eq!(listed, vec![exited.clone()]);

        let a = spec("a", &["x"]);
        let id_a = fake.run(&a).unwrap();
        let id_b = fake.run(&spec("b", &[])).unwrap();
        assert_ne!(id_a, id_b);
        let cs = fake.containers();
        let ca = by_name(&cs, "a");
        assert_eq!((ca.state.clone(), ca.pid), (State::Running, 10000));
        assert_eq!(ca.id, id_a);
        assert_eq!(ca.labels, a.labels);
        assert_eq!(ca.image, a.image);
        assert_eq!(by_name(&cs, "b").pid, 10001);

        let clash = fake.run(&a).unwrap_err();
        assert!(clash.to_string().contains("already in use"), "{clash}");

        fake.kill("a", Signal::Hup).unwrap();
        assert_eq!(by_name(&fake.containers(), "a").state, State::Running);
        fake.kill("a", Signal::Kill).unwrap();
        let ca = by_name(&fake.containers(), "a").clone();
        assert_eq!((ca.state, ca.pid, ca.exit_code), (State::Exited, 0, 137));
        assert!(matches!(
            fake.kill("a", Signal::Hup),
            Err(RuntimeError::NotRunning(_))
        ));
        assert!(matches!(
            fake.kill("nope", Signal::Hup),
            Err(RuntimeError::NoSuchContainer(_))
        ));

        fake.stop("b", Duration::from_secs(3)).unwrap();
        assert_eq!(by_name(&fake.containers(), "b").state, State::Exited);
        assert!(matches!(
            fake.stop("nope", Duration::ZERO),
            Err(RuntimeError::NoSuchContainer(_))
        ));

        fake.remove("a").unwrap();
        fake.remove("a").unwrap();
        assert!(fake.containers().iter().all(|c| c.name != "a"));

        assert_eq!(
            fake.calls(),
            vec![
                Call::List(own),
                Call::Run(a.clone()),
                Call::Run(spec("b", &[])),
                Call::Run(a),
                Call::Kill("a".into(), Signal::Hup),
                Call::Kill("a".into(), Signal::Kill),
                Call::Kill("a".into(), Signal::Hup),
                Call::Kill("nope".into(), Signal::Hup),
                Call::Stop("b".into(), Duration::from_secs(3)),
                Call::Stop("nope".into(), Duration::ZERO),
                Call::Remove("a".into()),
                Call::Remove("a".into()),
            ]
        );
        fake.clear_calls();
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn fake_events_report_its_own_changes_and_injected_deaths() {
        let own =
            crate::host::config::Profile::defaults(crate::shared::kind::Kind::Dnsmasq).instance;
        let fake = FakeRuntime::default();
        let mut events = fake.events(&own).unwrap();
        let mut other = fake.events("other").unwrap();
        let mut a = spec("a", &[]);
        a.labels.insert(labels::INSTANCE.to_owned(), own.clone());
        fake.run(&a).unwrap();
        assert!(fake.die("a", 139));
        assert!(!fake.die("a", 1), "only a running container dies");
        fake.remove("a").unwrap();
        let got: Vec<EventAction> = (0..3)
            .map(|_| events.next().unwrap().unwrap().action)
            .collect();
        assert_eq!(
            got,
            [
                EventAction::Started,
                EventAction::Died {
                    exit_code: Some(139)
                },
                EventAction::Removed
            ]
        );
        assert_eq!(fake.subscriptions(), 2);
        fake.end_events();
        assert!(events.next().is_none(), "an ended subscription ends");
        assert!(other.next().is_none());
    }

    #[test]
    fn fake_failures_hit_only_their_target_until_cleared() {
        let fake = FakeRuntime::default();
        fake.fail_on("bad", "Error: runc: boom");
        let err = fake.run(&spec("bad", &[])).unwrap_err();
        match &err {
            RuntimeError::Failed { args, stderr, .. } => {
                assert!(args.starts_with("podman run -d --name=bad"), "{args}");
                assert_eq!(stderr, "Error: runc: boom");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(fake.containers().is_empty(), "a failed run creates nothing");
        fake.run(&spec("good", &[])).unwrap();
        assert!(fake.remove("bad").is_err());
        assert_eq!(fake.calls().len(), 3, "failed calls are recorded too");

        fake.fail_on_with(
            "good",
            RuntimeError::Timeout {
                args: "stop".into(),
                timeout: Duration::from_secs(1),
            },
        );
        assert!(matches!(
            fake.stop("good", Duration::ZERO),
            Err(RuntimeError::Timeout { .. })
        ));

        fake.fail_list("Error: database is locked");
        let own =
            crate::host::config::Profile::defaults(crate::shared::kind::Kind::Dnsmasq).instance;
        let err = fake.list(&own).unwrap_err();
        assert!(err.to_string().contains("database is locked"), "{err}");

        fake.clear_failures();
        assert_eq!(
            fake.list(&own).unwrap().len(),
            0,
            "spec() has no instance label"
        );
        assert_eq!(fake.containers().len(), 1);
        fake.remove("bad").unwrap();
    }
}
