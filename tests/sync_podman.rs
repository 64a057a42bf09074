//! `sidespawn sync` against real podman and real namespaces: a queued request
//! becomes a running dnsmasq in its namespace, repeats are free, changed argv
//! replaces, kill scripts signal and stop, and a sync killed at any step
//! converges when run again.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Netns;
use common::podman_host::PodmanHost;

/// The common host (`common::podman_host`) with the podman shim that logs every call, and a
/// wrapper that waits for its sidecar as long as podman may take.
struct Host(PodmanHost);

common::podman_host::deref_to_host!(Host, 0);

impl Host {
    fn new() -> Host {
        Host::with_config(|_| {})
    }

    /// A host whose configuration `adjust` changes before it is written.
    fn with_config(adjust: impl FnOnce(&mut serde_json::Value) + 'static) -> Host {
        Host(
            PodmanHost::builder("sidespawn-sync")
                .kind_dir()
                .logging_shim()
                .config(serde_json::json!({"podman_timeout_ms": 120000}))
                .profile(serde_json::json!({"stop_timeout_s": 5}))
                .wrapper(serde_json::json!({"kinds": {"dnsmasq": {"wait_timeout_ms": 120000}}}))
                .adjust(adjust)
                .build(),
        )
    }

    /// The wrapper, called the way Neutron calls dnsmasq.
    fn queue_start(&self, ns: &Netns, tag: &str, args: &[&str]) {
        let mut cmd = self.agent_call(ns, "dnsmasq", tag);
        cmd.args(args);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
    }

    fn sync_cmd(&self) -> Command {
        self.sidespawn(&["sync", "-v"])
    }

