//! End-to-end tests of `sidespawn-wrapper` in real network namespaces and real containers,
//! against its contract: where it queues a request (`QUEUE_ROOT/KIND/queue.jsonl`, one JSON
//! record per line), what the record holds, and its exit codes (0 queued, 1 failure named on
//! stderr, 2 usage). Needs root, podman and ip (see `tests/run.sh`).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Container, Netns, TempDir, TmpfsMount};
use serde_json::{Value, json};

/// The wrapper as cargo built it for this test run, for runs on the host.
fn host_wrapper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sidespawn-wrapper"))
}

/// A queue root with the `dnsmasq` kind directory (which the host creates in production) and a
/// wrapper configuration file pointing at it.
struct Fixture {
    dir: TempDir,
    queue_root: PathBuf,
    config: PathBuf,
}

impl Fixture {
    /// `extra` is merged into the configuration's top-level object.
    fn new(extra: Value) -> Fixture {
        let dir = TempDir::new("sidespawn-wrapper-test");
        let queue_root = dir.join("queue");
        Fixture::with_queue_root(dir, queue_root, extra)
    }

    fn with_queue_root(dir: TempDir, queue_root: PathBuf, extra: Value) -> Fixture {
        fs::create_dir_all(queue_root.join("dnsmasq")).expect("mkdir queue dir");
        let mut config = json!({ "queue_root": queue_root });
        if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        let config_path = dir.join("wrapper.json");
        fs::write(&config_path, config.to_string()).expect("write wrapper config");
        Fixture {
            dir,
            queue_root,
            config: config_path,
        }
    }

    fn records(&self) -> Vec<Value> {
        common::queue_records(&self.queue_root, "dnsmasq")
    }

    /// The one record queued so far.
    #[track_caller]
    fn only_record(&self) -> Value {
        let mut records = self.records();
        assert_eq!(records.len(), 1, "{records:?}");
        records.remove(0)
    }

    fn queue_file(&self) -> PathBuf {
        common::queue_file(&self.queue_root, "dnsmasq")
    }

    /// The host wrapper, with this configuration, run in `ns` (through `ip netns exec`, as
    /// Neutron does) or, with `None`, in the test's own (host) network namespace.
    fn wrapper(&self, ns: Option<&Netns>, program: &Path) -> Command {
        let mut cmd = match ns {
            Some(ns) => ns.exec(program),
            None => Command::new(program),
        };
        cmd.env(common::WRAPPER_CONFIG_ENV, &self.config)
            .env_remove("PROCESS_TAG");
        cmd
    }
}

/// Runs `cmd`, asserting its exit code (showing everything about it otherwise).
#[track_caller]
fn expect_exit(cmd: &mut Command, code: i32) -> Output {
    let out = common::output(cmd);
    common::assert_exit(cmd, &out, code);
    out
}

/// Asserts the fields every start request has.
#[track_caller]
fn assert_start_record(record: &Value, argv: &[&str], ns: &Netns, tag: Option<&str>) {
    assert_eq!(record["v"], 1, "{record}");
    assert_eq!(record["kind"], "dnsmasq", "{record}");
    assert_eq!(record["action"], "start", "{record}");
    assert_eq!(record["argv"], json!(argv), "{record}");
    assert_eq!(record["netns"]["name"], ns.name(), "{record}");
    assert_eq!(record["netns"]["ino"], ns.inode(), "{record}");
    assert_eq!(record["tag"], json!(tag), "{record}");
    assert!(
        record["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{record}"
    );
}

#[test]
fn wrapper_records_the_named_netns_it_runs_in() {
    if !common::privileged("wrapper: identifies the named netns it runs in") {
        return;
    }
    let fixture = Fixture::new(json!({}));
    let ns = Netns::new(&format!("qdhcp-{}", common::uuid()));

    let before = common::unix_ms();
    let out = expect_exit(
        fixture
            .wrapper(Some(&ns), host_wrapper())
            .args(["--kind", "dnsmasq", "--", "a", "b"]),
        0,
    );
    let after = common::unix_ms();
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);

    let record = &fixture.only_record();
    assert_start_record(record, &["a", "b"], &ns, None);
    assert!(
        !record["netns"]["dev"].is_null(),
        "the record must carry the namespace's device: {record}"
    );
    assert!(
        record["ts"]
            .as_u64()
            .is_some_and(|ts| (before..=after).contains(&ts)),
        "ts not within [{before}, {after}]: {record}"
    );
    // What the host's level and edge triggers watch.
    for marker in ["timestamp", "pending"] {
        let path = fixture.queue_root.join("dnsmasq").join(marker);
        assert!(path.exists(), "{} missing after a request", path.display());
    }
}

