//! A simulated reboot under a real systemd manager (`systemd --user`, see
//! tests/systemd), with the generated units, the real wrapper, real
//! namespaces and real podman.
//!
//! Before the "reboot" three dnsmasq sidecars run (namespaces A, B, C) and,
//! with the path unit stopped, two requests wait in the queue (for D and E).
//! The reboot: the units stop, every sidecar container of the test is
//! removed and every namespace of the test deleted (only this test's: the
//! machine is shared), and the boot id the state recorded for the last sync
//! is replaced by another (the kernel's cannot change in a test); the host
//! state directory and the queue stay otherwise. The
//! agent then makes B and E again (new namespaces under the old names,
//! another inode each: the old ones are held open across the re-creation so
//! that the kernel cannot hand out the same inode number) and the units
//! start again, the backstop's run first, as at boot.
//!
//! Asserted: nothing runs in a missing or wrong namespace; the desired
//! entries of A, B and C are dropped with their reason in the log and in
//! `status`; the queued requests for D (gone) and E (recreated) are
//! answered with a failure naming the namespace, never started; and the
//! agent's fresh requests for B and E, made after the reboot, are served in
//! the new namespaces.
//!
//! Test-only drop-in: `Environment=CONTAINERS_CONF=...` on the services,
//! because podman on these test machines needs runc and lower ulimits
//! (tests/scripts/containers.conf); a production host needs none.

mod common;
mod systemd;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Netns;
use common::podman_host::PodmanHost;
use sidespawn::host::config::HostConfig;
use systemd::{Manager, UserManager};

const PATH_UNIT: &str = "sidespawn@dnsmasq.path";
const SERVICE: &str = "sidespawn@dnsmasq.service";
const BACKSTOP: &str = "sidespawn-backstop.service";
/// Bounds for a loaded 2-core machine, not targets.
const TIMEOUT: Duration = Duration::from_secs(180);

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
        let host = PodmanHost::builder("sidespawn-reboot")
            .profile(serde_json::json!({"stop_timeout_s": 2}))
            .build();
        let cfg = HostConfig::load(&host.config_path(), true).unwrap();
        let files =
            sidespawn::host::units::generate(&cfg, Path::new(env!("CARGO_BIN_EXE_sidespawn")))
                .unwrap();
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

    fn wait_idle(&self) {
        self.manager
            .wait_for(SERVICE, "ActiveState", "inactive", TIMEOUT)
            .unwrap();
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self
            .manager
            .systemctl(&["stop", PATH_UNIT, SERVICE, BACKSTOP]);
    }
}

/// One Neutron network: its namespace, the tag and pid file of its dnsmasq.
struct Net {
    ns: Netns,
    tag: String,
    pid_file: PathBuf,
    uuid: String,
}

impl Net {
    fn new(s: &Setup) -> Net {
        let uuid = common::uuid();
        Net {
            ns: Netns::new(&format!("qdhcp-{uuid}")),
            tag: format!("dnsmasq-{uuid}"),
            pid_file: s.data().join(format!("{uuid}.pid")),
            uuid,
        }
    }

    /// The agent's dnsmasq call through the wrapper; returns the request id
    /// the wrapper queued (read back from the queue).
    fn request(&self, s: &Setup) {
        let mut call = s.dnsmasq_call(&self.ns, "dnsmasq", &self.tag, &self.pid_file);
        let out = common::output(&mut call);
        common::assert_exit(&call, &out, 0);
    }

    fn container(&self, s: &Setup) -> String {
        common::sidecar_name(&s.join("state"), "dnsmasq", &self.tag)
    }

    /// The pid of the container's daemon when it runs.
    fn running_pid(&self, s: &Setup) -> Option<u32> {
        let out = common::output(common::podman().args([
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}}",
            &self.container(s),
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        let (state, pid) = text.trim().split_once(' ')?;
        (out.status.success() && state == "running")
            .then(|| pid.parse().ok())
            .flatten()
    }

    /// Waits until its sidecar runs, and checks the daemon is in this very
    /// namespace (by inode) with this network's argv.
    fn assert_served(&self, s: &Setup) {
        common::wait_until(TIMEOUT, &format!("{} runs", self.tag), || {
            self.running_pid(s).is_some()
        });
        let pid = self.running_pid(s).unwrap();
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino();
        assert_eq!(
            ino,
            self.ns.inode(),
            "{} runs in another namespace",
            self.tag
        );
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains(&self.uuid));
    }
}

/// The reboot's end for a namespace: deleted, and with `again` made anew
/// under its name while the old one is held open, so the new one has
/// another inode.
fn reboot_namespace(net: &Net, again: bool) {
    let old = File::open(net.ns.path()).unwrap();
    let old_ino = old.metadata().unwrap().ino();
    net.ns.delete();
    if again {
        net.ns.recreate();
        assert_ne!(net.ns.inode(), old_ino);
    }
    drop(old);
}

