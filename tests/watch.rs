//! `sidespawn watch` end to end: the real daemon binary, the real wrapper
//! inside a real network namespace, real podman.
//!
//! * a burst of 2000 calls from 20 callers for 40 sidecars is claimed
//!   exactly once and becomes one running sidecar per tag;
//! * the daemon killed with SIGKILL in the middle of a burst and started
//!   again loses nothing;
//! * a queue directory renamed away (or deleted) and made anew is watched
//!   again;
//! * an overflowing inotify queue loses nothing — with the kernel's real
//!   overflow when `fs.inotify.max_queued_events` can be lowered (it is
//!   global: saved and restored, also on panic), and always through the
//!   test-only fault hook that turns every event into an overflow;
//! * SIGTERM lets the sync in progress finish and exits 0 with queue and
//!   journal consistent; SIGHUP re-reads the configuration, keeps the old
//!   one when the new one is bad;
//! * under a real systemd manager, `sidespawn-watch.service` (Type=notify)
//!   becomes active only once READY=1 arrives, pings its watchdog, reloads
//!   on `systemctl reload`, and a wrapper call becomes a sidecar. Test-only drop-in there:
//!   `Environment=CONTAINERS_CONF=...` (podman on these machines needs runc
//!   and lower ulimits, tests/scripts/containers.conf), and a shorter
//!   `WatchdogSec=` so that the pings can be seen within the test.
//!
//! Every test here talks to the daemon's readiness through its own
//! `NOTIFY_SOCKET`, so waiting for it is a condition, not a sleep.

mod common;
mod systemd;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Netns;
use common::podman_host::PodmanHost;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Bounds for a loaded 2-core machine, not targets.
const TIMEOUT: Duration = Duration::from_secs(240);

/// One daemon at a time: bursts must not slow each other into their
/// timeouts, and the sysctl test changes a global setting.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue root, state directory, configuration and namespace for one test,
/// and the sidecars made under its label (removed on drop).
struct Setup {
    // Drop order: the sidecars and files first, then the namespace they ran in.
    host: PodmanHost,
    ns: Netns,
}

common::podman_host::deref_to_host!(Setup, host);

impl Setup {
    fn start(test: &str) -> Option<Setup> {
        if !common::privileged(test) {
            return None;
        }
        let host = PodmanHost::builder("sidespawn-watch")
            .profile(Setup::profile_extra())
            .config(serde_json::json!({"podman": "podman"}))
            .build();
        // The wrapper is multi-call by argv[0]: one link per kind called.
        for kind in ["dnsmasq", "haproxy"] {
            host.wrapper_link(kind);
        }
        let ns = Netns::new(&format!("qdhcp-{}", common::uuid()));
        Some(Setup { host, ns })
    }

    /// What a kind's profile here adds to the host's: dnsmasq in the foreground, whatever
    /// the kind.
    fn profile_extra() -> serde_json::Value {
        serde_json::json!({
            "command": ["dnsmasq"],
            "foreground_args": ["-k"],
            "strip_args": [],
            "stop_timeout_s": 2
        })
    }

    /// The configuration: dnsmasq, plus `extra` kinds served by the same
    /// dnsmasq image (a kind's program is the host's choice), so that any
    /// kind's request makes a sidecar that stays up.
    fn write_config(&self, extra: &[&str], image: &str) {
        self.write_config_with(extra, image, "podman");
    }

    fn write_config_with(&self, extra: &[&str], image: &str, podman: &str) {
        let mut profile = self.host.profile(image);
        if let (Some(p), serde_json::Value::Object(more)) =
            (profile.as_object_mut(), Setup::profile_extra())
        {
            p.extend(more);
        }
        let mut kinds = serde_json::Map::new();
        kinds.insert("dnsmasq".into(), profile.clone());
        for k in extra {
            kinds.insert((*k).into(), profile.clone());
        }
        self.host.write_config(
            serde_json::json!({ "podman": podman, "kinds": kinds }),
            |_| {},
        );
    }

    /// A Neutron-shaped call through the real wrapper, as `kind`.
    fn request(&self, kind: &str, tag: &str) -> Command {
        let pid_file = self.join(format!("data/{tag}.pid"));
        self.dnsmasq_call(&self.ns, kind, tag, &pid_file)
    }

    /// Queues one request and asserts the wrapper said so.
    fn call(&self, kind: &str, tag: &str) {
        let mut cmd = self.request(kind, tag);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
    }