#[test]
fn wrapper_finds_its_netns_by_the_tags_name_and_never_takes_another_candidate() {
    if !common::privileged("wrapper: finds the netns by PROCESS_TAG's name, checked by inode") {
        return;
    }
    let fixture = Fixture::new(json!({}));
    let uuid = common::uuid();
    // Neutron's names for one id: the wrapper runs in the qrouter- one, and
    // the qdhcp- one (compared first) is another namespace.
    let decoy = Netns::new(&format!("qdhcp-{uuid}"));
    let ns = Netns::new(&format!("qrouter-{uuid}"));
    let tag = format!("haproxy-{uuid}");
    expect_exit(
        fixture
            .wrapper(Some(&ns), host_wrapper())
            .env("PROCESS_TAG", &tag)
            .args(["--kind", "dnsmasq", "--", "a"]),
        0,
    );
    assert_start_record(&fixture.only_record(), &["a"], &ns, Some(&tag));
    fs::write(fixture.queue_file(), b"").expect("empty the queue");

    // A tag naming no namespace here: every entry is compared, and the
    // namespace is still found.
    let other = format!("dnsmasq-{}", common::uuid());
    expect_exit(
        fixture
            .wrapper(Some(&decoy), host_wrapper())
            .env("PROCESS_TAG", &other)
            .args(["--kind", "dnsmasq", "--", "b"]),
        0,
    );
    assert_start_record(&fixture.only_record(), &["b"], &decoy, Some(&other));
}

#[test]
fn wrapper_refuses_to_guess_outside_a_named_netns() {
    if !common::privileged("wrapper: refuses to run in an unnamed netns") {
        return;
    }
    let fixture = Fixture::new(json!({}));
    // The test's own network namespace, the host's, has no name in /run/netns.
    let out = expect_exit(
        fixture
            .wrapper(None, host_wrapper())
            .args(["--kind", "dnsmasq", "--", "a", "b"]),
        1,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("namespace") || stderr.contains("netns"),
        "stderr must say the namespace is the problem: {stderr}"
    );
    assert_eq!(fixture.records(), Vec::<Value>::new());
}

#[test]
fn agent_container_request_is_queued_with_the_exact_argv() {
    if !common::privileged("wrapper: bind-mounted over dnsmasq in an agent container") {
        return;
    }
    let images = common::ensure_images();
    let wrapper = common::static_wrapper();
    let fixture = Fixture::new(json!({}));
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let queue_root = fixture.queue_root.display().to_string();
    let agent = Container::run(
        &common::unique("sidespawn-test-agent"),
        [
            "--privileged".to_owned(),
            "--pid".to_owned(),
            "host".to_owned(),
            "--network".to_owned(),
            "host".to_owned(),
            "-v".to_owned(),
            "/run/netns:/run/netns:shared".to_owned(),
            "-v".to_owned(),
            format!("{queue_root}:{queue_root}"),
            "-v".to_owned(),
            format!("{}:/usr/sbin/dnsmasq:ro", wrapper.display()),
            "-v".to_owned(),
            format!(
                "{}:/etc/sidespawn/wrapper.json:ro",
                fixture.config.display()
            ),
            images.agent.clone(),
            "sleep".to_owned(),
            "infinity".to_owned(),
        ],
    );

    // Exactly what Neutron's DHCP agent runs, empty argument and space included.
    let tag = format!("dnsmasq-{uuid}");
    let argv = [
        "--no-hosts",
        "",
        "--dhcp-range=set:tag0,10.0.0.0,static,255.255.255.0,86400s",
        "--conf-file=/var/lib/neutron/dhcp/x y/conf",
        &format!("--pid-file=/var/lib/neutron/dhcp/{uuid}/pid"),
    ];
    let mut exec = agent.exec();
    exec.args(["ip", "netns", "exec", ns.name(), "env"])
        .arg(format!("PROCESS_TAG={tag}"))
        .arg("dnsmasq")
        .args(argv);
    let out = expect_exit(&mut exec, 0);
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);

    assert_start_record(&fixture.only_record(), &argv, &ns, Some(&tag));
}

#[test]
fn static_wrapper_runs_in_an_image_without_libc() {
    if !common::privileged("wrapper: runs in an image that holds nothing else") {
        return;
    }
    let images = common::ensure_images();
    let fixture = Fixture::new(json!({}));
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let queue_root = fixture.queue_root.display().to_string();
    let config = fixture.config.display().to_string();
    let name = common::unique("sidespawn-test-wrapperonly");
    let _container = Container::new(&name);

    let argv = ["--no-hosts", "", "x y"];
    let mut cmd = common::podman();
    cmd.args(["run", "--rm", "--name", &name, "--network"])
        .arg(format!("ns:{}", ns.path().display()))
        .args(["-v", "/run/netns:/run/netns", "-v"])
        .arg(format!("{queue_root}:{queue_root}"))
        .arg("-v")
        .arg(format!("{config}:{config}:ro"))
        .arg("-e")
        .arg(format!("{}={config}", common::WRAPPER_CONFIG_ENV))
        .arg("-e")
        .arg(format!("PROCESS_TAG={tag}"))
        .args([images.wrapperonly.as_str(), "/usr/sbin/dnsmasq"])
        .args(argv);
    let out = expect_exit(&mut cmd, 0);
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);

    assert_start_record(&fixture.only_record(), &argv, &ns, Some(&tag));
}

