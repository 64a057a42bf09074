//! An unmodified agent image (`sidespawn-test-stock-agent`: the distribution's dnsmasq, haproxy,
//! keepalived and radvd at /usr/sbin, Neutron's rootwrap with its shipped rootwrap.conf and
//! filters, nothing of sidespawn) run with exactly the options `wrappers/agent-mounts.sh`
//! prints. Shows that Neutron's spawns reach the host's queue (directly and through
//! `neutron-rootwrap`), that probes answer with the real programs, that the kill scripts work,
//! that `start_wait` returns with the host's answer (and fails when the host rejects), and runs
//! a keepalived and a radvd sidecar through their whole life: started as Neutron starts them,
//! reloaded with `<kind>-kill HUP` (the daemon takes the new configuration and keeps its pid)
//! and stopped with `<kind>-kill 15` (the container goes). The host side is `sidespawn sync`
//! run by hand, so every step is observed in order. Needs root, podman and the packages of
//! `tests/scripts/install-deps.sh`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{Container, Netns, TempDir};
use serde_json::{Value, json};

/// The label that marks this file's sidecars (value: one fixture's run label).
const RUN_LABEL: &str = "test.sidespawn.run";
/// How long a daemon may take to do what it was asked (take a VIP, send an RA, ...).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a wrapper waiting for the host may take to return once the host answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the stock image keeps Neutron's rootwrap (the virtualenv of install-deps.sh).
const ROOTWRAP: &str = "/opt/sidespawn-neutron-venv/bin/neutron-rootwrap";
/// The directory agent-mounts.sh puts the wrapper's program names in.
const BIN_DIR: &str = "/usr/local/sbin";

/// The images this file uses, built once per test process.
struct Images {
    stock_agent: String,
    dnsmasq: String,
    haproxy: String,
    keepalived: String,
    radvd: String,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let stdout = common::run(
            Command::new(common::repo_root().join("tests/scripts/build-images.sh"))
                .arg("--wrapper")
                .arg(common::static_wrapper())
                .arg("--stock-agent")
                .env("CONTAINERS_CONF", common::containers_conf()),
        );
        let refs: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| {
            refs.get(key)
                .unwrap_or_else(|| panic!("build-images.sh printed no {key}=: {stdout}"))
                .to_string()
        };
        Images {
            stock_agent: get("stock_agent"),
            dnsmasq: get("dnsmasq"),
            haproxy: get("haproxy"),
            keepalived: get("keepalived"),
            radvd: get("radvd"),
        }
    })
}

/// A host (configuration, queue root and state in a temporary directory) and a stock agent
/// container run with agent-mounts.sh's options. The host directory `neutron/` is the agent's
/// and every sidecar's `/var/lib/neutron`; the queue root is its `sidespawn/`, the wrapper's
/// default. Sidecars are removed on drop, then the agent, then the directory.
struct Stock {
    run_label: String,
    agent: Container,
    dir: TempDir,
}

