//! Two host configurations on one real podman never touch each other's sidecars.
//!
//! Configurations A and B have their own queue roots and state directories and, on purpose,
//! the very same profile `labels`, so that nothing but the configuration's identity (the
//! `io.sidespawn.instance` label and the instance in the container name) keeps them apart.
//! B runs three sidecars: two dnsmasq, one whose pid A's agent asks to kill and one under a
//! process tag that A's agent uses too, and a third whose namespace is then deleted (an
//! orphan for B, a stranger for A). The third is of kind `radvd` (its profile runs dnsmasq):
//! other tests on this machine may run older sidespawn builds whose orphan scan of `dnsmasq`
//! takes every configuration's sidecars, exactly the fault this test is about, and none of
//! them serves `radvd`. A then kills by B's pid, starts the shared tag, runs `sync --full`, the
//! start-up of `watch`, `gc`, `upgrade`, `rollback`, `status` and `logs`. Every B sidecar must
//! keep its container id and start time: the test counts those that changed and prints the
//! count (`B sidecars touched by A: 0`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use common::podman_host::PodmanHost;

/// Every container of this test carries this label with the test's unique value, in both
/// configurations (the same profile `labels`), for cleanup and nothing else.
const RUN_LABEL: &str = "test.sidespawn.run";

/// One host configuration: the common host (`common::podman_host`) with the test's shared run
/// label, a dnsmasq kind and a radvd kind whose profile runs dnsmasq too.
struct Config(PodmanHost);

common::podman_host::deref_to_host!(Config, 0);

impl Config {
    fn new(name: &'static str, run_label: &str, image: &str) -> Config {
        let host = PodmanHost::builder(&format!("sidespawn-iso-{name}"))
            .run_label(run_label)
            .kind_dir()
            .wrapper(serde_json::json!({"kinds": {"dnsmasq": {"wait_timeout_ms": 120000}}}))
            .build();
        std::fs::create_dir_all(host.queue_root().join("radvd")).unwrap();
        let c = Config(host);
        c.write_config(image);
        c
    }

    fn write_config(&self, image: &str) {
        let mut profile = self.profile(image);
        profile["stop_timeout_s"] = serde_json::json!(5);
        let mut radvd = profile.clone();
        radvd["command"] = serde_json::json!(["dnsmasq"]);
        radvd["foreground_args"] = serde_json::json!(["-k"]);
        radvd["strip_args"] = serde_json::json!([]);
        self.0.write_config(
            serde_json::json!({
                "podman_timeout_ms": 120000,
                "kinds": {"dnsmasq": profile, "radvd": radvd}
            }),
            |_| {},
        );
    }

    fn state(&self) -> PathBuf {
        self.state_dir()
    }

    fn instance(&self) -> String {
        sidespawn::host::config::instance_id(&self.state())
    }

    fn sidecar(&self, tag: &str) -> String {
        self.sidecar_of("dnsmasq", tag)
    }

    fn sidecar_of(&self, kind: &str, tag: &str) -> String {
        common::sidecar_name(&self.state(), kind, tag)
    }

    fn pid_file(&self, tag: &str) -> PathBuf {
        self.data().join(format!("{tag}.pid"))
    }

    /// The agent's `dnsmasq` call in `ns` under `PROCESS_TAG=tag`.
    fn queue_start(&self, ns: &Netns, tag: &str) {
        self.queue_start_of("dnsmasq", ns, tag);
    }

    /// The agent's call of `kind` (its profile runs dnsmasq) in `ns` under `PROCESS_TAG=tag`.
    fn queue_start_of(&self, kind: &str, ns: &Netns, tag: &str) {
        let pid_file = self.pid_file(tag);
        let mut cmd = self.dnsmasq_call(ns, kind, tag, &pid_file);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
    }

    /// The agent's kill script `dnsmasq-kill SIG PID` in `ns`; waits for the host's answer.
    fn kill_script_child(&self, ns: &Netns, sig: &str, pid: u32) -> Child {
        self.kill_script(ns, sig, pid)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs a sidespawn command that must exit 0; returns its stdout.
    fn must(&self, args: &[&str]) -> String {
        self.ok(args)
    }

    fn sync(&self, extra: &[&str]) -> String {
        let mut args = vec!["sync", "-v"];
        args.extend_from_slice(extra);
        self.must(&args)
    }

    fn last_sync_ms(&self) -> u64 {
        std::fs::read(self.state().join("status/dnsmasq.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["last_sync_ms"].as_u64())
            .unwrap_or(0)
    }
}

/// This configuration's containers as podman sees them: name → (id, started at, state).
fn containers_of(instance: &str) -> BTreeMap<String, (String, String, String)> {
    let out = common::run(common::podman().args([
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=io.sidespawn.instance={instance}"),
        "--format",
        "{{.Names}}\t{{.ID}}\t{{.StartedAt}}\t{{.ListContainer.State}}",
    ]));
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_owned(),
                (
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                ),
            ))
        })
        .collect()
}