    fn sync(&self) -> String {
        self.ok(&["sync", "-v"])
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        let out = common::run(common::podman().args(["inspect", name]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    /// Every container of this test, sorted.
    fn containers(&self) -> Vec<String> {
        self.0.containers(true)
    }

    fn ack(&self, id: &str) -> Option<serde_json::Value> {
        let p = self
            .queue_root()
            .join("dnsmasq/acks")
            .join(format!("{id}.json"));
        std::fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }
}

fn dnsmasq_args(pid_file: &Path, extra: &str) -> Vec<String> {
    vec![
        "--no-hosts".into(),
        "".into(),
        "--port=0".into(),
        "--conf-file=/dev/null".into(),
        format!("--pid-file={}", pid_file.display()),
        format!("--dhcp-hostsfile={extra}"),
    ]
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn request_becomes_sidecar_repeat_is_free_change_replaces() {
    if !common::privileged("sync starts a dnsmasq sidecar with real podman") {
        return;
    }
    let host = Host::new();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let pid_file = host.data().join(format!("{uuid}.pid"));
    let args = dnsmasq_args(&pid_file, "/dev/null");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    host.queue_start(&ns, &tag, &args);
    let summary = host.sync();
    assert!(summary.contains("started 1"), "{summary}");
    let name = common::sidecar_name(&host.join("state"), "dnsmasq", &tag);
    let c = host.inspect(&name);
    assert_eq!(c["State"]["Status"], "running");
    assert_eq!(c["HostConfig"]["PidMode"], "host");
    assert_eq!(
        c["HostConfig"]["NetworkMode"],
        format!("ns:/run/netns/qdhcp-{uuid}")
    );
    assert_eq!(c["HostConfig"]["Privileged"], false);
    assert_eq!(c["Config"]["Labels"]["io.sidespawn.tag"], tag.as_str());
    // Neutron's liveness check: the pid file's pid is a host pid whose
    // cmdline names the network.
    let pid = common::read_pid(&pid_file);
    assert!(cmdline(pid).contains(&uuid), "{}", cmdline(pid));
    // And dnsmasq really runs in the requested namespace.
    let ns_ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(ns_ino.unwrap(), ns.inode());

    // The same request again: acknowledged, and podman is only asked to list.
    host.clear_calls();
    host.queue_start(&ns, &tag, &args);
    let summary = host.sync();
    assert!(summary.contains("unchanged 1"), "{summary}");
    let calls = host.podman_calls();
    assert!(calls.iter().all(|c| c.starts_with("ps ")), "{calls:?}");
    assert_eq!(host.inspect(&name)["Id"], c["Id"]);

    // Changed argv: replaced, new container, new generation.
    host.clear_calls();
    let args2 = dnsmasq_args(&pid_file, "/dev/null2");
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    host.queue_start(&ns, &tag, &args2);
    let summary = host.sync();
    assert!(summary.contains("replaced 1"), "{summary}");
    let c2 = host.inspect(&name);
    assert_ne!(c2["Id"], c["Id"]);
    let g1: u64 = c["Config"]["Labels"]["io.sidespawn.generation"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let g2: u64 = c2["Config"]["Labels"]["io.sidespawn.generation"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(g2 > g1);
    assert_eq!(host.containers(), [name]);
}

#[test]
fn kill_scripts_hup_keeps_pid_and_term_removes() {
    if !common::privileged("dnsmasq-kill against a real sidecar") {
        return;
    }
    let host = Host::new();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let pid_file = host.data().join(format!("{uuid}.pid"));
    let args = dnsmasq_args(&pid_file, "/dev/null");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.queue_start(&ns, &tag, &args);
    host.sync();
    let pid = common::read_pid(&pid_file);
    let name = common::sidecar_name(&host.join("state"), "dnsmasq", &tag);

    // HUP: the kill script waits for the host; run the sync meanwhile.
    let mut hup = host.kill_script(&ns, "HUP", pid);
    let hup = hup
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(Duration::from_secs(30), "the HUP request is queued", || {
        !common::queue_records(&host.queue_root(), "dnsmasq").is_empty()
    });
    host.sync();
    let out: Output = hup.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::read_pid(&pid_file), pid, "HUP keeps the process");
    assert!(cmdline(pid).contains(&uuid));

    // Unknown pid: exit 1 with Neutron's tolerated text.
    let mut unknown = host.kill_script(&ns, "15", 3_999_999);
    let child = unknown
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(Duration::from_secs(30), "the request is queued", || {
        !common::queue_records(&host.queue_root(), "dnsmasq").is_empty()
    });
    host.sync();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such process"));

    // 15: stopped and removed before the kill script returns.
    let mut term = host.kill_script(&ns, "15", pid);
    let child = term
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "the TERM request is queued",
        || !common::queue_records(&host.queue_root(), "dnsmasq").is_empty(),
    );
    let summary = host.sync();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("removed 1"), "{summary}");
    let exists = common::output(common::podman().args(["container", "exists", &name]));
    assert_eq!(
        exists.status.code(),
        Some(1),
        "container removed once the kill script returned"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || !cmdline(pid).contains(&uuid));
}

#[test]
fn sync_killed_at_every_step_converges() {
    if !common::privileged("crash safety of sync with real podman") {
        return;
    }
    for point in ["after-claim", "after-plan", "mid-run", "after-acks"] {
        let host = Host::new();
        let mut guards = Vec::new();
        let mut names = Vec::new();
        for _ in 0..3 {
            let uuid = common::uuid();
            let ns = Netns::new(&format!("qdhcp-{uuid}"));
            let tag = format!("dnsmasq-{uuid}");
            let pid_file = host.data().join(format!("{uuid}.pid"));
            let args = dnsmasq_args(&pid_file, "/dev/null");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            host.queue_start(&ns, &tag, &args);
            names.push(common::sidecar_name(&host.join("state"), "dnsmasq", &tag));
            guards.push(ns);
        }
        let ids: Vec<String> = common::queue_records(&host.queue_root(), "dnsmasq")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();

        let mut crashing = host.sync_cmd();
        crashing.env("SIDESPAWN_FAULT", point);
        let out = common::output(&mut crashing);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: {}",
            common::explain(&crashing, &out)
        );

        let summary = host.sync();
        let mut have = host.containers();
        have.sort();
        names.sort();
        assert_eq!(
            have, names,
            "{point}: exactly one container per request ({summary})"
        );
        for n in &names {
            assert_eq!(
                host.inspect(n)["State"]["Status"],
                "running",
                "{point}: {n}"
            );
        }
        for id in &ids {
            let ack = host
                .ack(id)
                .unwrap_or_else(|| panic!("{point}: no ack for {id}"));
            assert_eq!(ack["result"], "ok", "{point}: {ack}");
        }
        assert!(common::queue_records(&host.queue_root(), "dnsmasq").is_empty());
        common::reliability(
            &format!("sync killed (SIGKILL) at `{point}` with 3 requests queued, then run again"),
            "converges: exactly one running container per request, each acknowledged ok, the queue empty",
            &format!(
                "killed by signal 9; rerun `{}`: {} containers, all running; {} acks ok",
                summary.trim(),
                have.len(),
                ids.len()
            ),
        );
    }
}

#[test]
fn failed_start_with_80_kib_of_argv_reaches_the_waiting_wrapper() {
    if !common::privileged("a failing podman run with a long command line is acknowledged") {
        return;
    }
    // No such image, and no pull: podman fails at once with its reason.
    let host = Host::with_config(|c| {
        c["kinds"]["dnsmasq"]["image"] = "localhost/sidespawn-no-such-image:1".into();
        c["kinds"]["dnsmasq"]["podman_args"] = serde_json::json!(["--pull=never"]);
        // Above the default max_argv_bytes: raised, so the request reaches podman.
        c["kinds"]["dnsmasq"]["max_argv_bytes"] = serde_json::json!(1 << 20);
    });
    std::fs::write(
        host.join("wrapper.json"),
        serde_json::json!({"queue_root": host.queue_root(),
            "kinds": {"dnsmasq": {"start_wait": true, "wait_timeout_ms": 60000}}})
        .to_string(),
    )
    .unwrap();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    // 800 arguments of 100 bytes: the command line alone is over the ack's 64 KiB.
    let args: Vec<String> = (0..800).map(|i| format!("--dhcp-host={i:0>88}")).collect();
    let mut cmd = host.agent_call(&ns, "dnsmasq", &tag);
    cmd.args(&args);
    let wrapper =
        std::thread::spawn(move || common::output_within(&mut cmd, Duration::from_secs(90)));
    common::wait_until(
        Duration::from_secs(30),
        "the wrapper queues its request",
        || common::queue_records(&host.queue_root(), "dnsmasq").len() == 1,
    );
    let id = common::queue_records(&host.queue_root(), "dnsmasq")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = common::output(&mut host.sync_cmd());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("failed 1"), "{summary}");

    let w = wrapper.join().unwrap();
    let stderr = String::from_utf8_lossy(&w.stderr);
    assert_eq!(w.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("request {id} failed")) && stderr.contains("image not known"),
        "{stderr}"
    );
    assert!(host.containers().is_empty(), "{:?}", host.containers());
}

