//! The generated units driving the real `sidespawn sync` and real podman
//! under a real systemd manager (`systemd --user`, see tests/systemd): a
//! wrapper call becomes a running sidecar with no manual step; a burst of
//! 2000 calls from 20 callers, arriving while syncs run, is claimed exactly
//! once; sidecars and their conmon outlive the oneshot service; a request
//! queued while the path unit is stopped is picked up when it starts, and by
//! the backstop service; a sidecar whose daemon is SIGKILLed is started again by
//! `sidespawn-restart.service` on the engine's event.
//!
//! Test-only drop-in: `Environment=CONTAINERS_CONF=...` on the services,
//! because podman on these test machines needs runc and lower ulimits
//! (tests/scripts/containers.conf); a production host needs none.

mod common;
mod systemd;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::Netns;
use common::podman_host::PodmanHost;
use sidespawn::host::config::HostConfig;
use systemd::{Manager, UserManager};

const PATH_UNIT: &str = "sidespawn@dnsmasq.path";
const SERVICE: &str = "sidespawn@dnsmasq.service";
/// Bounds for a loaded 2-core machine, not targets.
const TIMEOUT: Duration = Duration::from_secs(180);

/// One systemd-driven deployment at a time: a burst must not slow the
/// others into their timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

struct Setup {
    // Drop order: the manager first, then podman's containers, then files.
    manager: UserManager,
    host: PodmanHost,
}

common::podman_host::deref_to_host!(Setup, host);

impl Setup {
    fn start(test: &str) -> Option<Setup> {
        if !common::privileged(test) {
            return None;
        }
        let manager = match UserManager::start() {
            Ok(m) => m,
            Err(needs) => {
                common::skip(test, &needs);
                return None;
            }
        };
        // No queue directories yet: the units' tmpfiles snippet makes them, as on a host.
        let host = PodmanHost::builder("sidespawn-sd")
            .profile(serde_json::json!({"stop_timeout_s": 2}))
            .build();
        let config_path = host.config_path();
        let cfg = HostConfig::load(&config_path, true).unwrap();
        let files =
            sidespawn::host::units::generate(&cfg, Path::new(env!("CARGO_BIN_EXE_sidespawn")))
                .unwrap();
        // The tmpfiles.d snippet makes the queue directories, as on a host.
        let snippet = files
            .iter()
            .find(|f| f.rel_path.to_string_lossy().contains("tmpfiles.d"))
            .expect("a tmpfiles.d snippet");
        let snippet_path = host.join("sidespawn.conf");
        std::fs::write(&snippet_path, &snippet.contents).unwrap();
        systemd::tmpfiles_create(&snippet_path, None);
        manager.install(&files);
        let env = format!(
            "[Service]\nEnvironment=CONTAINERS_CONF={}\n",
            common::containers_conf().display()
        );
        manager.drop_in("sidespawn@.service", "test-podman", &env);
        manager.drop_in("sidespawn-backstop.service", "test-podman", &env);
        manager.systemctl_ok(&["enable", "--now", PATH_UNIT]);
        Some(Setup { manager, host })
    }

    /// A Neutron-shaped dnsmasq call through the real wrapper.
    fn request(&self, ns: &Netns, tag: &str, pid_file: &Path) -> Command {
        self.dnsmasq_call(ns, "dnsmasq", tag, pid_file)
    }

    /// Running sidecars of this test, sorted.
    fn containers(&self) -> Vec<String> {
        self.host.containers(false)
    }

    fn running(&self, name: &str) -> bool {
        common::container_status(name) == "running"
    }

    fn acks(&self) -> Vec<serde_json::Value> {
        self.host.acks("dnsmasq")
    }

    fn kind_status(&self) -> serde_json::Value {
        self.host.kind_status("dnsmasq")
    }

    fn assert_units_healthy(&self) {
        for unit in [PATH_UNIT, SERVICE] {
            let result = self.manager.show(unit, "Result");
            assert_eq!(
                result,
                "success",
                "{unit}\n{}",
                self.manager.status_report()
            );
        }
        assert_eq!(self.manager.show(PATH_UNIT, "ActiveState"), "active");
    }

