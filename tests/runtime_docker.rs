//! `Docker` against a real docker daemon (the test's own, see `tests/common/docker_host.rs`):
//! a sidecar is started in a named network namespace through the entry helper, and the test
//! checks from the host what the helper promises — the daemon is the container's main process,
//! in that namespace, with exactly the profile's capabilities (no `CAP_SYS_ADMIN` in any set) —
//! then drives every call of the runtime seam and its error classification: listing scoped by
//! instance, "name already in use", signals, "not running", "no such container", idempotent
//! removal, the followed event stream, inspection of the command and image checks.
//!
//! Needs root, podman (for the local test image), ip and docker.io; skipped with a message
//! otherwise, failed instead under `SIDESPAWN_REQUIRE_PRIVILEGED=1`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::Duration;

use common::docker_host::{self, DockerDaemon};
use sidespawn::host::runtime::{
    Docker, EventAction, Network, RunSpec, Runtime, RuntimeError, State, labels,
};
use sidespawn::shared::record::Signal;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// The capability sets of `pid` from `/proc/<pid>/status`, by field (`CapEff`, ...).
fn caps(pid: u32) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap")
                .then(|| (k.to_owned(), u64::from_str_radix(v.trim(), 16).unwrap()))
        })
        .collect()
}

fn spec(name: &str, instance: &str, image: &str, ns: &common::Netns) -> RunSpec {
    RunSpec {
        name: name.to_owned(),
        image: image.to_owned(),
        labels: [
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::INSTANCE, instance),
            (labels::KIND, "dnsmasq"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        network: Network::Namespace(ns.path()),
        pid_host: true,
        cap_add: vec!["NET_ADMIN".to_owned()],
        entrypoint: Some("sh".to_owned()),
        command: vec![
            "-c".to_owned(),
            "exec sleep 600".to_owned(),
            "sh".to_owned(),
        ],
        // What a request may carry: it reaches the program only.
        daemon_argv: vec!["--privileged".to_owned(), String::new(), "a b".to_owned()],
        ..RunSpec::default()
    }
}

#[test]
fn docker_sidecar_joins_its_namespace_with_exactly_its_capabilities() {
    let what = "runtime_docker: the seam on a real docker daemon";
    if !common::privileged(what)
        || !common::gate(
            what,
            "docker (dockerd and its CLI)",
            &docker_host::missing(),
        )
    {
        return;
    }
    let images = common::ensure_images();
    let daemon = DockerDaemon::start();
    daemon.load(&images.agent);
    let instance = format!("rt{}", std::process::id());
    let rt = Docker::new(
        daemon.cli(),
        Duration::from_secs(120),
        common::static_wrapper(),
    )
    .with_env("DOCKER_HOST", daemon.host());
    let ns = common::Netns::new(&common::unique("sdk-rt"));
    let name = common::unique("sidespawn-rt-docker");
    let s = spec(&name, &instance, &images.agent, &ns);

    // Events are followed from before the first start.
    let mut events = rt.events(&instance).unwrap();
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for e in events.by_ref() {
            if tx.send(e).is_err() {
                break;
            }
        }
    });

    let id = rt.run(&s).unwrap();
    assert_eq!(id.len(), 64, "{id}");

    let listed = rt.list(&instance).unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let c = &listed[0];
    assert_eq!(
        (c.name.as_str(), &c.state),
        (name.as_str(), &State::Running)
    );
    assert!(c.pid > 0 && c.started_at > 0, "{c:#?}");
    assert!(
        rt.list("someone_else").unwrap().is_empty(),
        "scoped by instance"
    );

    // The daemon is the main process (same pid: Neutron's pid file and kill scripts work), in
    // the namespace, with the profile's capabilities and nothing the helper needed.
    let pid = c.pid;
    common::wait_until(
        Duration::from_secs(30),
        "the helper exec'd the daemon",
        || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"sleep\x00600"))
        },
    );
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(
        (netns.dev(), netns.ino()),
        (ns.dev(), ns.inode()),
        "in the namespace"
    );
    let caps = caps(pid);
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(
            caps[set] & (1 << CAP_SYS_ADMIN),
            0,
            "{set} holds CAP_SYS_ADMIN: {caps:?}"
        );
    }
    assert_ne!(
        caps["CapEff"] & (1 << CAP_NET_ADMIN),
        0,
        "the profile's NET_ADMIN: {caps:?}"
    );

    // The command comes back as podman reports it: the profile's arguments, then the request's.
    let inspected = rt.inspect(&name).unwrap();
    assert_eq!(
        inspected.command,
        ["-c", "exec sleep 600", "sh", "--privileged", "", "a b"]
    );
    assert_eq!(inspected.container.pid, pid);

    assert_eq!(rt.run(&s), Err(RuntimeError::NameInUse(name.clone())));
    rt.kill(&name, Signal::Hup)
        .unwrap_or_else(|e| panic!("{e}"));
    daemon.wait_not_running(&name);
    assert_eq!(
        rt.kill(&name, Signal::Term),
        Err(RuntimeError::NotRunning(name.clone()))
    );
    assert_eq!(rt.list(&instance).unwrap()[0].state, State::Exited);

    rt.remove(&name).unwrap();
    rt.remove(&name).unwrap();
    assert_eq!(
        rt.kill(&name, Signal::Hup),
        Err(RuntimeError::NoSuchContainer(name.clone()))
    );
    assert!(matches!(
        rt.inspect(&name),
        Err(RuntimeError::NoSuchContainer(_))
    ));
    assert!(matches!(
        rt.stop(&name, Duration::from_secs(1)),
        Err(RuntimeError::NoSuchContainer(_))
    ));

    // Start, death and removal came through the stream, with our labels.
    let mut actions = Vec::new();
    while !actions.contains(&EventAction::Removed) {
        let e = seen
            .recv_timeout(Duration::from_secs(60))
            .expect("an event within a minute")
            .unwrap();
        assert_eq!(e.name, name);
        assert_eq!(e.labels.get(labels::INSTANCE), Some(&instance));
        actions.push(e.action);
    }
    assert!(actions.contains(&EventAction::Started), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, EventAction::Died { .. })),
        "{actions:?}"
    );

    rt.ensure_image(&images.agent, false).unwrap();
    assert!(
        rt.ensure_image("localhost/sidespawn-no-such:1", false)
            .is_err()
    );
    assert!(rt.version().unwrap().starts_with("Docker version"));
}
