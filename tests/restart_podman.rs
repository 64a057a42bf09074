//! Event-driven restart with real podman, real namespaces and the real
//! wrapper, with no agent container: the host alone brings a dead sidecar
//! back, in both host modes:
//!
//! * `watch` (the long-running daemon), which also serves the queue;
//! * path units, where `sidespawn sync` (run here by hand, as the path
//!   unit's oneshot would) serves the queue and `watch --restarts-only`
//!   (what `sidespawn-restart.service` runs) follows the engine's events.
//!   The same unit under the real systemd manager is in tests/systemd_sync.rs.
//!
//! In each mode: a dnsmasq whose daemon is killed with SIGKILL from the host
//! runs again (a new pid in its pid file); one stopped through the agent's
//! kill script (TERM) never comes back; a dnsmasq that exits at once is
//! restarted under the back-off until the policy's limit, then left dead,
//! and `status` says so. The time from the kill to the new pid is printed
//! (tests/bench.sh measures it; the deadline here is only generous).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Netns;
use common::podman_host::PodmanHost;

/// Bounds for a loaded 2-core machine, not targets.
const TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `sidespawn watch`: queues and events in one daemon.
    Watch,
    /// `sidespawn sync` per request plus `sidespawn watch --restarts-only`.
    PathUnits,
}

fn host(test: &str, restart: serde_json::Value) -> PodmanHost {
    PodmanHost::builder(&format!("sidespawn-restart-{test}"))
        .kind_dir()
        .config(serde_json::json!({"podman_timeout_ms": 120000}))
        .profile(serde_json::json!({"stop_timeout_s": 5, "restart": restart}))
        .build()
}

/// One sidecar's namespace, tag and pid file.
struct Sidecar {
    ns: Netns,
    tag: String,
    pid_file: PathBuf,
}

impl Sidecar {
    fn new(host: &PodmanHost) -> Sidecar {
        let uuid = common::uuid();
        let ns = Netns::new(&format!("qdhcp-{uuid}"));
        let dir = host.data().join(&uuid);
        std::fs::create_dir_all(&dir).unwrap();
        Sidecar {
            ns,
            tag: format!("dnsmasq-{uuid}"),
            pid_file: dir.join("pid"),
        }
    }

    fn container(&self, host: &PodmanHost) -> String {
        common::sidecar_name(&host.state_dir(), "dnsmasq", &self.tag)
    }

    /// Queues the agent's start request (and, in path mode, runs the sync
    /// its path unit would).
    fn request(&self, host: &PodmanHost, mode: Mode, extra: &[&str]) {
        let mut cmd = host.dnsmasq_call(&self.ns, "dnsmasq", &self.tag, &self.pid_file);
        cmd.args(extra);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
        if mode == Mode::PathUnits {
            host.ok(&["sync", "--kind", "dnsmasq"]);
        }
    }