/// Runs `sidespawn status --json` for the host.
fn status_json(host: &Host) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
    cmd.arg("--config")
        .arg(host.join("config.json"))
        .args(["status", "--json"])
        .env("CONTAINERS_CONF", common::containers_conf());
    let out = common::output(&mut cmd);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::explain(&cmd, &out)))
}

#[test]
fn start_takes_over_the_container_an_interrupted_sync_created() {
    if !common::privileged("a start whose container an interrupted sync created") {
        return;
    }
    let host = Host::new();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let pre_run = host.join("pre-run");
    let pre_id = host.join("pre-run.id");
    let cases = [
        // The killed sync's own `podman run`, exactly: adopted.
        ("same", "podman \"$@\" > PRE_ID\n"),
        // An older start of the same sidecar (another argv hash): replaced.
        (
            "stale",
            "n=$#\nfor a in \"$@\"; do\n  case \"$a\" in --label=io.sidespawn.argv-hash=*) a=--label=io.sidespawn.argv-hash=0000000000000000 ;; esac\n  set -- \"$@\" \"$a\"\ndone\nshift $n\npodman \"$@\" > PRE_ID\n",
        ),
    ];
    for (case, script) in cases {
        let tag = format!("dnsmasq-{uuid}-{case}");
        let name = common::sidecar_name(&host.join("state"), "dnsmasq", &tag);
        let pid_file = host.data().join(format!("{uuid}-{case}.pid"));
        let args = dnsmasq_args(&pid_file, "/dev/null");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.queue_start(&ns, &tag, &args);
        let id = common::queue_records(&host.queue_root(), "dnsmasq")[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        std::fs::write(
            &pre_run,
            script.replace("PRE_ID", &pre_id.display().to_string()),
        )
        .unwrap();

        let summary = host.sync();
        assert!(
            summary.contains("started 1") && summary.contains("failed 0"),
            "{case}: {summary}"
        );
        let created = std::fs::read_to_string(&pre_id).unwrap().trim().to_owned();
        assert!(
            !created.is_empty(),
            "{case}: the pre-run created a container"
        );
        let ack = host.ack(&id).expect("acknowledged");
        assert_eq!(ack["result"], "ok", "{case}: {ack}");
        let c = host.inspect(&name);
        assert_eq!(c["State"]["Status"], "running", "{case}");
        assert_eq!(
            c["Config"]["Labels"]["io.sidespawn.request-id"],
            id.as_str()
        );
        match case {
            "same" => {
                assert_eq!(c["Id"], created.as_str(), "adopted, not replaced");
                let m = ack["message"].as_str().unwrap();
                assert!(m.contains("interrupted sync"), "{m}");
            }
            _ => {
                assert_ne!(c["Id"], created.as_str(), "replaced");
                assert_ne!(
                    c["Config"]["Labels"]["io.sidespawn.argv-hash"],
                    "0000000000000000"
                );
            }
        }
        // Neither a failure nor an automatic restart was counted against it.
        let st = status_json(&host);
        let sc = st["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{case}: {st}"))
            .clone();
        assert_eq!(sc["desired"], true, "{sc}");
        assert_eq!(sc["last_error"], serde_json::Value::Null, "{sc}");
        assert_eq!(sc["restarts"], 0, "{sc}");
        std::fs::remove_file(&pre_id).unwrap();
        let (what, expected) = match case {
            "same" => (
                "the container a killed sync's `podman run` created, with this request's labels, after the next sync listed (podman: name already in use)",
                "adopted: the same container runs on, ack ok, no failure or restart counted",
            ),
            _ => (
                "an older start's container of the same sidecar (other argv hash) created after the next sync listed (podman: name already in use)",
                "replaced: removed and run again, ack ok, no failure or restart counted",
            ),
        };
        common::reliability(
            what,
            expected,
            &common::Redact::new()
                .add(&uuid, "<uuid>")
                .add(&created, "<id>")
                .add(&created[..12], "<id>")
                .apply(&format!(
                    "{}; ack ok: `{}`; container {}; status last_error null, restarts 0",
                    summary.trim(),
                    ack["message"].as_str().unwrap_or(""),
                    if c["Id"] == created.as_str() {
                        "kept"
                    } else {
                        "new"
                    }
                )),
        );
    }
}

