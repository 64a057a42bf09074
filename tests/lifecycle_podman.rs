//! Sidecar lifecycle with real podman, namespaces and DHCP: a dnsmasq the
//! agent asked for is killed with SIGKILL, and the backstop's
//! `sidespawn sync --full` starts it again — same argv, next generation —
//! after which a DHCP client on a veth pair gets its lease again.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use common::podman_host::PodmanHost;

/// The common host (`common::podman_host`) with a dnsmasq profile that can serve DHCP.
struct Host(PodmanHost);

common::podman_host::deref_to_host!(Host, 0);

impl Host {
    /// `kind_extra` is merged into the dnsmasq profile.
    fn new(kind_extra: serde_json::Value) -> Host {
        Host(
            PodmanHost::builder("sidespawn-lifecycle")
                .kind_dir()
                .config(serde_json::json!({"podman_timeout_ms": 120000}))
                .profile(serde_json::json!({
                    // What Debian's dnsmasq needs to serve DHCP and drop privileges.
                    "cap_add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE"],
                    "stop_timeout_s": 5
                }))
                .profile(kind_extra)
                .build(),
        )
    }

    fn config(&self) -> PathBuf {
        self.config_path()
    }

    /// The wrapper, called the way Neutron's DHCP agent calls dnsmasq.
    fn queue_start(&self, ns: &Netns, tag: &str, args: &[String]) {
        let mut cmd = self.agent_call(ns, "dnsmasq", tag);
        cmd.args(args);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        let out = common::run(common::podman().args(["inspect", name]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    fn status_of(&self, name: &str) -> String {
        common::container_status(name)
    }

    /// Every container of this test, sorted.
    fn containers(&self) -> Vec<String> {
        self.0.containers(true)
    }

    /// The desired table as it is on disk (`state/desired/dnsmasq/`: an
    /// entry file per sidecar, its argv in the file the entry names), as
    /// `{"sidecars": {key: entry with record.argv}}`.
    fn desired(&self) -> serde_json::Value {
        let dir = self.join("state/desired/dnsmasq");
        let read = |p: &std::path::Path| -> serde_json::Value {
            let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_slice(&b).unwrap()
        };
        let mut sidecars = serde_json::Map::new();
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let mut entry = read(&p);
            let argv = read(&dir.join(entry["argv_file"].as_str().unwrap()));
            assert_eq!(argv["id"], entry["record"]["id"], "{}", p.display());
            entry["record"]["argv"] = argv["argv"].clone();
            sidecars.insert(entry["key"].as_str().unwrap().to_owned(), entry);
        }
        serde_json::json!({ "sidecars": sidecars })
    }
}

/// A qdhcp- namespace serving one fixed address to a client namespace over
/// a veth pair, with the files Neutron writes for the network.
struct Network {
    uuid: String,
    ns: Netns,
    client: Netns,
    client_if: String,
    pid_file: PathBuf,
    lease_file: PathBuf,
    args: Vec<String>,
    /// The host's state directory, which its sidecars' names derive from.
    state: PathBuf,
}

const ADDRESS: &str = "10.78.0.10";

impl Network {
    fn new(host: &Host) -> Network {
        let uuid = common::uuid();
        let ns = Netns::new(&format!("qdhcp-{uuid}"));
        let client = Netns::new(&common::unique("sidespawn-client"));
        let (ours, theirs) = ns.veth_pair(&client);
        let b = common::random_bytes::<2>();
        let mac = format!("fa:16:3e:00:{:02x}:{:02x}", b[0], b[1]);
        for args in [
            vec!["-n", ns.name(), "addr", "add", "10.78.0.2/24", "dev", &ours],
            vec!["-n", ns.name(), "link", "set", &ours, "up"],
            vec!["-n", ns.name(), "link", "set", "lo", "up"],
            vec!["-n", client.name(), "link", "set", &theirs, "address", &mac],
            vec!["-n", client.name(), "link", "set", &theirs, "up"],
        ] {
            common::run(Command::new("ip").args(args));
        }
        let net = host.data().join(&uuid);
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(
            net.join("host"),
            format!("{mac},host-10-78-0-10.openstacklocal,{ADDRESS}\n"),
        )
        .unwrap();
        let pid_file = net.join("pid");
        let lease_file = net.join("leases");
        let args = vec![
            "--no-hosts".into(),
            "".into(),
            "--port=0".into(),
            format!("--pid-file={}", pid_file.display()),
            format!("--dhcp-hostsfile={}", net.join("host").display()),
            format!("--dhcp-leasefile={}", lease_file.display()),
            "--bind-dynamic".into(),
            format!("--dhcp-range=set:subnet-{uuid},10.78.0.0,static,255.255.255.0,86400s"),
            "--conf-file=/dev/null".into(),
            // Log to stderr, which `podman logs` shows.
            "--log-facility=-".into(),
        ];
        Network {
            uuid,
            ns,
            client,
            client_if: theirs,
            pid_file,
            lease_file,
            args,
            state: host.join("state"),
        }
    }

    fn tag(&self) -> String {
        format!("dnsmasq-{}", self.uuid)
    }

    fn container(&self) -> String {
        common::sidecar_name(&self.state, "dnsmasq", &self.tag())
    }

    /// The pid in the pid file when it names a live dnsmasq of this network
    /// (Neutron's liveness check) other than `not`.
    fn alive_pid(&self, not: Option<u32>) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (Some(pid) != not && String::from_utf8_lossy(&cmdline).contains(&self.uuid)).then_some(pid)
    }

    fn wait_alive(&self, not: Option<u32>) -> u32 {
        common::wait_until(Duration::from_secs(60), "dnsmasq is alive", || {
            self.alive_pid(not).is_some()
        });
        self.alive_pid(not).unwrap()
    }

    /// One DHCP exchange from the client namespace; true when a lease came.
    fn dhcp(&self) -> bool {
        let mut cmd = self.client.exec("busybox");
        cmd.args([
            "udhcpc",
            "-i",
            &self.client_if,
            "-n",
            "-q",
            "-f",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ]);
        let out = common::output(&mut cmd);
        out.status.success()
            && std::fs::read_to_string(&self.lease_file).is_ok_and(|l| l.contains(ADDRESS))
    }
}