    fn tag(&self) -> String {
        format!("dnsmasq-{}", common::uuid())
    }

    /// `callers` threads each making `calls` calls, spread over `tags`.
    fn burst(&self, callers: usize, calls: usize, tags: &[String]) {
        std::thread::scope(|scope| {
            for c in 0..callers {
                scope.spawn(move || {
                    for i in 0..calls {
                        let tag = &tags[(c * calls + i) % tags.len()];
                        let out = self.request("dnsmasq", tag).output().unwrap();
                        assert!(
                            out.status.success(),
                            "{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                });
            }
        });
    }

    /// Running sidecars of this test, sorted.
    fn containers(&self) -> Vec<String> {
        self.host.containers(false)
    }

    fn running(&self, name: &str) -> bool {
        common::container_status(name) == "running"
    }

    fn sidecar(&self, kind: &str, tag: &str) -> String {
        common::sidecar_name(&self.join("state"), kind, tag)
    }

    fn ack_count(&self) -> usize {
        std::fs::read_dir(self.queue_root().join("dnsmasq/acks"))
            .map(|d| d.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    }

    fn kind_status(&self) -> serde_json::Value {
        self.host.kind_status("dnsmasq")
    }

    fn journal_len(&self) -> u64 {
        std::fs::metadata(self.join("state/journal/dnsmasq.jsonl")).map_or(0, |m| m.len())
    }

    /// Every acknowledgement ok, `n` of them, one running sidecar per tag,
    /// queue and journal empty.
    fn assert_all_served(&self, n: usize, tags: &[String], d: &Daemon) {
        let acks = self.acks("dnsmasq");
        assert_eq!(acks.len(), n, "acknowledgements\n{}", d.log());
        let ids: BTreeSet<&str> = acks.iter().filter_map(|a| a["id"].as_str()).collect();
        assert_eq!(ids.len(), n, "one acknowledgement per request");
        assert!(
            acks.iter().all(|a| a["result"] == "ok"),
            "{:?}\n{}",
            acks.iter().find(|a| a["result"] != "ok"),
            d.log()
        );
        let mut want: Vec<String> = tags.iter().map(|t| self.sidecar("dnsmasq", t)).collect();
        want.sort();
        assert_eq!(self.containers(), want, "one running sidecar per tag");
        assert!(common::queue_records(&self.queue_root(), "dnsmasq").is_empty());
        assert!(!self.queue_root().join("dnsmasq/pending").exists());
        assert_eq!(self.journal_len(), 0, "journal cleared");
    }
}

/// A `sidespawn watch` process with its own notification socket; killed
/// (SIGKILL) on drop unless it already exited.
struct Daemon {
    child: Child,
    log: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop_reader: Arc<AtomicBool>,
    status: Option<ExitStatus>,
}

impl Daemon {
    fn start(s: &Setup, env: &[(&str, &str)]) -> Daemon {
        let d = Self::spawn(s, env);
        d.wait_message("READY=1", 1);
        d
    }

    fn spawn(s: &Setup, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_with(s, env, &[])
    }

    /// [`Daemon::spawn`] with more arguments to `watch`.
    fn spawn_with(s: &Setup, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let sock_path = s.join(format!("notify-{}.sock", common::unique("n")));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop_reader = Arc::new(AtomicBool::new(false));
        {
            let (messages, stop) = (Arc::clone(&messages), Arc::clone(&stop_reader));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        messages.lock().unwrap().push(text);
                    }
                }
            });
        }
        let log = s.join(format!("{}.log", common::unique("daemon")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(s.config_path())
            .args(["watch", "--interval", "3600"])
            .args(args)
            .env("CONTAINERS_CONF", common::containers_conf())
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "info")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            log,
            messages,
            stop_reader,
            status: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn log(&self) -> String {
        format!(
            "--- daemon log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Notifications received so far that contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.lines().any(|l| l == needle || l.starts_with(needle)))
            .count()
    }

    /// Waits until `n` notifications contain the line `needle`.
    fn wait_message(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.count(needle) < n {
            if Instant::now() > deadline {
                panic!(
                    "no {needle} (#{n}) from the daemon; got {:?}\n{}",
                    self.messages.lock().unwrap(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Waits for the daemon to exit; returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.status = Some(st);
                return st;
            }
            if Instant::now() > deadline {
                panic!("the daemon did not exit\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop_reader.store(true, Ordering::Relaxed);
    }
}

#[test]
fn burst_of_2000_calls_from_20_callers_is_claimed_exactly_once() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: 2000-call burst") else {
        return;
    };
    const CALLERS: usize = 20;
    const CALLS: usize = 100;
    let tags: Vec<String> = (0..40).map(|_| s.tag()).collect();
    let mut d = Daemon::start(&s, &[]);

    let t0 = Instant::now();
    s.burst(CALLERS, CALLS, &tags);
    let written = t0.elapsed();
    common::wait_until(TIMEOUT, "every request is acknowledged", || {
        s.ack_count() >= CALLERS * CALLS
    });
    eprintln!(
        "2000 calls written in {written:?}; all acknowledged after {:?}",
        t0.elapsed()
    );
    // Settled: the journal of the last sync is cleared after its acks.
    common::wait_until(TIMEOUT, "the last sync is over", || s.journal_len() == 0);
    s.assert_all_served(CALLERS * CALLS, &tags, &d);
    let status = s.kind_status();
    assert_eq!(
        status["total_claimed"],
        (CALLERS * CALLS) as u64,
        "claimed exactly once: {status}\n{}",
        d.log()
    );
    assert_eq!(status["total_rejected"], 0);

    d.signal(Signal::SIGTERM);
    let st = d.wait_exit();
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    assert_eq!(d.count("STOPPING=1"), 1);
}

#[test]
fn daemon_killed_mid_burst_and_restarted_loses_nothing() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: SIGKILL in the middle of a burst") else {
        return;
    };
    const CALLERS: usize = 10;
    const CALLS: usize = 60;
    let tags: Vec<String> = (0..20).map(|_| s.tag()).collect();
    let d = Daemon::start(&s, &[]);

    let killed = AtomicBool::new(false);
    let killed_at = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Once the daemon is busy starting sidecars, kill it where it
            // stands: mid-claim, mid-podman, mid-acknowledgement.
            common::wait_until(TIMEOUT, "the daemon has started serving", || {
                s.ack_count() >= 5
            });
            killed_at.store(s.ack_count(), Ordering::SeqCst);
            d.signal(Signal::SIGKILL);
            killed.store(true, Ordering::SeqCst);
        });
        s.burst(CALLERS, CALLS, &tags);
    });
    assert!(killed.load(Ordering::SeqCst));
    let mut d = d;
    let st = d.wait_exit();
    assert_eq!(st.signal(), Some(9));
    eprintln!(
        "killed after {} acknowledgements of {}; queue holds {}, journal {} bytes",
        killed_at.load(Ordering::SeqCst),
        CALLERS * CALLS,
        common::queue_records(&s.queue_root(), "dnsmasq").len(),
        s.journal_len()
    );

    let d2 = Daemon::start(&s, &[]);
    common::wait_until(TIMEOUT, "every request is acknowledged", || {
        s.ack_count() >= CALLERS * CALLS
    });
    common::wait_until(TIMEOUT, "the last sync is over", || s.journal_len() == 0);
    s.assert_all_served(CALLERS * CALLS, &tags, &d2);
}

#[test]
fn replaced_or_deleted_queue_directory_is_watched_again() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: queue directory replaced") else {
        return;
    };
    let d = Daemon::start(&s, &[]);
    let kind_dir = s.queue_root().join("dnsmasq");

    // Renamed away and made anew, as a careless `mv` and tmpfiles would.
    std::fs::rename(&kind_dir, s.queue_root().join("dnsmasq.old")).unwrap();
    std::fs::create_dir(&kind_dir).unwrap();
    let tag1 = s.tag();
    s.call("dnsmasq", &tag1);
    common::wait_until(TIMEOUT, "the request in the new directory runs", || {
        s.running(&s.sidecar("dnsmasq", &tag1))
    });

    // Deleted outright, then made anew. The daemon may be writing into it
    // meanwhile (the acknowledgement, `acks/` made again by a check that
    // the deletion's own events cued): delete until it is gone.
    common::wait_until(TIMEOUT, "the queue directory is deleted", || {
        std::fs::remove_dir_all(&kind_dir).is_ok() || !kind_dir.exists()
    });
    std::fs::create_dir(&kind_dir).unwrap();
    let tag2 = s.tag();
    s.call("dnsmasq", &tag2);
    common::wait_until(
        TIMEOUT,
        "the request in the recreated directory runs",
        || s.running(&s.sidecar("dnsmasq", &tag2)),
    );

    // And the watch on the newest directory keeps working.
    let tag3 = s.tag();
    s.call("dnsmasq", &tag3);
    common::wait_until(TIMEOUT, "a later request runs", || {
        s.running(&s.sidecar("dnsmasq", &tag3))
    });
    // --interval 3600: the periodic reconcile cannot have done it.
    assert_eq!(d.count("READY=1"), 1, "{}", d.log());
}