#[test]
fn a_start_the_host_state_predicts_takes_over_a_leftover_holding_its_name() {
    if !common::privileged("a predicted start whose name a leftover container holds") {
        return;
    }
    let host = Host::new();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let start = |case: &str| {
        let pid_file = host.data().join(format!("{uuid}-{case}.pid"));
        let args = dnsmasq_args(&pid_file, "/dev/null");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.queue_start(&ns, &format!("dnsmasq-{uuid}-{case}"), &args);
        common::queue_records(&host.queue_root(), "dnsmasq")
            .last()
            .expect("queued")["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The first sync lists, and records what later starts may predict from.
    start("first");
    assert!(host.sync().contains("started 1"));
    let pre_run = host.join("pre-run");
    let pre_id = host.join("pre-run.id");
    let cases = [
        // A killed sync's own `podman run`, running: adopted.
        ("running", "podman \"$@\" > PRE_ID\n"),
        // The same, whose daemon exited since: replaced.
        (
            "exited",
            "podman \"$@\" > PRE_ID && podman stop -t 0 \"$(cat PRE_ID)\" > /dev/null\n",
        ),
    ];
    for (case, script) in cases {
        let name = common::sidecar_name(
            &host.join("state"),
            "dnsmasq",
            &format!("dnsmasq-{uuid}-{case}"),
        );
        let id = start(case);
        std::fs::write(
            &pre_run,
            script.replace("PRE_ID", &pre_id.display().to_string()),
        )
        .unwrap();
        host.clear_calls();
        let summary = host.sync();
        assert!(
            summary.contains("started 1") && summary.contains("failed 0"),
            "{case}: {summary}"
        );
        let calls = host.podman_calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("ps")),
            "{case}: the start acted on the host state's prediction, without listing: {calls:#?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with("inspect") || c.starts_with("container inspect")),
            "{case}: the taken name was inspected: {calls:#?}"
        );
        let created = std::fs::read_to_string(&pre_id).unwrap().trim().to_owned();
        assert!(
            !created.is_empty(),
            "{case}: the pre-run created a container"
        );
        let ack = host.ack(&id).expect("acknowledged");
        assert_eq!(ack["result"], "ok", "{case}: {ack}");
        let c = host.inspect(&name);
        assert_eq!(c["State"]["Status"], "running", "{case}");
        assert_eq!(
            c["Config"]["Labels"]["io.sidespawn.request-id"],
            id.as_str()
        );
        if case == "running" {
            assert_eq!(c["Id"], created.as_str(), "adopted, not replaced");
            let m = ack["message"].as_str().unwrap();
            assert!(m.contains("interrupted sync"), "{m}");
        } else {
            assert_ne!(c["Id"], created.as_str(), "replaced");
        }
        let st = status_json(&host);
        let sc = st["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{case}: {st}"))
            .clone();
        assert_eq!(sc["desired"], true, "{sc}");
        assert_eq!(sc["last_error"], serde_json::Value::Null, "{sc}");
        std::fs::remove_file(&pre_id).unwrap();
        common::reliability(
            &format!(
                "a start of a key the host state does not know, acted on without `podman ps`, finds its name held by a {case} container a killed sync created"
            ),
            if case == "running" {
                "podman run fails name-in-use; the container is inspected and adopted: ack ok, the same container runs on"
            } else {
                "podman run fails name-in-use; the container is inspected, removed and run again: ack ok"
            },
            &common::Redact::new()
                .add(&uuid, "<uuid>")
                .apply(&format!(
                    "{}; no ps; ack ok: `{}`; container {}",
                    summary.trim(),
                    ack["message"].as_str().unwrap_or(""),
                    if c["Id"] == created.as_str() {
                        "kept"
                    } else {
                        "new"
                    }
                ))
                .replace(&created, "<id>")
                .replace(&created[..12], "<id>"),
        );
    }
}