/// The acknowledgement of the queued request for `net`.
fn ack_for(s: &Setup, id: &str) -> Option<serde_json::Value> {
    s.acks("dnsmasq").into_iter().find(|a| a["id"] == id)
}

#[test]
fn reboot_drops_what_vanished_refuses_stale_requests_and_serves_fresh_ones() {
    let Some(s) = Setup::start("a simulated reboot under a real systemd manager") else {
        return;
    };
    let nets: Vec<Net> = (0..5).map(|_| Net::new(&s)).collect();
    let [a, b, c, d, e] = &nets[..] else {
        unreachable!()
    };
    for n in [a, b, c] {
        n.request(&s);
    }
    for n in [a, b, c] {
        n.assert_served(&s);
    }
    s.wait_idle();

    // Requests the agent queues while the host is going down.
    s.manager.systemctl_ok(&["stop", PATH_UNIT]);
    d.request(&s);
    e.request(&s);
    let queued = common::queue_records(&s.queue_root(), "dnsmasq");
    assert_eq!(queued.len(), 2);
    let id_of = |n: &Net| {
        queued
            .iter()
            .find(|r| r["tag"] == n.tag.as_str())
            .and_then(|r| r["id"].as_str())
            .unwrap_or_else(|| panic!("no queued request for {}: {queued:?}", n.tag))
            .to_owned()
    };
    let (id_d, id_e) = (id_of(d), id_of(e));

    // The reboot: containers and namespaces gone, state and queue kept.
    for name in s.containers(true) {
        common::run(common::podman().args(["rm", "-f", "-t", "0", &name]));
    }
    for (n, again) in [(a, false), (b, true), (c, false), (d, false), (e, true)] {
        reboot_namespace(n, again);
    }
    // And a new boot id: the state says the last sync ran in another boot.
    std::fs::write(
        s.join("state/boot/dnsmasq"),
        "00000000-0000-0000-0000-00000000b007\n",
    )
    .unwrap();

    // The units start again: the boot run of the backstop, then the path
    // unit (whose level trigger sees the queued requests).
    s.manager.systemctl_ok(&["start", BACKSTOP]);
    s.manager.systemctl_ok(&["start", PATH_UNIT]);
    common::wait_until(TIMEOUT, "the queued requests are answered", || {
        ack_for(&s, &id_d).is_some() && ack_for(&s, &id_e).is_some()
    });
    s.manager
        .wait_for(BACKSTOP, "ActiveState", "inactive", TIMEOUT)
        .unwrap();
    s.wait_idle();
    let log = s.manager.log_text();

    // Nothing started anywhere: every namespace it had is gone or another.
    assert_eq!(s.containers(true), Vec::<String>::new(), "{log}");
    for (id, n, why) in [(&id_d, d, "does not exist"), (&id_e, e, "was replaced")] {
        let ack = ack_for(&s, id).unwrap();
        assert_ne!(ack["result"], "ok", "{ack}");
        let message = ack["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(n.ns.name()) && message.contains(why),
            "{}: {ack}\n{log}",
            n.tag
        );
    }
    // The desired entries of the vanished sidecars are dropped, each with
    // its reason logged and shown by status.
    let desired = s.join("state/desired/dnsmasq");
    let left: Vec<_> = std::fs::read_dir(&desired)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "desired entries left: {left:?}\n{log}");
    let status: serde_json::Value = serde_json::from_str(&s.ok(&["status", "--json"])).unwrap();
    let dropped = status["kinds"][0]["dropped"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (n, why) in [
        (a, "does not exist"),
        (b, "was replaced"),
        (c, "does not exist"),
    ] {
        assert!(
            log.contains("forgetting the desired sidecar")
                && log.contains(&format!("dnsmasq/tag/{}", n.tag)),
            "{}: not in the log\n{log}",
            n.tag
        );
        assert!(
            dropped
                .iter()
                .any(|x| x["key"] == format!("dnsmasq/tag/{}", n.tag)
                    && x["reason"].as_str().is_some_and(|r| r.contains(why))),
            "{}: not in status: {status}",
            n.tag
        );
    }

    // The agent, up again, asks for B and E in their new namespaces.
    b.request(&s);
    e.request(&s);
    b.assert_served(&s);
    e.assert_served(&s);
    s.wait_idle();
    assert_eq!(
        s.containers(false),
        {
            let mut v = vec![b.container(&s), e.container(&s)];
            v.sort();
            v
        },
        "{}",
        s.manager.log_text()
    );
    for unit in [SERVICE, BACKSTOP] {
        assert_eq!(s.manager.show(unit, "Result"), "success", "{unit}");
    }
}