#[test]
fn full_queue_filesystem_fails_cleanly_and_recovers() {
    if !common::privileged("wrapper: queue on a full file system") {
        return;
    }
    let tmpfs = TmpfsMount::new("64k");
    let fixture = Fixture::with_queue_root(
        TempDir::new("sidespawn-wrapper-test"),
        tmpfs.path().to_owned(),
        json!({}),
    );
    let ns = Netns::new(&format!("qdhcp-{}", common::uuid()));
    let kind_dir = fixture.queue_root.join("dnsmasq");

    expect_exit(
        fixture
            .wrapper(Some(&ns), host_wrapper())
            .args(["--kind", "dnsmasq", "--", "first"]),
        0,
    );
    let before = fs::read(fixture.queue_file()).expect("read queue");
    assert_eq!(fixture.records().len(), 1);

    // Fill the file system, then free two pages: "almost full".
    let filler = tmpfs.path().join("filler");
    let mut size = 0u64;
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("create filler");
        loop {
            match file.write_all(&[b'f'; 4096]) {
                Ok(()) => size += 4096,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        file.set_len(size.saturating_sub(8192))
            .expect("shrink filler");
    }
    let free = tmpfs.available();
    assert!(free >= 8192, "only {free} bytes free");

    // A record bigger than what is left (plus at most a page of slack in the queue file).
    let big = "x".repeat(5000);
    let big_argv = [big.as_str(); 4];
    assert!(big_argv.len() * big.len() > usize::try_from(free).expect("fits") + 4096);
    let out = expect_exit(
        fixture
            .wrapper(Some(&ns), host_wrapper())
            .args(["--kind", "dnsmasq", "--"])
            .args(big_argv),
        1,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&kind_dir.display().to_string()),
        "stderr must name the queue path under {}: {stderr}",
        kind_dir.display()
    );
    assert_eq!(
        fs::read(fixture.queue_file()).expect("read queue"),
        before,
        "a failed request must leave the queue file as it was"
    );

    // Space again: requests go through, after the untouched first one.
    fs::remove_file(&filler).expect("remove filler");
    expect_exit(
        fixture
            .wrapper(Some(&ns), host_wrapper())
            .args(["--kind", "dnsmasq", "--", "second"]),
        0,
    );
    let after = fs::read(fixture.queue_file()).expect("read queue");
    assert!(after.starts_with(&before), "the first record changed");
    let records = fixture.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["argv"], json!(["first"]));
    assert_eq!(records[1]["argv"], json!(["second"]));
}

#[test]
fn kill_script_form_queues_a_signal_request() {
    if !common::privileged("wrapper: called as dnsmasq-kill") {
        return;
    }
    // Without a host to acknowledge, a kill request must not wait for one.
    let fixture = Fixture::new(json!({ "kinds": { "dnsmasq": { "kill_wait": false } } }));
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    // Multi-call: the basename of argv[0] decides.
    let kill_script = fixture.dir.join("dnsmasq-kill");
    symlink(host_wrapper(), &kill_script).expect("symlink dnsmasq-kill");

    // Neutron sends HUP to reload, 15 or 9 to stop.
    for (sig, name, pid) in [
        ("HUP", "HUP", 1234),
        ("15", "TERM", 2345),
        ("9", "KILL", 3456),
    ] {
        let out = expect_exit(
            fixture
                .wrapper(Some(&ns), &kill_script)
                .env("PROCESS_TAG", &tag)
                .args([sig, &pid.to_string()]),
            0,
        );
        assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
        let records = fixture.records();
        let record = records.last().expect("a record");
        assert_eq!(record["v"], 1, "{record}");
        assert_eq!(record["kind"], "dnsmasq", "{record}");
        assert_eq!(record["action"], "signal", "{record}");
        assert_eq!(record["signal"], name, "{record}");
        assert_eq!(record["pid"], pid, "{record}");
        assert_eq!(record["tag"], tag.as_str(), "{record}");
        assert_eq!(record["netns"]["name"], ns.name(), "{record}");
        assert_eq!(record["netns"]["ino"], ns.inode(), "{record}");
    }
    assert_eq!(fixture.records().len(), 3);

    // Usage errors queue nothing.
    for args in [&["HUP", "notapid"][..], &["HUP"][..], &[][..]] {
        expect_exit(fixture.wrapper(Some(&ns), &kill_script).args(args), 2);
    }
    assert_eq!(fixture.records().len(), 3);
}