fn ns_inode_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino()
}

fn generation(c: &serde_json::Value) -> u64 {
    c["Config"]["Labels"]["io.sidespawn.generation"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation label: {}", c["Config"]["Labels"]))
}

#[test]
fn killed_dnsmasq_is_restarted_by_the_full_sync_and_serves_dhcp_again() {
    if !common::privileged("a SIGKILLed dnsmasq sidecar is restarted by sync --full") {
        return;
    }
    let host = Host::new(serde_json::json!({}));
    let net = Network::new(&host);
    host.queue_start(&net.ns, &net.tag(), &net.args);
    let summary = host.ok(&["sync"]);
    assert!(summary.contains("started 1"), "{summary}");
    let pid = net.wait_alive(None);
    assert_eq!(ns_inode_of(pid), net.ns.inode());
    assert!(net.dhcp(), "no lease from the first dnsmasq");
    let before = host.inspect(&net.container());
    let g1 = generation(&before);
    let desired = host.desired();
    let entry = &desired["sidecars"][format!("dnsmasq/tag/{}", net.tag())];
    assert_eq!(entry["record"]["argv"], serde_json::json!(net.args));
    assert_eq!(entry["generation"], g1);

    // The daemon dies; podman sees its container exit.
    std::fs::remove_file(&net.lease_file).unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "podman sees the sidecar exit",
        || host.status_of(&net.container()) == "exited",
    );
    let noticed = killed.elapsed();

    // The backstop's run.
    let t = Instant::now();
    let mut cmd = host.sidespawn(&["sync", "--full"]);
    let out = common::output(&mut cmd);
    let sync_took = t.elapsed();
    common::assert_exit(&cmd, &out, 0);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let sync_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!sync_log.contains("removed:"), "{sync_log}");
    assert!(summary.contains("restarts 1"), "{summary}");
    let new_pid = net.wait_alive(Some(pid));
    let alive_after = killed.elapsed();
    assert_eq!(ns_inode_of(new_pid), net.ns.inode());
    let after = host.inspect(&net.container());
    assert_eq!(after["State"]["Status"], "running");
    assert_ne!(after["Id"], before["Id"]);
    assert_eq!(generation(&after), g1 + 1);
    assert_eq!(after["Config"]["Cmd"], before["Config"]["Cmd"]);
    assert!(net.dhcp(), "no lease from the restarted dnsmasq");
    let serving_after = killed.elapsed();
    let desired = host.desired();
    let entry = &desired["sidecars"][format!("dnsmasq/tag/{}", net.tag())];
    assert_eq!(entry["generation"], g1 + 1);
    assert_eq!(entry["restarts"].as_array().map(Vec::len), Some(1));
    assert_eq!(host.containers(), [net.container()]);
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "restart after SIGKILL: podman saw the exit after {noticed:?}; `sync --full` took {sync_took:?}; \
         new dnsmasq alive {alive_after:?} and serving DHCP {serving_after:?} after the kill"
    );

    check_status_json(&host, &net, &after, g1 + 1);

    // A second death within the 5 s backoff is left for a later pass.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "podman sees the sidecar exit",
        || host.status_of(&net.container()) == "exited",
    );
    let restarted_at = entry["restarts"][0].as_u64().unwrap();
    let summary = host.ok(&["sync", "--full"]);
    // Only meaningful when the whole sync ran inside the backoff (a slow
    // machine may have spent it already).
    if common::unix_ms() < restarted_at + 5000 {
        assert!(summary.contains("restarts 0"), "{summary}");
        assert_eq!(host.status_of(&net.container()), "exited");
        // status says so, and exits 1.
        let mut cmd = host.sidespawn(&["status", "--json"]);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 1);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["healthy"], false);
        let sc = &st["sidecars"][0];
        assert_eq!(sc["state"], "exited");
        assert_eq!(sc["desired"], true);
        assert!(
            sc["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("backoff_s")),
            "{sc}"
        );
        assert_eq!(st["kinds"][0]["desired_running"], 0);
    }
}

