//! A host set-up for driving the real `sidespawn sync` binary without real containers: a queue
//! root, a state directory, a host configuration and a **podman shim** — a shell script that
//! logs every call's exact argv and answers the way podman 4 does (`ps` prints `[]`, `run`
//! prints an id, `rm`/`kill`/`stop` succeed).
//!
//! What the hostile-input and fault tests need from podman is to see what the sync asks of it,
//! and to make it fail, hang or vanish on demand; real containers would only make them slower.
//! The shim is steered by marker files in `<dir>/shim/`: `fail-<container name>` makes that
//! container's `run` fail like podman does (exit 125, `Error: ...` on stderr), `hang-run` makes
//! every `run` sleep until killed (writing its pid to `hung.pid` first), `fail-ps` makes `ps`
//! fail, and `ps.json` is what `ps` prints instead of `[]`. Each call's argv is written NUL-separated to its own file under `<dir>/calls/`, so
//! arguments with spaces, quotes or newlines come back exactly.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::record::{Action, NetnsRef, Record, Signal, VERSION, new_id, now_ms};

use super::{Netns, Redact, TempDir};

/// The image every profile names; the shim never looks at it.
pub const IMAGE: &str = "localhost/sidespawn-fake:1";

/// How long one sync may take before the test fails (it never should come close).
pub const SYNC_DEADLINE: Duration = Duration::from_secs(120);

const SHIM: &str = r#"#!/bin/sh
# Fake podman for sidespawn's hostile-input and fault tests (see tests/common/fake_host.rs).
d=__DIR__
# One file per call; the name sorts by time, the pid keeps parallel calls apart.
printf '%s\0' "$@" > "$d/calls/$(date +%s%N)-$$"
case "$1" in
ps)
    if [ -e "$d/shim/fail-ps" ]; then
        echo "Error: injected failure of ps" >&2
        exit 125
    fi
    if [ -e "$d/shim/ps.json" ]; then
        cat "$d/shim/ps.json"
    else
        echo '[]'
    fi
    ;;
run)
    name=
    # Stop at `--`: what follows the image is the daemon's argv, which a request controls.
    for a in "$@"; do
        case "$a" in
        --) break ;;
        --name=*) name=${a#--name=} ;;
        esac
    done
    if [ -e "$d/shim/fail-$name" ]; then
        echo "Error: injected failure for $name" >&2
        exit 125
    fi
    if [ -e "$d/shim/hang-run" ]; then
        echo $$ > "$d/shim/hung.pid"
        exec sleep 3600
    fi
    printf '%064x\n' $$
    ;;
esac
exit 0
"#;

/// One run of `sidespawn sync`.
#[derive(Debug)]
pub struct SyncRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// An exit status for a table cell: `exit N`, or how it ended otherwise.
pub fn exit(code: Option<i32>) -> String {
    code.map_or("killed by a signal".to_owned(), |c| format!("exit {c}"))
}

impl SyncRun {
    /// The error the binary printed last (`sidespawn: ...`), or "".
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .rfind(|l| l.starts_with("sidespawn: "))
            .unwrap_or("")
    }

    /// The closing summary line (`sync: claimed N, ...`), or "" when there is none.
    pub fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rfind(|l| l.starts_with("sync: "))
            .unwrap_or("")
    }
}

/// An isolated host: `<dir>/queue` (queue root), `<dir>/state`, `<dir>/config.json`, the shim.
pub struct FakeHost {
    dir: TempDir,
    config: Value,
}

impl FakeHost {
    /// dnsmasq and haproxy configured, everything else default.
    /// A fake host when this test can run here (`common::privileged(what)`); `None` after the
    /// gate has reported the skip.
    pub fn privileged(what: &str) -> Option<FakeHost> {
        super::privileged(what).then(FakeHost::new)
    }

    pub fn new() -> FakeHost {
        FakeHost::with_config(|_| {})
    }