/// Sets `/proc/sys/fs/inotify/max_queued_events` and puts the old value
/// back on drop (also when the test panics).
struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> Result<SysctlGuard, String> {
        let old = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
        std::fs::write(path, value).map_err(|e| format!("write {path}: {e}"))?;
        Ok(SysctlGuard { path, old })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, self.old.trim()) {
            eprintln!("warning: could not restore {}: {e}", self.path);
        }
    }
}

#[test]
fn overflowed_inotify_queue_loses_nothing() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: inotify queue overflow") else {
        return;
    };
    const CALLERS: usize = 10;
    const CALLS: usize = 20;
    let tags: Vec<String> = (0..10).map(|_| s.tag()).collect();

    // The kernel's own overflow: the daemon's inotify instance gets a tiny
    // queue (the limit is read when an instance is made, so the global
    // value is put back as soon as the daemon is up), the daemon is
    // stopped while the burst fills it, then continued.
    const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";
    let guard = SysctlGuard::set(MAX_QUEUED, "16");
    match guard {
        Err(why) => eprintln!(
            "SKIPPED the kernel-overflow variant (cannot lower {MAX_QUEUED}: {why}); the fault-hook variant below still runs"
        ),
        Ok(guard) => {
            let mut d = Daemon::start(&s, &[]);
            drop(guard);
            d.signal(Signal::SIGSTOP);
            let burst = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.burst(CALLERS, CALLS, &tags)
            }));
            d.signal(Signal::SIGCONT);
            if let Err(p) = burst {
                std::panic::resume_unwind(p);
            }
            common::wait_until(TIMEOUT, "every request is acknowledged", || {
                s.ack_count() >= CALLERS * CALLS
            });
            common::wait_until(TIMEOUT, "the last sync is over", || s.journal_len() == 0);
            s.assert_all_served(CALLERS * CALLS, &tags, &d);
            assert!(
                d.log().contains("inotify event queue overflowed"),
                "the kernel queue did not overflow\n{}",
                d.log()
            );
            d.signal(Signal::SIGTERM);
            assert_eq!(d.wait_exit().code(), Some(0));
        }
    }

    // The rescan path alone: every event's content dropped.
    let d = Daemon::start(&s, &[("SIDESPAWN_WATCH_FAULT", "overflow")]);
    let before = s.ack_count();
    let tags2: Vec<String> = (0..10).map(|_| s.tag()).collect();
    s.burst(CALLERS, CALLS, &tags2);
    common::wait_until(TIMEOUT, "every request is acknowledged", || {
        s.ack_count() >= before + CALLERS * CALLS
    });
    common::wait_until(TIMEOUT, "the last sync is over", || s.journal_len() == 0);
    assert!(d.log().contains("treated as an inotify queue overflow"));
    let acks = s.acks("dnsmasq");
    assert!(acks.iter().all(|a| a["result"] == "ok"), "{}", d.log());
    for t in &tags2 {
        assert!(s.running(&s.sidecar("dnsmasq", t)), "{t}\n{}", d.log());
    }
    assert!(common::queue_records(&s.queue_root(), "dnsmasq").is_empty());
}