/// `status --json` after the restart, field by field.
fn check_status_json(host: &Host, net: &Network, c: &serde_json::Value, generation: u64) {
    let mut cmd = host.sidespawn(&["status", "--json"]);
    let out = common::output(&mut cmd);
    if out.status.code() != Some(0) {
        let logs = common::output(common::podman().args(["logs", &net.container()]));
        let state = host.inspect(&net.container())["State"].clone();
        panic!(
            "status --json failed; sidecar state {state}, log:\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&st),
        [
            "healthy",
            "instance",
            "kinds",
            "sidecars",
            "state_error",
            "unlabelled"
        ]
    );
    assert_eq!(st["healthy"], true);
    assert_eq!(
        st["instance"],
        sidespawn::host::config::instance_id(&host.join("state")).as_str()
    );
    assert!(st["unlabelled"].is_array(), "{st}");
    assert_eq!(st["state_error"], serde_json::Value::Null);
    let k = &st["kinds"][0];
    assert_eq!(st["kinds"].as_array().unwrap().len(), 1);
    assert_eq!(
        keys(k),
        [
            "at_limit",
            "desired",
            "desired_running",
            "dropped",
            "error",
            "kind",
            "last_sync",
            "max_sidecars",
            "oldest_pending_age_s",
            "pending",
            "queue_depth",
            "rejects_since_last_sync",
            "restart",
            "sidecars"
        ]
    );
    assert_eq!(k["max_sidecars"], 2048);
    assert_eq!(k["sidecars"], 1);
    assert_eq!(k["at_limit"], false);
    assert_eq!(k["dropped"], serde_json::json!([]));
    assert_eq!(k["kind"], "dnsmasq");
    assert_eq!(k["queue_depth"], 0);
    assert_eq!(k["pending"], false);
    assert_eq!(k["oldest_pending_age_s"], serde_json::Value::Null);
    assert_eq!(k["error"], serde_json::Value::Null);
    assert_eq!(k["rejects_since_last_sync"], 0);
    assert_eq!(k["desired"], 1);
    assert_eq!(k["desired_running"], 1);
    let ls = &k["last_sync"];
    assert_eq!(ls["ok"], true);
    assert_eq!(ls["error"], serde_json::Value::Null);
    assert_eq!(ls["consecutive_failures"], 0);
    assert_eq!(ls["claimed"], 0, "the full sync claimed nothing");
    assert_eq!(ls["failed"], 0);
    assert_eq!(ls["rejected"], 0);
    assert_eq!(ls["total_claimed"], 1);
    assert_eq!(ls["total_rejected"], 0);
    let (last, prev) = (
        ls["last_sync_ms"].as_u64().unwrap(),
        ls["previous_sync_ms"].as_u64().unwrap(),
    );
    assert!(
        prev > 0 && prev <= last && last <= common::unix_ms(),
        "{ls}"
    );
    assert_eq!(
        k["restart"],
        serde_json::json!({"enabled": true, "backoff_s": 5, "max_restarts": 5, "window_s": 600, "restarts_in_window": 1})
    );

    assert_eq!(st["sidecars"].as_array().unwrap().len(), 1);
    let sc = &st["sidecars"][0];
    assert_eq!(
        keys(sc),
        [
            "desired",
            "generation",
            "health",
            "image",
            "kind",
            "last_error",
            "name",
            "netns",
            "pid",
            "request_id",
            "restarts",
            "state",
            "tag",
            "uptime_s"
        ]
    );
    assert_eq!(sc["name"], net.container());
    assert_eq!(sc["kind"], "dnsmasq");
    assert_eq!(sc["netns"], net.ns.name());
    assert_eq!(sc["tag"], net.tag());
    assert_eq!(sc["state"], "running");
    assert_eq!(sc["pid"], c["State"]["Pid"]);
    assert!(sc["uptime_s"].as_u64().is_some_and(|u| u < 600), "{sc}");
    assert_eq!(sc["generation"], generation);
    assert_eq!(sc["image"], c["ImageName"]);
    assert_eq!(
        sc["request_id"],
        c["Config"]["Labels"]["io.sidespawn.request-id"]
    );
    assert_eq!(sc["desired"], true);
    assert_eq!(sc["restarts"], 1);
    assert_eq!(sc["last_error"], serde_json::Value::Null);
    assert_eq!(
        sc["health"],
        serde_json::Value::Null,
        "no health_cmd configured"
    );
}

#[test]
fn gc_removes_only_undesired_leftovers_and_logs_finds_sidecars() {
    if !common::privileged("sidespawn gc and logs against real podman") {
        return;
    }
    let host = Host::new(serde_json::json!({"restart": {"enabled": false}}));
    let net = Network::new(&host);
    host.queue_start(&net.ns, &net.tag(), &net.args);
    host.ok(&["sync"]);
    net.wait_alive(None);

    // logs: by namespace, tag and name, all the same sidecar's log.
    for target in [net.ns.name().to_owned(), net.tag(), net.container()] {
        let mut cmd = host.sidespawn(&["logs", &target]);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
        // podman logs keeps the container's streams apart; dnsmasq logs
        // to stderr.
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("started, version"), "logs {target}: {text:?}");
    }
    let mut cmd = host.sidespawn(&["logs", "qdhcp-no-such"]);
    let out = common::output(&mut cmd);
    common::assert_exit(&cmd, &out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sidecar"));

    // A leftover of ours that nothing wants (a created, never started
    // container), beside the desired sidecar, dead with restarts off.
    let images = common::ensure_images();
    let stray = common::sidecar_name(&host.join("state"), "dnsmasq", &common::unique("stray"));
    let instance = sidespawn::host::config::instance_id(&host.join("state"));
    let _guard = common::Container::new(&stray);
    common::run(common::podman().args([
        "create",
        "--name",
        &stray,
        "--label=io.sidespawn.managed-by=sidespawn",
        &format!("--label=io.sidespawn.instance={instance}"),
        "--label=io.sidespawn.kind=dnsmasq",
        &format!("--label=test.sidespawn.run={}", host.run_label()),
        &images.dnsmasq,
        "true",
    ]));
    let pid = net.wait_alive(None);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "podman sees the sidecar exit",
        || host.status_of(&net.container()) == "exited",
    );

    let dry = host.ok(&["gc", "--dry-run"]);
    assert!(
        dry.contains(&format!(
            "would remove {stray} (created and no longer desired)"
        )),
        "{dry}"
    );
    assert!(!dry.contains(&net.container()), "{dry}");
    assert_eq!(host.status_of(&stray), "created");
    let done = host.ok(&["gc"]);
    assert!(done.contains(&format!("removed {stray}")), "{done}");
    assert_eq!(host.containers(), [net.container()]);
    // The desired sidecar stays for the operator to see (and status to report).
    assert_eq!(host.status_of(&net.container()), "exited");
}

