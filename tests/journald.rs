//! Logging to a real journal: `sidespawn sync` run with stderr as the
//! journal stream (`JOURNAL_STREAM`) sends its events to journald's native
//! socket with structured fields, and `journalctl KIND=dnsmasq` and
//! `journalctl SIDESPAWN_REQUEST=<id>` find them.
//!
//! The machines here have no systemd as PID 1, so the test starts a real
//! `systemd-journald` in a private mount namespace (`unshare --mount`), on
//! tmpfs mounts over `/run/systemd`, `/run/log` and `/var/log/journal` that
//! vanish with the namespace; the sync runs in the same namespace, with real
//! podman, and `journalctl -D` reads the journal files back before the
//! namespace goes.

mod common;

use std::path::Path;
use std::process::Command;

use common::Netns;
use common::podman_host::PodmanHost;

/// Where Debian's systemd package puts journald (merged /usr or not).
const JOURNALD: [&str; 2] = [
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];

/// Mounts, starts journald, runs the command (`$2...`) with stderr as the
/// "journal stream" (a file whose device:inode JOURNAL_STREAM names), then
/// dumps the journal as JSON into `$1/journal.json`. `$JOURNALD` is the
/// daemon's path.
const SCRIPT: &str = r#"
set -eu
out=$1; shift
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
"$JOURNALD" &
j=$!
trap 'kill $j 2>/dev/null; wait $j 2>/dev/null || true' EXIT
i=0
while [ ! -S /run/systemd/journal/socket ]; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "journald made no socket" >&2; exit 1; }
  sleep 0.1
done
: > "$out/stderr"
rc=0
JOURNAL_STREAM=$(stat -c %d:%i "$out/stderr") "$@" >"$out/stdout" 2>>"$out/stderr" || rc=$?
journalctl --sync 2>/dev/null || sleep 1
journalctl -D /run/log/journal --no-pager -o json KIND=dnsmasq > "$out/journal.json"
exit $rc
"#;

fn entries(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn sync_logs_structured_fields_to_a_real_journal() {
    let what = "sync logs to a real journald with structured fields";
    if !common::privileged(what) {
        return;
    }
    let journald = JOURNALD.iter().find(|p| Path::new(p).exists());
    let mut missing: Vec<String> = ["journalctl", "unshare"]
        .iter()
        .filter(|p| common::find_in_path(p).is_none())
        .map(|p| p.to_string())
        .collect();
    if journald.is_none() {
        missing.push(JOURNALD.join(" or "));
    }
    if !common::gate(what, "systemd-journald, journalctl and unshare", &missing) {
        return;
    }
    let host = PodmanHost::builder("sidespawn-journald")
        .kind_dir()
        .config(serde_json::json!({"podman_timeout_ms": 120000}))
        .profile(serde_json::json!({"stop_timeout_s": 2}))
        .build();
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let tag = format!("dnsmasq-{uuid}");
    let pid_file = host.data().join(format!("{uuid}.pid"));
    let mut call = host.dnsmasq_call(&ns, "dnsmasq", &tag, &pid_file);
    let out = common::output(&mut call);
    common::assert_exit(&call, &out, 0);

    let dir = host.join("journald");
    std::fs::create_dir_all(&dir).unwrap();
    let sync = host.sidespawn(&["sync"]);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ])
    .arg(&dir)
    .arg(sync.get_program())
    .args(sync.get_args())
    .envs(sync.get_envs().filter_map(|(k, v)| Some((k, v?))))
    .env("JOURNALD", journald.unwrap())
    .env_remove("SIDESPAWN_LOG");
    let out = common::output(&mut cmd);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let context = format!(
        "{}\n--- sync stderr:\n{}\n--- stdout:\n{}",
        common::explain(&cmd, &out),
        read("stderr"),
        read("stdout")
    );
    assert!(out.status.success(), "{context}");

    let acks = host.acks("dnsmasq");
    assert_eq!(acks.len(), 1, "{acks:?}");
    let id = acks[0]["id"].as_str().unwrap().to_owned();
    let container = common::sidecar_name(&host.join("state"), "dnsmasq", &tag);

    let journal = entries(&read("journal.json"));
    assert!(!journal.is_empty(), "nothing with KIND=dnsmasq\n{context}");
    assert!(
        journal
            .iter()
            .all(|e| e["KIND"] == "dnsmasq" && e["SYSLOG_IDENTIFIER"] == "sidespawn"),
        "{journal:#?}"
    );
    // The request's answer, found by its id, with its result and sidecar.
    let story: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|e| e["SIDESPAWN_REQUEST"] == id.as_str())
        .collect();
    let answer = story
        .iter()
        .find(|e| e["RESULT"] == "ok")
        .unwrap_or_else(|| panic!("no RESULT=ok for {id} in {journal:#?}"));
    assert_eq!(answer["CONTAINER"], container.as_str(), "{answer:#?}");
    // tracing-journald's default mapping: INFO is notice (5).
    assert_eq!(answer["PRIORITY"], "5", "{answer:#?}");
    // The job that started it carries the container too.
    assert!(
        journal.iter().any(|e| e["CONTAINER"] == container.as_str()
            && e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("Start done"))),
        "{journal:#?}"
    );
    // Nothing went to stderr as text: the events are in the journal.
    assert!(!read("stderr").contains("answered"), "{context}");
}