impl Stock {
    /// `wrapper_config`: a wrapper configuration given to agent-mounts.sh's `--config`.
    fn new(wrapper_config: Option<Value>) -> Stock {
        let images = images();
        let dir = TempDir::new("sidespawn-stock");
        let run_label = common::unique("stock");
        let neutron = dir.join("neutron");
        std::fs::create_dir_all(&neutron).unwrap();
        let volume = format!("{}:/var/lib/neutron", neutron.display());
        let labels = json!({ RUN_LABEL: run_label });
        let profile = |image: &str, extra: Value| {
            let mut p =
                json!({"image": image, "volumes": [volume], "labels": labels, "stop_timeout_s": 5});
            if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
                p.extend(extra);
            }
            p
        };
        let config = json!({
            "queue_root": neutron.join("sidespawn"),
            "state_dir": dir.join("state"),
            "kinds": {
                "dnsmasq": profile(&images.dnsmasq, json!({"cap_add": [
                    "NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN",
                    "DAC_OVERRIDE"]})),
                "haproxy": profile(&images.haproxy, json!({})),
                "keepalived": profile(&images.keepalived, json!({})),
                "radvd": profile(&images.radvd, json!({"cap_add": [
                    "NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]})),
            },
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

        let mut mounts = Command::new(common::repo_root().join("wrappers/agent-mounts.sh"));
        mounts
            .arg("--wrapper")
            .arg(common::static_wrapper())
            .arg("--neutron-dir")
            .arg(&neutron);
        if let Some(wc) = wrapper_config {
            let path = dir.join("wrapper.json");
            std::fs::write(&path, wc.to_string()).unwrap();
            mounts.arg("--config").arg(path);
        }
        let options = common::run(&mut mounts);
        let mut args: Vec<String> = vec!["--privileged".into()];
        for line in options.lines() {
            // One option per line, `--flag value`; values hold no spaces here.
            args.extend(line.split_whitespace().map(String::from));
        }
        args.extend([
            images.stock_agent.clone(),
            "sleep".into(),
            "infinity".into(),
        ]);

        let stock = Stock {
            run_label,
            agent: Container::new(&common::unique("sidespawn-stock-agent")),
            dir,
        };
        // What a host's first sync does at boot: the queue directories.
        stock.sync(None);
        common::run(
            common::podman()
                .args(["run", "-d", "--name", stock.agent.name()])
                .args(&args),
        );
        stock
    }

    fn neutron(&self) -> PathBuf {
        self.dir.join("neutron")
    }

    fn queue_root(&self) -> PathBuf {
        self.neutron().join("sidespawn")
    }

    /// The host path of the agent's `/var/lib/neutron/RELATIVE`.
    fn host_path(&self, relative: &str) -> PathBuf {
        self.neutron().join(relative)
    }

    /// `sidespawn sync [--kind KIND]`, expected to succeed; returns its stderr (the log).
    fn sync(&self, kind: Option<&str>) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(self.dir.join("config.json"))
            .arg("sync")
            .env("CONTAINERS_CONF", common::containers_conf())
            .stdin(Stdio::null());
        if let Some(kind) = kind {
            cmd.args(["--kind", kind]);
        }
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `podman exec AGENT ARGS...` with no stdin.
    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = self.agent.exec();
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// What Neutron runs: `ip netns exec NS env PROCESS_TAG=TAG PROGRAM ARGS...` in the agent.
    fn neutron_call(&self, ns: &str, tag: &str, program: &str, args: &[&str]) -> Command {
        let tag = format!("PROCESS_TAG={tag}");
        let mut cmd = self.exec(&["ip", "netns", "exec", ns, "env", &tag, program]);
        cmd.args(args);
        cmd
    }

    /// The same through `neutron-rootwrap /etc/neutron/rootwrap.conf` (Neutron's shipped
    /// filters and exec_dirs), as an agent with `root_helper` set runs it.
    fn rootwrap_call(&self, ns: &str, tag: &str, program: &str, args: &[&str]) -> Command {
        let tag = format!("PROCESS_TAG={tag}");
        let mut cmd = self.exec(&[
            ROOTWRAP,
            "/etc/neutron/rootwrap.conf",
            "ip",
            "netns",
            "exec",
            ns,
            "env",
            &tag,
            program,
        ]);
        cmd.args(args);
        cmd
    }

    /// Runs `cmd`, expects exit 0 and nothing on stdout (the wrapper never prints there).
    #[track_caller]
    fn ok(&self, cmd: &mut Command) {
        let out = common::output(cmd);
        common::assert_exit(cmd, &out, 0);
        assert!(
            out.stdout.is_empty(),
            "printed on stdout: {}",
            common::explain(cmd, &out)
        );
    }

    /// The records queued for `kind`.
    fn queued(&self, kind: &str) -> Vec<Value> {
        common::queue_records(&self.queue_root(), kind)
    }

    /// The one queued record of `kind` with `tag` (and `action`).
    #[track_caller]
    fn queued_one(&self, kind: &str, tag: &str, action: &str) -> Value {
        let all = self.queued(kind);
        let matching: Vec<&Value> = all
            .iter()
            .filter(|r| r["tag"] == tag && r["action"] == action)
            .collect();
        assert_eq!(matching.len(), 1, "one {action} for {tag}: {all:#?}");
        matching[0].clone()
    }

    /// Starts a call that waits for the host (a kill script, a start with `start_wait`).
    fn spawn(&self, cmd: &mut Command) -> Running {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Running {
            what: format!("{cmd:?}"),
            child: Some(child),
        }
    }

    /// A `<kind>-kill SIGNAL PID` call in `ns` as Neutron's process manager makes it (through
    /// privsep, by its full path, with the process tag), answered by one sync of `kind`.
    /// Asserts that it waited for the host and succeeded.
    fn kill_script(&self, kind: &str, ns: &str, tag: &str, signal: &str, pid: u32) {
        let script = format!("/etc/neutron/kill_scripts/{kind}-kill");
        let pid_arg = pid.to_string();
        let mut call = self.spawn(&mut self.neutron_call(ns, tag, &script, &[signal, &pid_arg]));
        common::wait_until(DAEMON_TIMEOUT, "the signal request is queued", || {
            self.queued(kind)
                .iter()
                .any(|r| r["action"] == "signal" && r["pid"] == pid)
        });
        call.assert_waiting();
        self.sync(Some(kind));
        let out = call.finish();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{kind}-kill {signal} {pid}: {}",
            describe_output(&out)
        );
    }

    /// This fixture's sidecar of `kind` for `tag` (its podman name).
    fn sidecar(&self, kind: &str, tag: &str) -> String {
        common::sidecar_name(&self.dir.join("state"), kind, tag)
    }

    /// A namespace that Neutron would have made, loopback up.
    fn netns(&self, prefix: &str) -> Netns {
        let ns = Netns::new(&format!("{prefix}-{}", common::uuid()));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Stock {
    fn drop(&mut self) {
        for name in common::run_containers(&self.run_label, true) {
            let _ = common::output(common::podman().args(["rm", "-f", "-t", "0", &name]));
        }
    }
}

/// A call under way, killed and reaped on drop if it has not been finished.
struct Running {
    what: String,
    child: Option<Child>,
}

impl Running {
    /// Asserts that the call has not returned: it waits for the host's answer.
    #[track_caller]
    fn assert_waiting(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Ok(Some(status)) = child.try_wait() {
            let out = self.child.take().unwrap().wait_with_output().unwrap();
            panic!(
                "{} returned ({status}) before the host answered: {}",
                self.what,
                describe_output(&out)
            );
        }
    }

    /// Waits (at most [`CALL_TIMEOUT`]) for the call to return.
    fn finish(&mut self) -> Output {
        let child = self.child.as_mut().expect("running");
        common::wait_until(CALL_TIMEOUT, &format!("{} returns", self.what), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        self.child.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn describe_output(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit code, stdout and stderr of `cmd`.
fn answer(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = common::output(cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pid a daemon wrote to `path`, whose command line names `needle`, once it is so.
fn alive_pid(path: &Path, needle: &str) -> u32 {
    let mut pid = 0;
    common::wait_until(
        DAEMON_TIMEOUT,
        &format!("{} names a live process", path.display()),
        || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid != 0 && cmdline(pid).iter().any(|a| a.contains(needle))
        },
    );
    pid
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `path` (making its directory) with `mode`, as the agent writes its config files.
fn write_file(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp-stock");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn probes_answer_with_the_real_programs_and_the_image_is_unchanged() {
    if !common::privileged("stock agent image: probes run the distribution's programs") {
        return;
    }
    let s = Stock::new(None);

    // (radvd 2.19 ends `--version` with exit status 1.)
    for (program, args, expected, code) in [
        ("dnsmasq", &["--version"][..], "Dnsmasq version", 0),
        ("haproxy", &["-v"][..], "HAProxy version", 0),
        ("keepalived", &["--version"][..], "Keepalived v", 0),
        ("radvd", &["--version"][..], "Version:", 1),
    ] {
        // PATH finds the wrapper first...
        let (_, found, _) = answer(&mut s.exec(&["sh", "-c", &format!("command -v {program}")]));
        assert_eq!(found.trim(), format!("{BIN_DIR}/{program}"));
        // ...which answers a probe exactly as the distribution's program does.
        let mut probe = s.exec(&[program]);
        probe.args(args);
        let through_wrapper = answer(&mut probe);
        let mut real = s.exec(&[&format!("/usr/sbin/{program}")]);
        real.args(args);
        let real = answer(&mut real);
        assert_eq!(through_wrapper, real, "{program} {args:?}");
        assert_eq!(real.0, Some(code), "{program} {args:?}: {real:?}");
        assert!(
            real.1.contains(expected) || real.2.contains(expected),
            "{program} {args:?}: {real:?}"
        );
    }

    // The image's programs are the distribution's, untouched: the container's changes are the
    // mount points podman made for the wrapper, none under /usr/sbin.
    for program in ["dnsmasq", "haproxy", "keepalived", "radvd"] {
        let (_, sum, _) = answer(&mut s.exec(&["sha256sum", &format!("/usr/sbin/{program}")]));
        let host = common::run(Command::new("sha256sum").arg(format!("/usr/sbin/{program}")));
        assert_eq!(
            sum.split_whitespace().next(),
            host.split_whitespace().next(),
            "/usr/sbin/{program} in the agent is Debian's"
        );
    }
    let diff = common::run(common::podman().args(["diff", s.agent.name()]));
    assert!(
        !diff.lines().any(|l| l.contains("/usr/sbin")),
        "the image's /usr/sbin was changed: {diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.ends_with(&format!("{BIN_DIR}/dnsmasq"))),
        "podman diff: {diff}"
    );

    // A hostile PATH cannot make the wrapper run what the caller names by a relative or empty
    // entry: the probe fails and the planted program never runs.
    common::run(&mut s.exec(&[
        "sh",
        "-c",
        "mkdir -p /tmp/rel && printf '#!/bin/sh\\ntouch /tmp/planted-ran\\n' >/tmp/rel/dnsmasq \
         && cp /tmp/rel/dnsmasq /tmp/dnsmasq && chmod +x /tmp/rel/dnsmasq /tmp/dnsmasq",
    ]));
    let mut hostile = common::podman();
    hostile.args([
        "exec",
        "-w",
        "/tmp",
        s.agent.name(),
        "env",
        &format!("PATH={BIN_DIR}::.:rel"),
        "dnsmasq",
        "--version",
    ]);
    let (code, stdout, stderr) = answer(&mut hostile);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("no executable dnsmasq on PATH after the wrapper's directory"),
        "{stderr}"
    );
    let (ran, _, _) = answer(&mut s.exec(&["test", "-e", "/tmp/planted-ran"]));
    assert_eq!(ran, Some(1), "the planted program ran");

    // A copy of the wrapper further on PATH (here twice, which would otherwise make the two
    // exec each other for ever) is refused by the second wrapper, naming the fix.
    common::run(&mut s.exec(&[
        "sh",
        "-c",
        &format!("mkdir -p /tmp/copy && cp {BIN_DIR}/dnsmasq /tmp/copy/dnsmasq"),
    ]));
    let (code, stdout, stderr) = answer(&mut s.exec(&[
        "env",
        &format!("PATH={BIN_DIR}:/tmp/copy:{BIN_DIR}:/usr/sbin"),
        "dnsmasq",
        "--version",
    ]));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("is a sidespawn-wrapper as well") && stderr.contains("passthrough"),
        "{stderr}"
    );
}

#[test]
fn neutron_spawns_and_rootwrap_reach_the_wrapper_and_kill_scripts_work() {
    if !common::privileged("stock agent image: spawns, rootwrap and kill scripts") {
        return;
    }
    let s = Stock::new(None);
    let ns = s.netns("qdhcp");
    let uuid = common::uuid();
    let tag = format!("dnsmasq-{uuid}");
    let pid_file = format!("/var/lib/neutron/dhcp/{uuid}/pid");
    std::fs::create_dir_all(s.host_path(&format!("dhcp/{uuid}"))).unwrap();
    let args = [
        "--no-hosts",
        "",
        "--port=0",
        "--conf-file=/dev/null",
        &format!("--pid-file={pid_file}"),
        &format!("--dhcp-hostsfile=/var/lib/neutron/dhcp/{uuid}/host"),
    ];

    // The DHCP agent's spawn reaches the host's queue, argv and namespace intact.
    s.ok(&mut s.neutron_call(ns.name(), &tag, "dnsmasq", &args));
    let record = s.queued_one("dnsmasq", &tag, "start");
    assert_eq!(record["netns"]["name"], ns.name(), "{record}");
    assert_eq!(record["argv"], json!(args), "{record}");

    // The host starts it; Neutron sees it alive through its pid file.
    s.sync(Some("dnsmasq"));
    let pid = alive_pid(&s.host_path(&format!("dhcp/{uuid}/pid")), &uuid);
    let name = s.sidecar("dnsmasq", &tag);
    assert_eq!(common::container_status(&name), "running");

    // Kill scripts: HUP keeps the daemon, 15 removes the sidecar.
    s.kill_script("dnsmasq", ns.name(), &tag, "HUP", pid);
    assert_eq!(
        alive_pid(&s.host_path(&format!("dhcp/{uuid}/pid")), &uuid),
        pid
    );
    assert_eq!(common::container_status(&name), "running");
    s.kill_script("dnsmasq", ns.name(), &tag, "15", pid);
    assert_eq!(common::container_status(&name), "", "{name} is removed");
    assert!(
        !cmdline(pid).iter().any(|a| a.contains(&uuid)),
        "{pid} runs"
    );

    // Through neutron-rootwrap with Neutron's shipped filters (ip_exec, then each daemon's
    // EnvFilter) and exec_dirs: rootwrap resolves `ip` through exec_dirs; `env` then finds
    // the daemon on PATH, i.e. the wrapper, which queues the request (the real daemon would
    // have started instead, and queued nothing).
    let rootwrapped: [(&str, Vec<String>); 4] = [
        ("dnsmasq", args.iter().map(|a| a.to_string()).collect()),
        (
            "haproxy",
            vec![
                "-f".into(),
                format!("/var/lib/neutron/ns-metadata-proxy/{uuid}.conf"),
            ],
        ),
        (
            "keepalived",
            vec![
                "-P".into(),
                "-f".into(),
                format!("/var/lib/neutron/ha_confs/{uuid}/keepalived.conf"),
                "-p".into(),
                format!("/var/lib/neutron/ha_confs/{uuid}.pid.keepalived"),
                "-r".into(),
                format!("/var/lib/neutron/ha_confs/{uuid}.pid.keepalived-vrrp"),
            ],
        ),
        (
            "radvd",
            vec![
                "-C".into(),
                format!("/var/lib/neutron/ra/{uuid}.radvd.conf"),
                "-p".into(),
                format!("/var/lib/neutron/external/pids/{uuid}.pid.radvd"),
                "-m".into(),
                "syslog".into(),
                "-u".into(),
                "radvd".into(),
            ],
        ),
    ];
    for (kind, argv) in rootwrapped {
        let tag = format!("{kind}-rootwrap-{uuid}");
        let argv_refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        s.ok(&mut s.rootwrap_call(ns.name(), &tag, kind, &argv_refs));
        let record = s.queued_one(kind, &tag, "start");
        assert_eq!(record["netns"]["name"], ns.name(), "{record}");
        assert_eq!(record["argv"], json!(argv), "{record}");
    }
    // And rootwrap still refuses what its filters do not allow.
    let (code, _, stderr) = answer(&mut s.rootwrap_call(ns.name(), "x", "cat", &["/etc/shadow"]));
    assert_ne!(code, Some(0), "{stderr}");
}

#[test]
fn start_wait_returns_with_the_hosts_answer_and_fails_when_rejected() {
    if !common::privileged("stock agent image: start_wait") {
        return;
    }
    let s = Stock::new(Some(json!({
        "kinds": {"dnsmasq": {"start_wait": true, "wait_timeout_ms": 120000}}
    })));

    // Accepted: the call returns only after the host started the sidecar.
    let ns = s.netns("qdhcp");
    let uuid = common::uuid();
    let tag = format!("dnsmasq-{uuid}");
    std::fs::create_dir_all(s.host_path(&format!("dhcp/{uuid}"))).unwrap();
    let pid_file = format!("--pid-file=/var/lib/neutron/dhcp/{uuid}/pid");
    let mut call = s.spawn(&mut s.neutron_call(
        ns.name(),
        &tag,
        "dnsmasq",
        &["--no-hosts", "--port=0", "--conf-file=/dev/null", &pid_file],
    ));
    common::wait_until(DAEMON_TIMEOUT, "the start request is queued", || {
        s.queued("dnsmasq").iter().any(|r| r["tag"] == tag.as_str())
    });
    // No sync has run, so no answer exists: the wrapper must still be waiting.
    call.assert_waiting();
    let name = s.sidecar("dnsmasq", &tag);
    assert_eq!(common::container_status(&name), "");
    s.sync(Some("dnsmasq"));
    let out = call.finish();
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(
        common::container_status(&name),
        "running",
        "the sidecar runs when the call returns"
    );
    alive_pid(&s.host_path(&format!("dhcp/{uuid}/pid")), &uuid);

    // Rejected: the namespace is deleted before the host looks at the request. The call
    // fails with the host's reason, and nothing runs.
    let gone = s.netns("qdhcp");
    let tag = format!("dnsmasq-{}", common::uuid());
    let mut call = s.spawn(&mut s.neutron_call(
        gone.name(),
        &tag,
        "dnsmasq",
        &["--no-hosts", "--port=0", "--conf-file=/dev/null"],
    ));
    common::wait_until(DAEMON_TIMEOUT, "the start request is queued", || {
        s.queued("dnsmasq").iter().any(|r| r["tag"] == tag.as_str())
    });
    call.assert_waiting();
    gone.delete();
    s.sync(Some("dnsmasq"));
    let out = call.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr.contains("was rejected")
            && stderr.contains(gone.name())
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(common::container_status(&s.sidecar("dnsmasq", &tag)), "");
}

/// The addresses of `dev` in `ns` (`ip -o addr show`), one per line.
fn addresses(ns: &Netns, dev: &str, family: &str) -> String {
    common::run(Command::new("ip").args([
        "-n",
        ns.name(),
        "-o",
        family,
        "addr",
        "show",
        "dev",
        dev,
    ]))
}

/// Neutron's keepalived.conf for one HA router, reduced to one VIP.
fn keepalived_conf(dev: &str, vip: &str) -> String {
    format!(
        "global_defs {{\n    notification_email_from neutron@openstack.local\n    router_id neutron\n}}\n\
         vrrp_instance VR_1 {{\n    state BACKUP\n    interface {dev}\n    virtual_router_id 1\n    \
         priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int 1\n    \
         track_interface {{\n        {dev}\n    }}\n    virtual_ipaddress {{\n        {vip} dev {dev}\n    }}\n}}\n"
    )
}

#[test]
fn keepalived_sidecar_started_reloaded_and_stopped_through_the_wrapper() {
    if !common::privileged("keepalived end to end through the stock agent") {
        return;
    }
    let s = Stock::new(None);
    let ns = s.netns("qrouter");
    // The HA network: a link to the other routers' node (none answers here).
    let peer = s.netns("ha-peer");
    let (dev, peer_dev) = ns.veth_pair(&peer);
    // Neutron gives the router's HA port an address of 169.254.192.0/18; keepalived stays in
    // FAULT on an interface without IPv4.
    ns.ip(&["addr", "add", "169.254.192.1/18", "dev", &dev]);
    ns.ip(&["link", "set", &dev, "up"]);
    peer.ip(&["link", "set", &peer_dev, "up"]);
    let uuid = common::uuid();
    let conf = s.host_path(&format!("ha_confs/{uuid}/keepalived.conf"));
    write_file(&conf, &keepalived_conf(&dev, "169.254.0.1/24"), 0o644);
    let tag = format!("keepalived-{uuid}");
    let pid_file = format!("/var/lib/neutron/ha_confs/{uuid}.pid.keepalived");

    // Neutron's KeepalivedManager command line.
    s.ok(&mut s.neutron_call(
        ns.name(),
        &tag,
        "keepalived",
        &[
            "-P",
            "-f",
            &format!("/var/lib/neutron/ha_confs/{uuid}/keepalived.conf"),
            "-p",
            &pid_file,
            "-r",
            &format!("{pid_file}-vrrp"),
        ],
    ));
    s.sync(Some("keepalived"));
    let name = s.sidecar("keepalived", &tag);
    assert_eq!(common::container_status(&name), "running");
    let pid = alive_pid(
        &s.host_path(&format!("ha_confs/{uuid}.pid.keepalived")),
        &uuid,
    );
    assert_eq!(cmdline(pid).first().map(String::as_str), Some("keepalived"));
    // Alone on its link, the router becomes master and takes the VIP in its namespace.
    common::wait_until(DAEMON_TIMEOUT, "keepalived holds 169.254.0.1", || {
        addresses(&ns, &dev, "-4").contains("169.254.0.1/24")
    });

    // The agent changes the VIP and reloads: keepalived-kill HUP. Same daemon, new address.
    write_file(&conf, &keepalived_conf(&dev, "169.254.0.2/24"), 0o644);
    s.kill_script("keepalived", ns.name(), &tag, "HUP", pid);
    common::wait_until(DAEMON_TIMEOUT, "keepalived moved to 169.254.0.2", || {
        let a = addresses(&ns, &dev, "-4");
        a.contains("169.254.0.2/24") && !a.contains("169.254.0.1/24")
    });
    assert_eq!(
        alive_pid(
            &s.host_path(&format!("ha_confs/{uuid}.pid.keepalived")),
            &uuid
        ),
        pid,
        "the reload kept the daemon"
    );
    assert_eq!(common::container_status(&name), "running");

    // The router goes: keepalived-kill 15 returns once the sidecar is gone.
    s.kill_script("keepalived", ns.name(), &tag, "15", pid);
    assert_eq!(common::container_status(&name), "", "{name} is removed");
    assert!(
        !cmdline(pid).iter().any(|a| a.contains(&uuid)),
        "{pid} runs"
    );
    assert!(
        !addresses(&ns, &dev, "-4").contains("169.254.0.2"),
        "keepalived released its VIP when it stopped"
    );
}

/// Neutron's radvd.conf for one router interface, reduced to one prefix.
fn radvd_conf(dev: &str, prefix: &str) -> String {
    format!(
        "interface {dev}\n{{\n   AdvSendAdvert on;\n   MinRtrAdvInterval 3;\n   MaxRtrAdvInterval 10;\n   \
         AdvLinkMTU 1450;\n   prefix {prefix}\n   {{\n        AdvOnLink on;\n        AdvAutonomous on;\n   }};\n}};\n"
    )
}

#[test]
fn radvd_sidecar_started_reloaded_and_stopped_through_the_wrapper() {
    if !common::privileged("radvd end to end through the stock agent") {
        return;
    }
    let s = Stock::new(None);
    let router = s.netns("qrouter");
    let vm = s.netns("vm");
    let (qr, eth) = router.veth_pair(&vm);
    common::run(Command::new("ip").args([
        "netns",
        "exec",
        router.name(),
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.forwarding=1",
    ]));
    router.ip(&["link", "set", &qr, "up"]);
    vm.ip(&["link", "set", &eth, "up"]);
    let uuid = common::uuid();
    let conf = s.host_path(&format!("ra/{uuid}.radvd.conf"));
    // radvd refuses a configuration others may write.
    write_file(&conf, &radvd_conf(&qr, "2001:db8:1::/64"), 0o644);
    std::fs::create_dir_all(s.host_path("external/pids")).unwrap();
    let tag = format!("radvd-{uuid}");

    // Neutron's DaemonMonitor command line (radvd_user = radvd).
    s.ok(&mut s.neutron_call(
        router.name(),
        &tag,
        "radvd",
        &[
            "-C",
            &format!("/var/lib/neutron/ra/{uuid}.radvd.conf"),
            "-p",
            &format!("/var/lib/neutron/external/pids/{uuid}.pid.radvd"),
            "-m",
            "syslog",
            "-u",
            "radvd",
        ],
    ));
    s.sync(Some("radvd"));
    let name = s.sidecar("radvd", &tag);
    assert_eq!(common::container_status(&name), "running");
    let pid_file = s.host_path(&format!("external/pids/{uuid}.pid.radvd"));
    let pid = alive_pid(&pid_file, &uuid);
    // The VM configures an address from the advertised prefix.
    common::wait_until(
        DAEMON_TIMEOUT,
        "the VM has an address in 2001:db8:1::/64",
        || addresses(&vm, &eth, "-6").contains("2001:db8:1:"),
    );

    // A new subnet on the router: the agent rewrites the file and reloads radvd.
    write_file(&conf, &radvd_conf(&qr, "2001:db8:2::/64"), 0o644);
    s.kill_script("radvd", router.name(), &tag, "HUP", pid);
    common::wait_until(
        DAEMON_TIMEOUT,
        "the VM has an address in 2001:db8:2::/64",
        || addresses(&vm, &eth, "-6").contains("2001:db8:2:"),
    );
    assert_eq!(
        alive_pid(&pid_file, &uuid),
        pid,
        "the reload kept the daemon"
    );
    assert_eq!(common::container_status(&name), "running");

    s.kill_script("radvd", router.name(), &tag, "15", pid);
    assert_eq!(common::container_status(&name), "", "{name} is removed");
    assert!(
        !cmdline(pid).iter().any(|a| a.contains(&uuid)),
        "{pid} runs"
    );
}