#[test]
fn sigterm_finishes_the_sync_in_progress_and_exits_0() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: SIGTERM mid-sync") else {
        return;
    };
    const CALLERS: usize = 10;
    const CALLS: usize = 30;
    let n = CALLERS * CALLS;
    let tags: Vec<String> = (0..20).map(|_| s.tag()).collect();
    let mut d = Daemon::start(&s, &[]);
    let pid = d.pid();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            common::wait_until(TIMEOUT, "the daemon has started serving", || {
                s.ack_count() >= 1
            });
            kill(pid, Signal::SIGTERM).unwrap();
        });
        s.burst(CALLERS, CALLS, &tags);
    });
    let st = d.wait_exit();
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    assert!(d.count("STOPPING=1") >= 1);

    // Consistent: nothing half-done in the journal; every request either
    // answered or still queued, none both, none lost.
    assert_eq!(s.journal_len(), 0, "journal cleared\n{}", d.log());
    let acked = s.acks("dnsmasq");
    assert!(acked.iter().all(|a| a["result"] == "ok"), "{}", d.log());
    let queued = common::queue_records(&s.queue_root(), "dnsmasq");
    let acked_ids: BTreeSet<String> = acked
        .iter()
        .filter_map(|a| a["id"].as_str().map(String::from))
        .collect();
    let queued_ids: BTreeSet<String> = queued
        .iter()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    assert!(acked_ids.is_disjoint(&queued_ids));
    assert_eq!(acked_ids.len() + queued_ids.len(), n, "{}", d.log());
    eprintln!(
        "at exit: {} answered, {} still queued",
        acked_ids.len(),
        queued_ids.len()
    );

    // The oneshot takes over where the daemon stopped.
    let mut sync = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
    sync.arg("--config")
        .arg(s.config_path())
        .arg("sync")
        .env("CONTAINERS_CONF", common::containers_conf());
    common::run(&mut sync);
    s.assert_all_served(n, &tags, &d);
}