#[test]
fn start_past_max_sidecars_is_rejected_and_status_says_so() {
    if !common::privileged("max_sidecars with real podman") {
        return;
    }
    let host = Host::with_config(|c| c["kinds"]["dnsmasq"]["max_sidecars"] = 1.into());
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let mut ids = Vec::new();
    for i in 0..2 {
        let pid_file = host.data().join(format!("{uuid}-{i}.pid"));
        let args = dnsmasq_args(&pid_file, "/dev/null");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.queue_start(&ns, &format!("dnsmasq-{uuid}-{i}"), &args);
        let queued = common::queue_records(&host.queue_root(), "dnsmasq");
        ids.push(queued[i]["id"].as_str().unwrap().to_owned());
    }
    let summary = host.sync();
    assert!(
        summary.contains("started 1") && summary.contains("rejected 1"),
        "{summary}"
    );
    assert_eq!(
        host.containers(),
        [common::sidecar_name(
            &host.join("state"),
            "dnsmasq",
            &format!("dnsmasq-{uuid}-0")
        )]
    );
    assert_eq!(host.ack(&ids[0]).unwrap()["result"], "ok");
    let refused = host.ack(&ids[1]).unwrap();
    assert_eq!(refused["result"], "rejected");
    assert_eq!(
        refused["message"],
        format!(
            "limit of 1 sidecars for kind dnsmasq reached; raise kinds.dnsmasq.max_sidecars in {}",
            host.join("config.json").display()
        )
    );

    let st = status_json(&host);
    let k = &st["kinds"][0];
    assert_eq!(
        (&k["sidecars"], &k["max_sidecars"], &k["at_limit"]),
        (&1.into(), &1.into(), &true.into()),
        "{k}"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
    cmd.arg("--config")
        .arg(host.join("config.json"))
        .arg("status")
        .env("CONTAINERS_CONF", common::containers_conf());
    let text = String::from_utf8_lossy(&common::output(&mut cmd).stdout).into_owned();
    assert!(
        text.contains("dnsmasq: 1 of 1 sidecars, at the limit"),
        "{text}"
    );
}