/// Extra tags of the test's dnsmasq image, removed (untagged) on drop.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = common::output(common::podman().args([
                "untag",
                &common::ensure_images().dnsmasq,
                t,
            ]));
        }
    }
}

/// Runs `sidespawn ARGS` while watching each network's dnsmasq: returns,
/// per network, the time from its old daemon's death to the new one being
/// alive (Neutron's check: the pid file's pid runs with the uuid in its
/// cmdline), and the command's stdout.
fn measure_gaps(host: &Host, nets: &[&Network], args: &[&str]) -> (Vec<Duration>, String) {
    let old: Vec<u32> = nets.iter().map(|n| n.wait_alive(None)).collect();
    let child = host
        .sidespawn(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut gone: Vec<Option<Instant>> = vec![None; nets.len()];
    let mut back: Vec<Option<Instant>> = vec![None; nets.len()];
    let alive = |pid: u32, uuid: &str| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(uuid))
    };
    // A measurement, not a wait: poll as fast as is reasonable.
    while back.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the replacement did not finish"
        );
        let now = Instant::now();
        for (i, n) in nets.iter().enumerate() {
            if gone[i].is_none() && !alive(old[i], &n.uuid) {
                gone[i] = Some(now);
            }
            if back[i].is_none() && n.alive_pid(Some(old[i])).is_some() {
                back[i] = Some(now);
                gone[i].get_or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gaps = gone
        .iter()
        .zip(&back)
        .map(|(g, b)| b.unwrap().saturating_duration_since(g.unwrap()))
        .collect();
    (gaps, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn upgrade_and_rollback_replace_sidecars_one_batch_at_a_time() {
    if !common::privileged("upgrade and rollback of dnsmasq sidecars between two image tags") {
        return;
    }
    let images = common::ensure_images();
    let base = common::unique("localhost/sidespawn-lifecycle-dnsmasq");
    let (a, b) = (format!("{base}:a"), format!("{base}:b"));
    let _tags = Tags(vec![a.clone(), b.clone()]);
    for t in [&a, &b] {
        common::run(common::podman().args(["tag", &images.dnsmasq, t]));
    }
    let host = Host::new(serde_json::json!({"image": a}));
    let nets = [Network::new(&host), Network::new(&host)];
    for n in &nets {
        host.queue_start(&n.ns, &n.tag(), &n.args);
    }
    host.ok(&["sync"]);
    let gens: Vec<u64> = nets
        .iter()
        .map(|n| generation(&host.inspect(&n.container())))
        .collect();
    for n in &nets {
        assert!(n.dhcp());
    }

    // The configuration names image b; nothing changes until upgrade.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.config()).unwrap()).unwrap();
    config["kinds"]["dnsmasq"]["image"] = serde_json::json!(b);
    std::fs::write(host.config(), config.to_string()).unwrap();
    host.ok(&["sync", "--full"]);
    for n in &nets {
        assert_eq!(host.inspect(&n.container())["ImageName"], a.as_str());
    }

    let refs: Vec<&Network> = nets.iter().collect();
    let (up_gaps, out) = measure_gaps(
        &host,
        &refs,
        &["upgrade", "--kind", "dnsmasq", "--max-parallel", "1"],
    );
    assert!(out.contains("2 replaced"), "{out}");
    for (n, g) in nets.iter().zip(&gens) {
        let c = host.inspect(&n.container());
        assert_eq!(c["ImageName"], b.as_str());
        assert!(generation(&c) > *g);
        // (The lease file stays: dnsmasq keeps it open; udhcpc's exit says.)
        if !n.dhcp() {
            let logs = common::output(common::podman().args(["logs", &n.container()]));
            panic!(
                "no lease after the upgrade; {} log:\n{}",
                n.container(),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
    }
    let images_state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.join("state/images/dnsmasq.json")).unwrap())
            .unwrap();
    assert_eq!(images_state["previous"], a.as_str());

    let (back_gaps, out) = measure_gaps(&host, &refs, &["rollback", "--kind", "dnsmasq"]);
    assert!(out.contains("2 replaced"), "{out}");
    for n in &nets {
        assert_eq!(host.inspect(&n.container())["ImageName"], a.as_str());
        // (The lease file stays: dnsmasq keeps it open; udhcpc's exit says.)
        assert!(n.dhcp(), "no lease after the rollback");
    }
    // Generations only ever grow: upgrade then rollback is two steps.
    for (n, g) in nets.iter().zip(&gens) {
        assert_eq!(generation(&host.inspect(&n.container())), g + 4);
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "service gap per sidecar (old dnsmasq gone -> new one alive): upgrade {up_gaps:?}, rollback {back_gaps:?}\n{out}"
    );
}

/// Images this test imported, removed on drop.
struct Imported(Vec<String>);

impl Drop for Imported {
    fn drop(&mut self) {
        for i in &self.0 {
            if !common::quiet(common::podman().args(["rmi", "-f", i])) {
                eprintln!("warning: could not remove image {i}");
            }
        }
    }
}

/// Imports, as `reference`, an image holding a static busybox as `/bin/sh`
/// and, when `script` is given, that script as `/usr/sbin/dnsmasq`.
fn import_busybox_image(dir: &std::path::Path, reference: &str, script: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join(reference.replace(['/', ':'], "_"));
    for d in ["usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
    let busybox = common::find_in_path("busybox").expect("busybox (busybox-static)");
    std::fs::copy(&busybox, root.join("usr/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("usr/bin/sh")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    if let Some(script) = script {
        let p = root.join("usr/sbin/dnsmasq");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tarball = root.with_extension("tar");
    common::run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );
    common::run(common::podman().arg("import").arg(&tarball).arg(reference));
}

/// Points the host's dnsmasq profile at `image`.
fn configure_image(host: &Host, image: &str) {
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.config()).unwrap()).unwrap();
    config["kinds"]["dnsmasq"]["image"] = serde_json::json!(image);
    std::fs::write(host.config(), config.to_string()).unwrap();
}

/// What identifies a serving sidecar: its container id, image and the
/// inode of the namespace its daemon runs in.
fn serving(host: &Host, n: &Network) -> (String, String, u64) {
    let c = host.inspect(&n.container());
    assert_eq!(c["State"]["Status"], "running", "{}", n.container());
    let pid = n.wait_alive(None);
    assert_eq!(
        ns_inode_of(pid),
        n.ns.inode(),
        "{} left its namespace",
        n.container()
    );
    assert!(n.dhcp(), "{} serves no lease", n.container());
    (
        c["Id"].as_str().unwrap().to_owned(),
        c["ImageName"].as_str().unwrap().to_owned(),
        n.ns.inode(),
    )
}

#[test]
fn an_upgrade_to_a_broken_image_leaves_every_sidecar_serving() {
    if !common::privileged("upgrade of dnsmasq sidecars to missing, unrunnable and crashing images")
    {
        return;
    }
    let images = common::ensure_images();
    let base = common::unique("localhost/sidespawn-upgrade-dnsmasq");
    let (good_a, good_b) = (format!("{base}:a"), format!("{base}:b"));
    let (missing, no_daemon, crashing) = (
        format!("{base}:missing"),
        format!("{base}:no-daemon"),
        format!("{base}:crashing"),
    );
    let _tags = Tags(vec![good_a.clone(), good_b.clone()]);
    let _imported = Imported(vec![no_daemon.clone(), crashing.clone()]);
    for t in [&good_a, &good_b] {
        common::run(common::podman().args(["tag", &images.dnsmasq, t]));
    }
    let scratch = common::TempDir::new("sidespawn-upgrade-images");
    // No dnsmasq at all: its version probe cannot start.
    import_busybox_image(scratch.path(), &no_daemon, None);
    // Answers the version probe like dnsmasq, but its daemon exits at once.
    import_busybox_image(
        scratch.path(),
        &crashing,
        Some(
            "#!/bin/sh\ncase \" $* \" in *' --version '*) echo 'Dnsmasq version 2.89 (cannot serve)'; exit 0;; esac\necho 'dnsmasq: this build exits at once' >&2\nexit 3\n",
        ),
    );

    let host = Host::new(serde_json::json!({"image": good_a}));
    let nets = [Network::new(&host), Network::new(&host)];
    for n in &nets {
        host.queue_start(&n.ns, &n.tag(), &n.args);
    }
    host.ok(&["sync"]);
    let before: Vec<_> = nets.iter().map(|n| serving(&host, n)).collect();

    // 1. Missing, and 2. present but unable to start its program: refused
    // before anything is touched.
    for (image, why) in [
        (&missing, "not present"),
        (&no_daemon, "cannot start its program"),
    ] {
        configure_image(&host, image);
        let mut cmd = host.sidespawn(&["upgrade", "--kind", "dnsmasq"]);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(image.as_str())
                && err.contains(why)
                && err.contains("nothing was replaced"),
            "{}",
            common::explain(&cmd, &out)
        );
        for (n, b) in nets.iter().zip(&before) {
            assert_eq!(&serving(&host, n), b, "{image} touched {}", n.container());
        }
    }

    // 3. Answers its probe, but the daemon exits at once: the first
    // replacement is put back on the old image and the upgrade stops.
    configure_image(&host, &crashing);
    let mut cmd = host.sidespawn(&["upgrade", "--kind", "dnsmasq", "--max-parallel", "1"]);
    let out = common::output(&mut cmd);
    common::assert_exit(&cmd, &out, 1);
    let text = common::explain(&cmd, &out);
    assert!(
        text.contains("did not come up")
            && text.contains("1 put back")
            && text.contains("exited with code 3"),
        "{text}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 replaced, 1 put back"), "{text}");
    eprintln!("upgrade to an image whose daemon exits at once:\n{stdout}");
    let mut put_back = 0;
    for (n, b) in nets.iter().zip(&before) {
        let now = serving(&host, n);
        assert_eq!(now.1, good_a, "{} is not on its old image", n.container());
        assert_eq!(now.2, b.2);
        if now.0 != b.0 {
            put_back += 1;
            assert!(
                stdout.contains(&format!("put back {}", n.container())),
                "{text}"
            );
        }
    }
    assert_eq!(put_back, 1, "{text}");
    let desired = host.desired();
    assert!(
        desired["sidecars"]
            .as_object()
            .unwrap()
            .values()
            .any(|d| d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("put back on {good_a}")))),
        "{desired}"
    );

    // The agent's resync repeats its requests: they keep the image that
    // works, untouched.
    let ids: Vec<String> = nets.iter().map(|n| serving(&host, n).0).collect();
    for n in &nets {
        host.queue_start(&n.ns, &n.tag(), &n.args);
    }
    let summary = host.ok(&["sync"]);
    assert!(summary.contains("unchanged 2"), "{summary}");
    for (n, id) in nets.iter().zip(&ids) {
        assert_eq!(&serving(&host, n).0, id);
    }

    // 4. A good image upgrades them all, with the gaps reported.
    configure_image(&host, &good_b);
    let out = host.ok(&["upgrade", "--kind", "dnsmasq", "--max-parallel", "1"]);
    assert!(out.contains("2 replaced, 0 put back"), "{out}");
    assert!(out.contains("gap per sidecar: median"), "{out}");
    for n in &nets {
        assert_eq!(serving(&host, n).1, good_b);
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "upgrade to a good image:\n{out}");
}