#[test]
fn sighup_rereads_the_configuration_and_keeps_it_when_bad() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: SIGHUP") else {
        return;
    };
    let images = common::ensure_images();
    let mut d = Daemon::start(&s, &[]);

    // A broken file: logged, the old configuration kept and still served.
    std::fs::write(s.config_path(), "{ not json").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_message("RELOADING=1", 1);
    d.wait_message("READY=1", 2);
    assert!(
        d.log().contains("keeping the previous configuration"),
        "{}",
        d.log()
    );
    let tag = s.tag();
    s.call("dnsmasq", &tag);
    common::wait_until(TIMEOUT, "dnsmasq is still served", || {
        s.running(&s.sidecar("dnsmasq", &tag))
    });

    // A kind added: its queue appears and is watched.
    s.write_config(&["haproxy"], &images.dnsmasq);
    d.signal(Signal::SIGHUP);
    d.wait_message("RELOADING=1", 2);
    d.wait_message("READY=1", 3);
    assert!(s.queue_root().join("haproxy").is_dir(), "{}", d.log());
    let htag = format!("haproxy-{}", common::uuid());
    s.call("haproxy", &htag);
    common::wait_until(TIMEOUT, "the added kind is served", || {
        s.running(&s.sidecar("haproxy", &htag))
    });
    assert!(
        d.messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("STATUS=watching dnsmasq, haproxy")),
        "{:?}",
        d.messages.lock().unwrap()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.log());
}

#[test]
fn failing_sync_backs_off_keeps_watching_and_recovers() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: failing sync backs off") else {
        return;
    };
    let images = common::ensure_images();
    s.write_config_with(&[], &images.dnsmasq, "/nonexistent/podman");
    // Ready even so: it watches, and says in its status why syncs fail.
    let mut d = Daemon::start(&s, &[]);
    assert!(
        d.messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("dnsmasq FAILED")),
        "{:?}",
        d.messages.lock().unwrap()
    );
    let t0 = Instant::now();
    let tag = s.tag();
    s.call("dnsmasq", &tag);
    // Retries 1 s, 2 s, 4 s after the first failure: at most four runs in
    // the first four seconds, whatever the events.
    common::wait_until(TIMEOUT, "a retry after the request", || {
        d.log().matches("sync failed").count() >= 2
    });
    while t0.elapsed() < Duration::from_secs(4) {
        s.call("dnsmasq", &tag);
    }
    let failures = d.log().matches("sync failed").count();
    assert!(
        (2..=4).contains(&failures),
        "{failures} runs
{}",
        d.log()
    );
    assert!(d.log().contains("retrying in"), "{}", d.log());

    // Fixed configuration: the queued requests are served.
    s.write_config(&[], &images.dnsmasq);
    d.signal(Signal::SIGHUP);
    common::wait_until(TIMEOUT, "the request runs after the fix", || {
        s.running(&s.sidecar("dnsmasq", &tag))
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.log());
}