    fn wait_idle(&self) {
        self.manager
            .wait_for(SERVICE, "ActiveState", "inactive", TIMEOUT)
            .unwrap();
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The host's own drop then removes the containers.
        let _ = self.manager.systemctl(&["stop", PATH_UNIT, SERVICE]);
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn wrapper_call_becomes_a_sidecar_that_outlives_the_oneshot() {
    let _serial = lock();
    let Some(s) = Setup::start("path unit → sync → podman sidecar under a real systemd") else {
        return;
    };
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let name = common::sidecar_name(&s.join("state"), "dnsmasq", &tag);
    let pid_file = s.join(format!("data/{uuid}.pid"));

    let t0 = Instant::now();
    let mut call = s.request(&ns, &tag, &pid_file);
    let out = common::output(&mut call);
    common::assert_exit(&call, &out, 0);
    common::wait_until(TIMEOUT, "the sidecar runs", || s.running(&name));
    let latency = t0.elapsed();
    s.wait_idle();
    eprintln!("request → running sidecar through the path unit: {latency:?}");

    // The oneshot has exited; with KillMode=control-group everything in its
    // cgroup was killed. The sidecar and its conmon must still be alive.
    assert!(
        s.running(&name),
        "the sidecar died with the oneshot: {}\n{}",
        common::run(common::podman().args(["inspect", "--format", "{{json .State}}", &name])),
        s.manager.log_text()
    );
    let conmon: u32 =
        common::run(common::podman().args(["inspect", "--format", "{{.State.ConmonPid}}", &name]))
            .trim()
            .parse()
            .unwrap();
    assert!(
        conmon > 0 && Path::new(&format!("/proc/{conmon}")).exists(),
        "conmon {conmon} is gone"
    );
    // Where conmon lives depends on podman's cgroup manager: its own scope
    // under systemd's, this service's cgroup under cgroupfs (as on hybrid
    // hierarchies), where KillMode=process keeps it alive.
    let cgroup = std::fs::read_to_string(format!("/proc/{conmon}/cgroup")).unwrap();
    eprintln!("conmon {conmon} cgroups after the oneshot exited:\n{cgroup}");
    assert_eq!(s.manager.show(SERVICE, "ActiveState"), "inactive");
    let pid: u32 =
        common::run(common::podman().args(["inspect", "--format", "{{.State.Pid}}", &name]))
            .trim()
            .parse()
            .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(&uuid));
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        ns.inode(),
        "dnsmasq runs in the requested namespace"
    );
    s.assert_units_healthy();
}