#[test]
fn failing_health_check_shows_in_status_and_restarts_the_sidecar() {
    if !common::privileged("health_cmd through podman exec") {
        return;
    }
    let host = Host::new(serde_json::json!({"health_cmd": ["dnsmasq", "--test"]}));
    let net = Network::new(&host);
    host.queue_start(&net.ns, &net.tag(), &net.args);
    host.ok(&["sync"]);
    let pid = net.wait_alive(None);
    // Plain status runs no check; --check does, and stores what it found.
    let st: serde_json::Value = serde_json::from_str(&host.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["sidecars"][0]["health"], "not checked yet");
    let st: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json", "--check"])).unwrap();
    assert_eq!(st["sidecars"][0]["health"], "healthy");
    let st: serde_json::Value = serde_json::from_str(&host.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["sidecars"][0]["health"], "healthy");
    let g = generation(&host.inspect(&net.container()));

    // The same daemon, now judged by a check that fails.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.config()).unwrap()).unwrap();
    config["kinds"]["dnsmasq"]["health_cmd"] = serde_json::json!(["dnsmasq", "--no-such-option"]);
    std::fs::write(host.config(), config.to_string()).unwrap();
    let mut cmd = host.sidespawn(&["status", "--json", "--check"]);
    let out = common::output(&mut cmd);
    common::assert_exit(&cmd, &out, 1);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        st["sidecars"][0]["health"]
            .as_str()
            .is_some_and(|h| h.contains("health check failed")),
        "{st}"
    );
    assert_eq!(st["kinds"][0]["desired_running"], 0);
    let summary = host.ok(&["sync", "--full"]);
    assert!(summary.contains("restarts 1"), "{summary}");
    net.wait_alive(Some(pid));
    assert_eq!(generation(&host.inspect(&net.container())), g + 1);
}