#[test]
fn watch_service_under_a_real_systemd_manager() {
    use systemd::Manager;
    const SERVICE: &str = "sidespawn-watch.service";
    let _serial = serial();
    let test = "sidespawn-watch.service (Type=notify) under a real systemd";
    let Some(s) = Setup::start(test) else {
        return;
    };
    let manager = match systemd::UserManager::start() {
        Ok(m) => m,
        Err(needs) => {
            common::skip(test, &needs);
            return;
        }
    };
    let cfg = sidespawn::host::config::HostConfig::load(&s.config_path(), true).unwrap();
    let files =
        sidespawn::host::units::generate(&cfg, Path::new(env!("CARGO_BIN_EXE_sidespawn"))).unwrap();
    manager.install(&files);
    manager.drop_in(
        SERVICE,
        "test",
        &format!(
            "[Service]\nEnvironment=CONTAINERS_CONF={}\nWatchdogSec=2s\n",
            common::containers_conf().display()
        ),
    );
    // `start` of a Type=notify service returns once READY=1 arrived.
    manager.systemctl_ok(&["start", SERVICE]);
    assert_eq!(manager.show(SERVICE, "ActiveState"), "active");
    let status = manager.show(SERVICE, "StatusText");
    assert!(status.starts_with("watching dnsmasq"), "{status}");

    let tag = s.tag();
    s.call("dnsmasq", &tag);
    common::wait_until(TIMEOUT, "the wrapper call becomes a sidecar", || {
        s.running(&s.sidecar("dnsmasq", &tag))
    });

    // `systemctl reload` reaches the daemon as SIGHUP; same process after.
    let pid = manager.show(SERVICE, "MainPID");
    manager.systemctl_ok(&["reload", SERVICE]);
    common::wait_until(TIMEOUT, "the daemon reloaded", || {
        manager.log_text().contains("configuration reloaded")
    });
    manager
        .wait_for(SERVICE, "ActiveState", "active", TIMEOUT)
        .unwrap();
    assert_eq!(manager.show(SERVICE, "MainPID"), pid);

    // The watchdog is fed: its timestamp moves on, the service stays up.
    let first = manager.show(SERVICE, "WatchdogTimestampMonotonic");
    common::wait_until(Duration::from_secs(30), "a later watchdog ping", || {
        manager.show(SERVICE, "WatchdogTimestampMonotonic") != first
    });
    assert_eq!(manager.show(SERVICE, "ActiveState"), "active");

    manager.systemctl_ok(&["stop", SERVICE]);
    assert_eq!(manager.show(SERVICE, "Result"), "success");
    // KillMode=process: the sidecar outlives the daemon.
    assert!(s.running(&s.sidecar("dnsmasq", &tag)));
}

/// `watch --metrics-file`: after the sync of a request, the file holds the
/// status figures in the Prometheus text format (parsed strictly), the
/// running sidecar among them, and no temporary file is left beside it;
/// `status --metrics` prints the same families.
#[test]
fn metrics_file_is_rewritten_after_each_sync() {
    let _serial = serial();
    let Some(s) = Setup::start("watch daemon: --metrics-file") else {
        return;
    };
    let dir = s.join("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sidespawn.prom");
    let d = Daemon::spawn_with(&s, &[], &["--metrics-file", file.to_str().unwrap()]);
    d.wait_message("READY=1", 1);
    let metrics = || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        sidespawn::host::metrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    // The first (full) sync already wrote it.
    common::wait_until(TIMEOUT, "the first metrics file", || file.exists());
    assert_eq!(
        metrics().get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"running\"}"),
        Some(&0.0),
        "{}",
        d.log()
    );

    let tag = s.tag();
    s.call("dnsmasq", &tag);
    common::wait_until(TIMEOUT, "the metrics show the running sidecar", || {
        let m = metrics();
        m.get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"running\"}") == Some(&1.0)
            && m.get("sidespawn_claimed_total{kind=\"dnsmasq\"}") == Some(&1.0)
    });
    let m = metrics();
    for (series, want) in [
        ("sidespawn_desired_sidecars{kind=\"dnsmasq\"}", 1.0),
        ("sidespawn_desired_running_sidecars{kind=\"dnsmasq\"}", 1.0),
        ("sidespawn_last_sync_ok{kind=\"dnsmasq\"}", 1.0),
        ("sidespawn_queue_depth{kind=\"dnsmasq\"}", 0.0),
        ("sidespawn_healthy", 1.0),
    ] {
        assert_eq!(m.get(series), Some(&want), "{series}: {m:#?}\n{}", d.log());
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sidespawn.prom"]);

    let mut status = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
    status
        .arg("--config")
        .arg(s.config_path())
        .args(["status", "--metrics"])
        .env("CONTAINERS_CONF", common::containers_conf());
    let printed = common::run(&mut status);
    let p = sidespawn::host::metrics::parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        m.keys().collect::<Vec<_>>(),
        "status --metrics and the file have the same series"
    );
    assert_eq!(
        p.get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"running\"}"),
        Some(&1.0)
    );
}