    /// The pid in the pid file when it is a live dnsmasq of this namespace
    /// other than `not` (Neutron's liveness check).
    fn alive(&self, not: Option<u32>) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&self.pid_file.display().to_string());
        (Some(pid) != not && ours).then_some(pid)
    }

    fn wait_alive(&self, not: Option<u32>) -> u32 {
        common::wait_until(TIMEOUT, "dnsmasq is alive", || self.alive(not).is_some());
        self.alive(not).unwrap()
    }
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// The daemon of `mode` with its own notification socket, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Daemon {
    fn start(host: &PodmanHost, mode: Mode) -> Daemon {
        let sock_path = host.join(format!("notify-{}.sock", common::unique("n")));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (messages, stop) = (Arc::clone(&messages), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        messages
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            });
        }
        let log = host.join(format!("{}.log", common::unique("daemon")));
        let mut cmd = host.sidespawn(&["watch", "--interval", "3600"]);
        if mode == Mode::PathUnits {
            cmd.arg("--restarts-only");
        }
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "sidespawn=debug")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let d = Daemon {
            child: cmd.spawn().unwrap(),
            log,
            messages,
            stop,
        };
        let deadline = Instant::now() + TIMEOUT;
        while !d
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1"))
        {
            assert!(Instant::now() < deadline, "no READY=1\n{}", d.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    fn log(&self) -> String {
        format!(
            "--- daemon log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stop.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

fn killed_sidecar_runs_again_and_a_kill_script_stop_does_not(mode: Mode) {
    let host = host(
        &format!("{mode:?}").to_lowercase(),
        serde_json::json!({"backoff_s": 1, "max_restarts": 5, "window_s": 600}),
    );
    let daemon = Daemon::start(&host, mode);
    let a = Sidecar::new(&host);
    let b = Sidecar::new(&host);
    a.request(&host, mode, &[]);
    b.request(&host, mode, &[]);
    let pid_a = a.wait_alive(None);
    let pid_b = b.wait_alive(None);

    // A crash: the host kills the daemon; nothing asks for it again.
    let t = Instant::now();
    kill9(pid_a);
    let new_a = a.wait_alive(Some(pid_a));
    let took = t.elapsed();
    eprintln!("{mode:?}: SIGKILLed dnsmasq alive again after {took:?}");
    assert_eq!(
        common::container_status(&a.container(&host)),
        "running",
        "{}",
        daemon.log()
    );

    // An intentional stop through the agent's kill script, which waits
    // for its acknowledgement: in path mode from the sync the path unit
    // would run (here the test runs it until the script is answered).
    let mut kill = host.kill_script(&b.ns, "15", pid_b);
    let mut script = kill.stdout(Stdio::null()).spawn().unwrap();
    common::wait_until(TIMEOUT, "the kill script is answered", || {
        if mode == Mode::PathUnits {
            host.ok(&["sync", "--kind", "dnsmasq"]);
        }
        script.try_wait().unwrap().is_some()
    });
    assert!(script.wait().unwrap().success(), "{}", daemon.log());
    // A later death of A makes a restart pass that comes after B's death
    // (the engine reports events in order): if B were to be restarted, it
    // would be by the time A is back.
    kill9(new_a);
    a.wait_alive(Some(new_a));
    assert!(b.alive(None).is_none(), "the stopped dnsmasq runs again");
    let all = host.containers(true);
    assert!(
        !all.contains(&b.container(&host)),
        "{all:?}\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("sidecar died"),
        "the restart came from an engine event\n{}",
        daemon.log()
    );
}

fn crash_loop_stops_at_the_limit_and_status_says_so(mode: Mode) {
    let host = host(
        &format!("loop-{mode:?}").to_lowercase(),
        serde_json::json!({"backoff_s": 1, "max_restarts": 2, "window_s": 600}),
    );
    let daemon = Daemon::start(&host, mode);
    let s = Sidecar::new(&host);
    // dnsmasq refuses an unknown option and exits at once, every time.
    s.request(&host, mode, &["--no-such-option-sidespawn-test"]);
    let status = || -> (i32, serde_json::Value) {
        let mut cmd = host.sidespawn(&["status", "--json"]);
        let out = common::output(&mut cmd);
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or_default(),
        )
    };
    common::wait_until(TIMEOUT, "status says the restarts gave up", || {
        status().1["sidecars"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("max_restarts"))
    });
    let (code, st) = status();
    assert_eq!(code, 1, "{st}");
    let sc = &st["sidecars"][0];
    assert_eq!(sc["desired"], true, "{sc}");
    assert_ne!(sc["state"], "running", "{sc}");
    // Exactly the limit: two restarts after the first start.
    assert_eq!(desired_restarts(&host.state_dir()), 2, "{}", daemon.log());
    // Nothing starts it again by itself: one more death cue (the stream's
    // own replay is the same) finds the limit still reached.
    assert!(
        daemon.log().contains("sidecar died"),
        "the restarts came from engine events\n{}",
        daemon.log()
    );
}

/// The restart times the desired table holds for the one dnsmasq sidecar.
fn desired_restarts(state: &Path) -> usize {
    let dir = state.join("desired/dnsmasq");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if let Some(r) = v["restarts"].as_array() {
                return r.len();
            }
        }
    }
    panic!("no desired entry in {}", dir.display());
}

#[test]
fn watch_restarts_a_killed_sidecar_and_never_a_stopped_one() {
    if !common::privileged("watch restarts a SIGKILLed sidecar on the engine's event") {
        return;
    }
    killed_sidecar_runs_again_and_a_kill_script_stop_does_not(Mode::Watch);
}

#[test]
fn restart_service_restarts_a_killed_sidecar_and_never_a_stopped_one() {
    if !common::privileged("watch --restarts-only restarts a SIGKILLed sidecar") {
        return;
    }
    killed_sidecar_runs_again_and_a_kill_script_stop_does_not(Mode::PathUnits);
}

#[test]
fn watch_stops_a_crash_loop_at_the_limit() {
    if !common::privileged("watch stops restarting a crash-looping sidecar") {
        return;
    }
    crash_loop_stops_at_the_limit_and_status_says_so(Mode::Watch);
}

#[test]
fn restart_service_stops_a_crash_loop_at_the_limit() {
    if !common::privileged("watch --restarts-only stops restarting a crash-looping sidecar") {
        return;
    }
    crash_loop_stops_at_the_limit_and_status_says_so(Mode::PathUnits);
}