    /// Like [`FakeHost::new`], with `adjust` applied to the configuration's JSON first.
    pub fn with_config(adjust: impl FnOnce(&mut Value)) -> FakeHost {
        let dir = TempDir::new("sidespawn-fakehost");
        for sub in ["queue/dnsmasq", "queue/haproxy", "calls", "shim"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let shim = dir.join("podman");
        fs::write(
            &shim,
            SHIM.replace("__DIR__", &dir.path().display().to_string()),
        )
        .expect("write shim");
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).expect("chmod shim");
        let mut config = json!({
            "queue_root": dir.join("queue"),
            "state_dir": dir.join("state"),
            "podman": shim,
            "podman_timeout_ms": 60000,
            "kinds": {
                "dnsmasq": {"image": IMAGE},
                "haproxy": {"image": IMAGE},
            }
        });
        adjust(&mut config);
        let host = FakeHost { dir, config };
        host.write_config();
        host
    }

    fn write_config(&self) {
        fs::write(self.config_path(), self.config.to_string()).expect("write config");
    }

    /// Changes the configuration on disk (e.g. to repair a broken `podman`).
    pub fn set_config(&mut self, adjust: impl FnOnce(&mut Value)) {
        adjust(&mut self.config);
        self.write_config();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn queue_root(&self) -> PathBuf {
        self.dir.join("queue")
    }
    pub fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.queue_root().join(kind.as_str())
    }
    pub fn queue_file(&self, kind: Kind) -> PathBuf {
        self.kind_dir(kind).join("queue.jsonl")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn journal_path(&self, kind: Kind) -> PathBuf {
        self.state_dir().join(format!("journal/{kind}.jsonl"))
    }

    /// What a container writes: `bytes` as the whole queue, and the pending marker.
    pub fn write_queue(&self, kind: Kind, bytes: &[u8]) {
        fs::write(self.queue_file(kind), bytes).expect("write queue");
        self.mark_pending(kind);
    }

    pub fn mark_pending(&self, kind: Kind) {
        fs::write(self.kind_dir(kind).join("pending"), b"").expect("write pending");
    }

    /// `sidespawn --config ... sync`, with podman's environment as the tests use it.
    pub fn sync_cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("sync")
            .env_remove("SIDESPAWN_FAULT")
            .env_remove("RUST_LOG")
            // Plain log lines (tracing colours its output unless told not to).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs one sync (failing the test if it takes longer than [`SYNC_DEADLINE`]).
    pub fn sync(&self) -> SyncRun {
        self.run_sync(&mut self.sync_cmd())
    }

    pub fn run_sync(&self, cmd: &mut Command) -> SyncRun {
        let start = Instant::now();
        let out = super::output_within(cmd, SYNC_DEADLINE);
        SyncRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Every podman call so far, in order, each as its exact argv.
    pub fn calls(&self) -> Vec<Vec<String>> {
        let mut files: Vec<(u128, u32, PathBuf)> = fs::read_dir(self.dir.join("calls"))
            .expect("list calls")
            .map(|e| e.expect("entry").path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_owned();
                let (t, pid) = name.split_once('-')?;
                Some((t.parse().ok()?, pid.parse().ok()?, p))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, _, p)| {
                let bytes = fs::read(&p).expect("read call");
                let mut args: Vec<String> = bytes
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                // printf '%s\0' ends every argument with a NUL: drop the empty tail.
                args.pop();
                args
            })
            .collect()
    }

    /// The `podman run` calls so far.
    pub fn runs(&self) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| c.first().map(String::as_str) == Some("run"))
            .collect()
    }

    /// Container names of the `podman run` calls so far.
    pub fn run_names(&self) -> Vec<String> {
        self.runs().iter().filter_map(|c| run_name(c)).collect()
    }

    /// Makes every `podman run` of container `name` fail from now on.
    pub fn fail_run_of(&self, name: &str) {
        fs::write(self.dir.join("shim").join(format!("fail-{name}")), b"").expect("marker");
    }

    pub fn heal_run_of(&self, name: &str) {
        fs::remove_file(self.dir.join("shim").join(format!("fail-{name}"))).expect("marker");
    }

    /// Makes every `podman run` hang until killed.
    pub fn hang_runs(&self) {
        fs::write(self.dir.join("shim/hang-run"), b"").expect("marker");
    }

    /// The pid of the last `run` that hung, if one did.
    pub fn hung_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("shim/hung.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Makes `podman ps` print `containers` (podman 4's `ps --format json` entries).
    pub fn set_ps(&self, containers: &Value) {
        fs::write(self.dir.join("shim/ps.json"), containers.to_string()).expect("ps.json");
    }

    pub fn fail_ps(&self) {
        fs::write(self.dir.join("shim/fail-ps"), b"").expect("marker");
    }

    pub fn heal_ps(&self) {
        fs::remove_file(self.dir.join("shim/fail-ps")).expect("marker");
    }

    /// The last sync status of `kind` (`<state_dir>/status/<kind>.json`).
    pub fn status(&self, kind: Kind) -> Option<Value> {
        let bytes = fs::read(self.state_dir().join(format!("status/{kind}.json"))).ok()?;
        Some(serde_json::from_slice(&bytes).expect("status is JSON"))
    }

    /// The ids of the records in `kind`'s journal (claimed, not yet done).
    pub fn journal_ids(&self, kind: Kind) -> Vec<String> {
        fs::read_to_string(self.journal_path(kind))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The acknowledgement of request `id`, if the host wrote one.
    pub fn ack(&self, kind: Kind, id: &str) -> Option<Value> {
        let path = self.kind_dir(kind).join("acks").join(format!("{id}.json"));
        let bytes = fs::read(&path).ok()?;
        Some(serde_json::from_slice(&bytes).expect("ack is JSON"))
    }

    /// Asserts that request `id` was acknowledged with `result`; returns the acknowledgement.
    #[track_caller]
    pub fn assert_ack(&self, kind: Kind, id: &str, result: &str) -> Value {
        let ack = self
            .ack(kind, id)
            .unwrap_or_else(|| panic!("no acknowledgement for {id}"));
        assert_eq!(ack["result"], result, "{ack}");
        ack
    }

    /// The reject log of `kind`, one JSON value per entry.
    pub fn rejects(&self, kind: Kind) -> Vec<Value> {
        let path = self.state_dir().join(format!("rejects/{kind}.jsonl"));
        match fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("reject log line is JSON"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }

    /// Placeholders for this host's per-run values.
    pub fn redact(&self) -> Redact {
        Redact::new().add(self.dir().display(), "<tmp>")
    }
}

/// The `--name=` of a `podman run` argv, looking only before `--`.
pub fn run_name(argv: &[String]) -> Option<String> {
    argv.iter()
        .take_while(|a| *a != "--")
        .find_map(|a| a.strip_prefix("--name=").map(str::to_owned))
}

/// The argv of a `podman run` after the image (the daemon's argv): everything after `--IMAGE`.
pub fn after_image(argv: &[String]) -> &[String] {
    let sep = argv
        .iter()
        .position(|a| a == "--")
        .unwrap_or_else(|| panic!("no `--` before the image in {argv:?}"));
    assert_eq!(
        argv.get(sep + 1).map(String::as_str),
        Some(IMAGE),
        "{argv:?}"
    );
    &argv[sep + 2..]
}

/// A Neutron-style namespace (`qdhcp-<uuid>`) and the matching process tag.
pub fn dhcp_netns() -> (Netns, String) {
    let uuid = super::uuid();
    (
        Netns::new(&format!("qdhcp-{uuid}")),
        format!("dnsmasq-{uuid}"),
    )
}

/// A valid start request made in `ns`, as the wrapper would write it.
pub fn start_record(kind: Kind, ns: &Netns, tag: &str, argv: &[&str]) -> Record {
    let ts = now_ms();
    Record {
        v: VERSION,
        id: new_id(ts),
        kind,
        action: Action::Start,
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        netns: Some(NetnsRef {
            name: ns.name().to_owned(),
            dev: ns.dev(),
            ino: ns.inode(),
        }),
        tag: Some(tag.to_owned()),
        signal: None,
        pid: None,
        ts,
    }
}

/// A valid signal request (a kill script's), without a namespace.
pub fn signal_record(kind: Kind, signal: Signal, pid: u32) -> Record {
    let ts = now_ms();
    Record {
        v: VERSION,
        id: new_id(ts),
        kind,
        action: Action::Signal,
        argv: Vec::new(),
        netns: None,
        tag: None,
        signal: Some(signal),
        pid: Some(pid),
        ts,
    }
}

impl FakeHost {
    /// The configuration's identity, as the host derives it from its configuration.
    pub fn instance(&self) -> String {
        sidespawn::host::config::HostConfig::load(&self.config_path(), true)
            .expect("config")
            .instance
    }

    /// The name the host gives the sidecar of a tagged request.
    pub fn sidecar_name(&self, kind: Kind, tag: &str) -> String {
        sidespawn::host::plan::container_name(&self.instance(), kind, Some(tag), None)
    }
}