/// `sidespawn watch` run by a test, killed (SIGKILL) and reaped on drop.
struct WatchDaemon(std::process::Child);

impl Drop for WatchDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_restarts_a_sidecar_whose_health_check_starts_failing() {
    if !common::privileged("watch's health rounds restart an unhealthy dnsmasq") {
        return;
    }
    let host = Host::new(serde_json::json!({}));
    // The check reads a configuration file the test controls: empty, it
    // passes; with an unknown option, `dnsmasq --test` fails.
    let check_conf = host.data().join("health-check.conf");
    std::fs::write(&check_conf, "").unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.config()).unwrap()).unwrap();
    config["kinds"]["dnsmasq"]["health_cmd"] = serde_json::json!([
        "dnsmasq",
        "--test",
        format!("--conf-file={}", check_conf.display())
    ]);
    config["kinds"]["dnsmasq"]["health_interval_s"] = serde_json::json!(1);
    std::fs::write(host.config(), config.to_string()).unwrap();
    let net = Network::new(&host);
    let log = std::fs::File::create(host.join("watch.log")).unwrap();
    let _watch = WatchDaemon(
        host.sidespawn(&["watch", "--kind", "dnsmasq"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let watch_log = || std::fs::read_to_string(host.join("watch.log")).unwrap_or_default();
    host.queue_start(&net.ns, &net.tag(), &net.args);
    let pid = net.wait_alive(None);
    let g = generation(&host.inspect(&net.container()));
    // Healthy rounds store their result (plain status shows it) and leave
    // the sidecar alone.
    common::wait_until(
        Duration::from_secs(60),
        "a health round found it healthy",
        || {
            let st: serde_json::Value =
                serde_json::from_str(&host.ok(&["status", "--json"])).unwrap();
            st["sidecars"][0]["health"] == "healthy"
        },
    );
    assert_eq!(net.alive_pid(None), Some(pid), "{}", watch_log());

    std::fs::write(&check_conf, "no-such-option-for-this-test\n").unwrap();
    let failing = Instant::now();
    let new_pid = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(p) = net.alive_pid(Some(pid)) {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "not restarted; watch log:\n{}",
                watch_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let took = failing.elapsed();
    // Healthy again before the next round, so the policy's limit is not
    // what the rest of the test sees.
    std::fs::write(&check_conf, "").unwrap();
    assert!(generation(&host.inspect(&net.container())) > g);
    assert_eq!(ns_inode_of(new_pid), net.ns.inode());
    assert!(net.dhcp(), "no lease from the restarted dnsmasq");
    let log = watch_log();
    assert!(log.contains("health check failed"), "{log}");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "health check failing -> dnsmasq restarted by watch: {took:?} (health_interval_s 1)"
    );
}

#[test]
fn a_corrupt_desired_entry_is_rebuilt_from_the_podman_container() {
    if !common::privileged("a corrupt desired entry is rebuilt from `podman container inspect`") {
        return;
    }
    let host = Host::new(serde_json::json!({}));
    let net = Network::new(&host);
    host.queue_start(&net.ns, &net.tag(), &net.args);
    let summary = host.ok(&["sync"]);
    assert!(summary.contains("started 1"), "{summary}");
    let pid = net.wait_alive(None);
    let before = host.inspect(&net.container());
    let dir = host.join("state/desired/dnsmasq");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"{\"v\": 2,").unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "podman sees the sidecar exit",
        || host.status_of(&net.container()) == "exited",
    );
    let summary = host.ok(&["sync", "--full"]);
    assert!(summary.contains("restarts 1"), "{summary}");
    net.wait_alive(Some(pid));
    let after = host.inspect(&net.container());
    assert_eq!(after["Config"]["Cmd"], before["Config"]["Cmd"]);
    assert_eq!(generation(&after), generation(&before) + 1);
    let desired = host.desired();
    let entry = &desired["sidecars"][format!("dnsmasq/tag/{}", net.tag())];
    assert_eq!(entry["record"]["argv"], serde_json::json!(net.args));
    assert_eq!(
        entry["record"]["id"],
        before["Config"]["Labels"]["io.sidespawn.request-id"]
    );
    let aside = std::fs::read_dir(host.join("state/desired/corrupt"))
        .unwrap()
        .count();
    assert_eq!(aside, 2, "the entry and its argv file");
    assert!(net.dhcp(), "no lease from the restarted dnsmasq");
}