/// Removes every container of the run, and the image tags, even when the test fails.
struct Cleanup {
    run_label: String,
    tags: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in common::run_containers(&self.run_label, true) {
            let _ = common::output(common::podman().args(["rm", "-f", "-t", "0", &name]));
        }
        for t in &self.tags {
            let _ = common::output(common::podman().args([
                "untag",
                &common::ensure_images().dnsmasq,
                t,
            ]));
        }
    }
}

/// Which of B's sidecars (as recorded in `before`) changed: gone, another container, restarted
/// or no longer running.
fn touched(
    before: &BTreeMap<String, (String, String, String)>,
    now: &BTreeMap<String, (String, String, String)>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(name, was)| now.get(*name) != Some(*was))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn two_configurations_on_one_podman_never_touch_each_others_sidecars() {
    if !common::privileged("two host configurations sharing one real podman") {
        return;
    }
    let images = common::ensure_images();
    let run_label = common::unique("iso");
    let base = common::unique("localhost/sidespawn-iso-dnsmasq");
    let (img1, img2) = (format!("{base}:one"), format!("{base}:two"));
    let _cleanup = Cleanup {
        run_label: run_label.clone(),
        tags: vec![img1.clone(), img2.clone()],
    };
    for t in [&img1, &img2] {
        common::run(common::podman().args(["tag", &images.dnsmasq, t]));
    }
    let a = Config::new("a", &run_label, &img1);
    let b = Config::new("b", &run_label, &img1);
    assert_ne!(a.instance(), b.instance());

    // B's sidecars: one A's agent will try to kill by pid, one whose tag A uses too, one whose
    // namespace goes away.
    let uuids: Vec<String> = (0..3).map(|_| common::uuid()).collect();
    let nss: Vec<Netns> = uuids
        .iter()
        .map(|u| Netns::new(&format!("qdhcp-{u}")))
        .collect();
    let tags: Vec<String> = uuids.iter().map(|u| format!("dnsmasq-{u}")).collect();
    b.queue_start(&nss[0], &tags[0]);
    b.queue_start(&nss[1], &tags[1]);
    b.queue_start_of("radvd", &nss[2], &tags[2]);
    let s = b.sync(&[]);
    assert!(s.contains("started 3"), "{s}");
    // A sidecar from before the instance label: managed by sidespawn, of kind dnsmasq, owned
    // by no configuration that can prove it.
    let legacy = format!("sidespawn-dnsmasq-t-{}", common::unique("legacy"));
    common::run(common::podman().args([
        "create",
        "--name",
        &legacy,
        "--label=io.sidespawn.managed-by=sidespawn",
        "--label=io.sidespawn.kind=dnsmasq",
        "--label=io.sidespawn.key=dnsmasq/tag/legacy",
        &format!("--label={RUN_LABEL}={run_label}"),
        &images.dnsmasq,
        "true",
    ]));
    let legacy_id = common::run(common::podman().args(["inspect", "--format", "{{.Id}}", &legacy]));
    let b_pid = common::read_pid(&b.pid_file(&tags[0]));
    let before = containers_of(&b.instance());
    assert_eq!(before.len(), 3, "{before:?}");
    for name in [
        b.sidecar(&tags[0]),
        b.sidecar(&tags[1]),
        b.sidecar_of("radvd", &tags[2]),
    ] {
        assert_eq!(before[&name].2, "running", "{before:?}");
    }

    // 1. A's agent kills B's pid: A's sync finds no such sidecar of its own.
    let child = a.kill_script_child(&nss[0], "9", b_pid);
    common::wait_until(
        Duration::from_secs(30),
        "A's kill request is queued",
        || !common::queue_records(&a.queue_root(), "dnsmasq").is_empty(),
    );
    let s = a.sync(&[]);
    let out: Output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{s}");
    assert!(stderr.contains("No such process"), "{stderr}");
    assert!(s.contains("signalled 0") && s.contains("removed 0"), "{s}");
    assert!(
        std::fs::read_to_string(format!("/proc/{b_pid}/cmdline"))
            .is_ok_and(|c| c.contains(&uuids[0])),
        "B's dnsmasq {b_pid} still runs"
    );

    // 2. The same tag in A: a container of A's own, beside B's.
    a.queue_start(&nss[1], &tags[1]);
    let s = a.sync(&[]);
    assert!(s.contains("started 1") && s.contains("replaced 0"), "{s}");
    let a_now = containers_of(&a.instance());
    assert_ne!(a.sidecar(&tags[1]), b.sidecar(&tags[1]));
    assert_eq!(
        a_now.get(&a.sidecar(&tags[1])).map(|c| c.2.as_str()),
        Some("running"),
        "{a_now:?}"
    );
    assert_eq!(
        containers_of(&b.instance())[&b.sidecar(&tags[1])].2,
        "running"
    );

    // 3. B's third namespace goes: an orphan for B, a stranger for A's orphan scans and gc.
    let gone = b.sidecar_of("radvd", &tags[2]);
    let mut nss = nss;
    drop(nss.pop());
    let s = a.sync(&["--full"]);
    assert!(s.contains("removed 0"), "{s}");
    let gc = a.must(&["gc"]);
    assert!(!gc.contains(&gone), "{gc}");
    let gc_dry = a.must(&["gc", "--dry-run"]);
    assert!(!gc_dry.contains(&gone), "{gc_dry}");
    // B's own dry run does see its orphan: the scan works, it is only not A's.
    let b_dry = b.must(&["gc", "--dry-run"]);
    assert!(b_dry.contains(&gone), "{b_dry}");

    // 4. The start-up of `watch` in A (a full reconcile with orphan scan).
    let since = a.last_sync_ms();
    let mut watch = a
        .sidespawn(&["watch", "--kind", "dnsmasq", "-v"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while a.last_sync_ms() <= since && started.elapsed() < Duration::from_secs(60) {
        if let Some(st) = watch.try_wait().unwrap() {
            panic!("watch exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = watch.wait().unwrap();
    assert!(a.last_sync_ms() > since, "watch's start-up sync ran");
    assert!(st.success(), "{st}");

    // 5. upgrade and rollback of A: only A's sidecar is replaced.
    let a_before = containers_of(&a.instance());
    a.write_config(&img2);
    let up = a.must(&["upgrade", "--kind", "dnsmasq"]);
    assert!(up.contains("1 replaced"), "{up}");
    let back = a.must(&["rollback", "--kind", "dnsmasq"]);
    assert!(back.contains("1 replaced"), "{back}");
    let a_after = containers_of(&a.instance());
    assert_ne!(
        a_before[&a.sidecar(&tags[1])].0,
        a_after[&a.sidecar(&tags[1])].0,
        "A's own sidecar was replaced"
    );

    // 6. status of A shows none of B's; B's shows its own three.
    // (Exit codes aside: B's orphan makes B unhealthy.)
    let out = common::output(&mut a.sidespawn(&["status", "--json"]));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = st["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, [a.sidecar(&tags[1]).as_str()], "{st}");
    assert_eq!(st["instance"], a.instance().as_str());
    assert!(
        st["unlabelled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == legacy.as_str()),
        "status names the unlabelled container: {st}"
    );
    let out = common::output(&mut b.sidespawn(&["status", "--json"]));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["sidecars"].as_array().unwrap().len(), 3, "{st}");

    // 7. logs in A cannot reach B's sidecar, by name, tag or namespace.
    for target in [
        b.sidecar(&tags[0]),
        tags[0].clone(),
        nss[0].name().to_owned(),
    ] {
        let mut cmd = a.sidespawn(&["logs", &target]);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 1);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no sidecar"),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The shared tag resolves to A's own.
    let out = common::output(&mut a.sidespawn(&["logs", &tags[1]]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing of B's changed: same container, same start, still running.
    let b_now = containers_of(&b.instance());
    let changed = touched(&before, &b_now);
    eprintln!(
        "B sidecars touched by A: {} of {} (kill by pid, same tag, sync --full, watch start-up, gc, upgrade, rollback, status, logs)",
        changed.len(),
        before.len()
    );
    let legacy_now =
        common::run(common::podman().args(["inspect", "--format", "{{.Id}}", &legacy]));
    assert_eq!(
        legacy_now, legacy_id,
        "the unlabelled container is left alone"
    );
    assert!(
        changed.is_empty(),
        "A touched B's {changed:?}\nbefore {before:#?}\nnow {b_now:#?}"
    );
}