#[test]
fn burst_of_2000_calls_from_20_callers_is_claimed_exactly_once() {
    let _serial = lock();
    let Some(s) = Setup::start("2000-call burst under a real systemd") else {
        return;
    };
    const CALLERS: usize = 20;
    const CALLS: usize = 100;
    const SIDECARS: usize = 40;
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tags: Vec<String> = (0..SIDECARS)
        .map(|_| format!("dnsmasq-{}", common::uuid()))
        .collect();

    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..CALLERS {
            let (s, ns, tags) = (&s, &ns, &tags);
            scope.spawn(move || {
                for i in 0..CALLS {
                    let tag = &tags[(c * CALLS + i) % SIDECARS];
                    let pid_file = s.join(format!("data/{tag}.pid"));
                    let out = s.request(ns, tag, &pid_file).output().unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
        }
    });
    let written = t0.elapsed();
    common::wait_until(TIMEOUT, "every request is acknowledged", || {
        s.acks().len() == CALLERS * CALLS
    });
    s.wait_idle();
    let drained = t0.elapsed();
    eprintln!("2000 calls written in {written:?}; all acknowledged after {drained:?}");

    let acks = s.acks();
    assert_eq!(acks.len(), CALLERS * CALLS);
    assert!(
        acks.iter().all(|a| a["result"] == "ok"),
        "{:?}",
        acks.iter().find(|a| a["result"] != "ok")
    );
    let status = s.kind_status();
    assert_eq!(
        status["total_claimed"],
        (CALLERS * CALLS) as u64,
        "claimed exactly once: {status}"
    );
    assert_eq!(status["total_rejected"], 0);
    let mut want: Vec<String> = tags
        .iter()
        .map(|t| common::sidecar_name(&s.join("state"), "dnsmasq", t))
        .collect();
    want.sort();
    assert_eq!(s.containers(), want, "one running sidecar per tag");
    assert_eq!(
        std::fs::metadata(s.queue_root().join("dnsmasq/queue.jsonl"))
            .unwrap()
            .len(),
        0
    );
    assert!(!s.queue_root().join("dnsmasq/pending").exists());
    s.assert_units_healthy();
}

#[test]
fn request_queued_while_stopped_is_picked_up_on_start_and_by_the_backstop() {
    let _serial = lock();
    let Some(s) = Setup::start("requests queued while the path unit is stopped") else {
        return;
    };
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));

    s.manager.systemctl_ok(&["stop", PATH_UNIT]);
    let tag1 = format!("dnsmasq-{}", common::uuid());
    let out = s
        .request(&ns, &tag1, &s.join("data/1.pid"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        common::queue_records(&s.queue_root(), "dnsmasq").len(),
        1,
        "still queued"
    );
    s.manager.systemctl_ok(&["start", PATH_UNIT]);
    common::wait_until(TIMEOUT, "the path unit's start picks it up", || {
        s.running(&common::sidecar_name(&s.join("state"), "dnsmasq", &tag1))
    });
    s.wait_idle();

    s.manager.systemctl_ok(&["stop", PATH_UNIT]);
    let tag2 = format!("dnsmasq-{}", common::uuid());
    let out = s
        .request(&ns, &tag2, &s.join("data/2.pid"))
        .output()
        .unwrap();
    assert!(out.status.success());
    // The timer's service, as the timer fires it at boot and periodically.
    assert_eq!(
        s.manager.show("sidespawn-backstop.timer", "UnitFileState"),
        "disabled"
    );
    s.manager
        .systemctl_ok(&["enable", "--now", "sidespawn-backstop.timer"]);
    s.manager
        .systemctl_ok(&["start", "sidespawn-backstop.service"]);
    common::wait_until(TIMEOUT, "the backstop picks it up", || {
        s.running(&common::sidecar_name(&s.join("state"), "dnsmasq", &tag2))
    });
    assert_eq!(
        s.manager.show("sidespawn-backstop.service", "Result"),
        "success"
    );
    assert!(common::queue_records(&s.queue_root(), "dnsmasq").is_empty());
}

#[test]
fn restart_service_brings_back_a_killed_sidecar() {
    let _serial = lock();
    let Some(s) = Setup::start("sidespawn-restart.service restarts a SIGKILLed sidecar") else {
        return;
    };
    let env = format!(
        "[Service]\nEnvironment=CONTAINERS_CONF={}\n",
        common::containers_conf().display()
    );
    s.manager
        .drop_in("sidespawn-restart.service", "test-podman", &env);
    s.manager
        .systemctl_ok(&["enable", "--now", "sidespawn-restart.service"]);
    // Stopped even when an assertion fails: the daemon is the manager's child.
    struct StopRestart<'a>(&'a Setup);
    impl Drop for StopRestart<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .manager
                .systemctl(&["stop", "sidespawn-restart.service"]);
        }
    }
    let _stop = StopRestart(&s);
    s.manager
        .wait_for(
            "sidespawn-restart.service",
            "ActiveState",
            "active",
            TIMEOUT,
        )
        .unwrap();

    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let pid_file = s.join(format!("data/{uuid}.pid"));
    let mut call = s.request(&ns, &tag, &pid_file);
    let out = common::output(&mut call);
    common::assert_exit(&call, &out, 0);
    let alive = |not: Option<u32>| -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (Some(pid) != not && String::from_utf8_lossy(&cmdline).contains(&uuid)).then_some(pid)
    };
    common::wait_until(TIMEOUT, "dnsmasq is alive", || alive(None).is_some());
    let pid = alive(None).unwrap();
    s.wait_idle();

    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(TIMEOUT, "dnsmasq is alive again", || {
        alive(Some(pid)).is_some()
    });
    eprintln!(
        "SIGKILLed dnsmasq alive again through sidespawn-restart.service after {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.manager.show("sidespawn-restart.service", "ActiveState"),
        "active",
        "{}",
        s.manager.status_report()
    );
}
