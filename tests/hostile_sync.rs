//! The whole root `sidespawn sync` binary against queue directories that a compromised agent
//! container has prepared: root inside the container, with write access to its queue
//! directory, able to write any bytes, place links, FIFOs and hard links, and race the host.
//!
//! Every case checks the same three promises (see SECURITY.md):
//! * the hostile input is refused with a logged reason — on the sync's stderr, in the reject log
//!   `<state_dir>/rejects/<kind>.jsonl`, and, where the line still carries a usable request id,
//!   in an acknowledgement `result: rejected`;
//! * the root process never follows a link nor writes outside its directories — host files that
//!   a link points at keep their bytes and their modification time;
//! * valid requests in the same batch (or in another kind's queue) are still served.
//!
//! Podman is the logging shim of `common::fake_host`, so what the sync asked of podman is known
//! argument by argument. Needs root and `ip` (real network namespaces).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::fake_host::{FakeHost, after_image, dhcp_netns, exit, signal_record, start_record};
use common::{Netns, Redact};
use serde_json::{Value, json};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::record::{Record, Signal};

const DNSMASQ: Kind = Kind::Dnsmasq;
const HAPROXY: Kind = Kind::Haproxy;

/// A host file the attacker would like root to damage: its bytes and modification time, to
/// prove later that nothing touched it.
struct HostFile {
    path: PathBuf,
    bytes: Vec<u8>,
    mtime: SystemTime,
}

impl HostFile {
    fn new(path: PathBuf, bytes: &[u8]) -> HostFile {
        fs::write(&path, bytes).expect("write host file");
        // Back-date it, so that any write, even of the same bytes, shows.
        let old = SystemTime::now() - Duration::from_secs(86_400);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("back-date host file");
        let mtime = fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        HostFile {
            path,
            bytes: bytes.to_vec(),
            mtime,
        }
    }

    #[track_caller]
    fn assert_untouched(&self) {
        assert_eq!(
            fs::read(&self.path).expect("read host file"),
            self.bytes,
            "{} was modified",
            self.path.display()
        );
        let mtime = fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(mtime, self.mtime, "{} was written", self.path.display());
    }
}

/// A path a dangling link points at: it must still not exist after the sync (a root
/// `open(O_CREAT)` through the link would create it).
#[track_caller]
fn assert_not_created(path: &Path) {
    assert!(
        fs::symlink_metadata(path).is_err(),
        "{} was created through a link",
        path.display()
    );
}

/// Sets a stop flag when dropped, so that a background loop ends even when the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A child process, killed and reaped when dropped, so that a failing test leaves none behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors mean it has already ended and been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn privileged(what: &str) -> bool {
    common::privileged(&format!("hostile sync: {what}"))
}

/// [`privileged`] and a fresh fake host.
fn privileged_host(what: &str) -> Option<FakeHost> {
    FakeHost::privileged(&format!("hostile sync: {what}"))
}

/// Placeholders for a host plus the usual per-test values.
fn redactor(host: &FakeHost, ns: &Netns, records: &[&Record]) -> Redact {
    let mut r = host.redact().add(ns.name(), "qdhcp-<uuid>");
    r = r.add(ns.inode(), "<ino>");
    if let Some(uuid) = ns.name().strip_prefix("qdhcp-") {
        r = r.add(uuid, "<uuid>");
    }
    for rec in records {
        r = r.add(&rec.id, "<id>");
    }
    r
}

/// Reason of the only reject-log entry of `kind`.
#[track_caller]
fn only_reject(host: &FakeHost, kind: Kind) -> Value {
    let rejects = host.rejects(kind);
    assert_eq!(rejects.len(), 1, "reject log of {kind}: {rejects:#?}");
    rejects.into_iter().next().expect("one reject")
}

// ---------------------------------------------------------------------------------------------
// One hostile line in a batch with one valid request.

/// Which valid record a hostile line starts from.
#[derive(Clone, Copy)]
enum Base {
    Start,
    Signal,
}

/// Queues a hostile line (made by `make` from a valid record's JSON) followed by a valid start
/// request, syncs once, and checks: exit 0, the valid request started and acknowledged `ok`,
/// the hostile one in the reject log and on stderr with a reason containing `want`, and
/// acknowledged `rejected` exactly when `acked` (a line without a usable id cannot be).
/// The one driver of the table below: then runs `check` on the host before the case is logged
/// in the reliability table.
fn hostile_line(
    case: &str,
    base: Base,
    want: &str,
    acked: bool,
    make: impl FnOnce(Value) -> Vec<u8>,
    check: impl FnOnce(&FakeHost),
) {
    let host = FakeHost::new();
    let (ns, tag) = dhcp_netns();
    let good = start_record(DNSMASQ, &ns, &tag, &["--good", ""]);
    let bad = match base {
        Base::Start => start_record(DNSMASQ, &ns, &format!("{tag}-bad"), &["--bad"]),
        Base::Signal => signal_record(DNSMASQ, Signal::Hup, 4242),
    };
    let mut queue = make(serde_json::to_value(&bad).expect("record to JSON"));
    queue.push(b'\n');
    queue.extend_from_slice(good.to_line().as_bytes());
    host.write_queue(DNSMASQ, &queue);

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        host.run_names(),
        [host.sidecar_name(DNSMASQ, &tag)],
        "{run:#?}"
    );
    host.assert_ack(DNSMASQ, &good.id, "ok");

    let reject = only_reject(&host, DNSMASQ);
    let reason = reject["reason"].as_str().expect("reason");
    assert!(reason.contains(want), "reason {reason:?} lacks {want:?}");
    assert!(
        run.stderr.contains(reason),
        "stderr does not log the reason {reason:?}:\n{}",
        run.stderr
    );
    let ack = host.ack(DNSMASQ, &bad.id);
    if acked {
        let ack = ack.as_ref().expect("the rejection is acknowledged");
        assert_eq!(ack["result"], "rejected", "{ack}");
        assert_eq!(ack["message"], reason, "{ack}");
    } else {
        assert_eq!(ack, None, "no usable id, so no acknowledgement");
    }
    assert!(run.summary().contains("rejected 1"), "{}", run.summary());
    assert_eq!(
        fs::metadata(host.queue_file(DNSMASQ)).expect("queue").len(),
        0
    );
    check(&host);

    let redact = redactor(&host, &ns, &[&good, &bad]);
    common::reliability(
        case,
        &format!(
            "rejected ({want}); {}; the valid request in the same batch starts",
            if acked {
                "acknowledged `rejected`"
            } else {
                "no usable id, so logged only"
            }
        ),
        &redact.apply(&format!(
            "exit {}; reject log: {reason}; ack: {}; podman run only for the valid request",
            run.code.unwrap_or(-1),
            ack.map_or("none".to_owned(), |a| a["result"].to_string()),
        )),
    );
}

/// `v` with `key` set to `value`, as a line.
fn with(mut v: Value, key: &str, value: Value) -> Vec<u8> {
    v[key] = value;
    v.to_string().into_bytes()
}

/// `v` with its namespace name set to `name`, as a line.
fn with_netns_name(mut v: Value, name: &str) -> Vec<u8> {
    v["netns"]["name"] = json!(name);
    v.to_string().into_bytes()
}

/// The table of hostile lines: one row per case, each its own `#[test]` named by the row (the
/// names are cited by SECURITY.md and docs/RELIABILITY.md, and listed by
/// `tests/scripts/reliability-table.sh`). A row gives the reliability table's case text, the
/// valid record the line starts from, a substring of the expected rejection reason, whether the
/// rejection is acknowledged, the mutation that makes the line from the record's JSON, and
/// optionally further checks on the host. Every row runs [`hostile_line`].
macro_rules! hostile_line_tests {
    (@then) => {
        |_: &FakeHost| {}
    };
    (@then $check:expr) => {
        $check
    };
    ($(
        $name:ident {
            case: $case:expr,
            base: $base:ident,
            reason: $want:expr,
            acked: $acked:expr,
            line: $make:expr
            $(, then: $check:expr)?
            $(,)?
        }
    )*) => {$(
        #[test]
        fn $name() {
            if !privileged(stringify!($name)) {
                return;
            }
            hostile_line(
                $case,
                Base::$base,
                $want,
                $acked,
                $make,
                hostile_line_tests!(@then $($check)?),
            );
        }
    )*};
}

hostile_line_tests! {
    // 200 KiB of arguments: a valid line (under the queue's 1 MiB), but over the default
    // 64 KiB per request; before the limit podman stored it and every listing carried it.
    argv_above_max_argv_bytes_is_rejected_alone {
        case: "start request with 200 KiB of argv (over `kinds.dnsmasq.max_argv_bytes`, 64 KiB)",
        base: Start,
        reason: "over kinds.dnsmasq.max_argv_bytes (65536)",
        acked: true,
        line: |v| {
            let big: Vec<String> = (0..4)
                .map(|i| format!("--x{i}={}", "y".repeat(51_200)))
                .collect();
            with(v, "argv", json!(big))
        },
    }

    invalid_json_is_rejected {
        case: "invalid JSON",
        base: Start,
        reason: "not valid JSON",
        acked: false,
        line: |v| {
            let text = v.to_string();
            text.as_bytes()[..text.len() / 2].to_vec()
        },
    }

    // The id is still readable (and safe), so the agent is told.
    invalid_utf8_is_rejected {
        case: "invalid UTF-8",
        base: Start,
        reason: "not valid UTF-8",
        acked: true,
        line: |v| {
            let text = v.to_string();
            // A Latin-1 byte inside an argument: valid JSON syntax, invalid UTF-8.
            text.replace("--bad", "--b\u{1}d")
                .into_bytes()
                .into_iter()
                .map(|b| if b == 1 { 0xe9 } else { b })
                .collect()
        },
    }

    unknown_version_is_rejected {
        case: "unknown record version (`v: 2`)",
        base: Start,
        reason: "unsupported record version 2",
        acked: true,
        line: |v| with(v, "v", json!(2)),
    }

    unknown_field_is_rejected {
        case: "unknown field (`\"privileged\": true`)",
        base: Start,
        reason: "unknown field `privileged`",
        acked: true,
        line: |v| with(v, "privileged", json!(true)),
    }

    unknown_kind_is_rejected {
        case: "unknown kind (`\"kind\": \"bash\"`)",
        base: Start,
        reason: "unknown variant `bash`",
        acked: true,
        line: |v| with(v, "kind", json!("bash")),
    }

    another_kinds_request_in_the_queue_is_rejected {
        case: "a haproxy request in the dnsmasq queue",
        base: Start,
        reason: "a haproxy request in the dnsmasq queue",
        acked: true,
        line: |v| with(v, "kind", json!("haproxy")),
    }

    netns_name_with_a_slash_is_rejected {
        case: "netns name with `/` (`qdhcp-x/../../../proc/1/ns/net`)",
        base: Start,
        reason: "is not a plain file name",
        acked: true,
        line: |v| with_netns_name(v, "qdhcp-x/../../../proc/1/ns/net"),
    }

    netns_name_dot_dot_is_rejected {
        case: "netns name `..`",
        base: Start,
        reason: "is not a plain file name",
        acked: true,
        line: |v| with_netns_name(v, ".."),
    }

    netns_name_with_spaces_is_rejected {
        case: "netns name with spaces",
        base: Start,
        reason: "is not a plain file name",
        acked: true,
        line: |v| with_netns_name(v, "qdhcp-a b"),
    }

    netns_name_with_nul_is_rejected {
        case: "netns name with a NUL byte",
        base: Start,
        reason: "is not a plain file name",
        acked: true,
        line: |v| with_netns_name(v, "qdhcp-a\0b"),
    }

    netns_name_of_4096_characters_is_rejected {
        case: "netns name of 4096 characters",
        base: Start,
        reason: "is not a plain file name",
        acked: true,
        line: |v| with_netns_name(v, &format!("qdhcp-{}", "a".repeat(4090))),
    }

    netns_outside_the_profile_patterns_is_rejected {
        case: "netns name outside the profile's patterns (`mynet`)",
        base: Start,
        reason: "does not match kinds.dnsmasq.netns_patterns",
        acked: true,
        line: |v| with_netns_name(v, "mynet"),
    }

    host_network_request_is_rejected_unless_allowed {
        case: "start request on the host network (`netns: null`) where the profile forbids it",
        base: Start,
        reason: "may not run on the host network",
        acked: true,
        line: |v| with(v, "netns", Value::Null),
    }

    tag_with_shell_metacharacters_is_rejected {
        case: "process tag with shell metacharacters (`$(reboot)`, backquotes, `|`, `>`)",
        base: Start,
        reason: "tag",
        acked: true,
        line: |v| with(v, "tag", json!("$(reboot);`id`|x>y")),
    }

    argument_with_nul_is_rejected {
        case: "argument with a NUL byte",
        base: Start,
        reason: "contains a NUL byte",
        acked: true,
        line: |v| with(v, "argv", json!(["--conf-file=/etc/x\0/etc/shadow"])),
    }

    too_many_arguments_are_rejected {
        case: "4097 arguments",
        base: Start,
        reason: "4097 arguments, over the limit of 4096",
        acked: true,
        line: |v| with(v, "argv", json!(vec!["x"; 4097])),
    }

    start_request_carrying_a_pid_is_rejected {
        case: "start request carrying a pid",
        base: Start,
        reason: "a start request carries no signal or pid",
        acked: true,
        line: |v| with(v, "pid", json!(1)),
    }

    // The id names the acknowledgement file: were it used, the ack would land two levels up.
    request_id_with_path_traversal_is_rejected_and_acknowledged_nowhere {
        case: "request id with path traversal (`../../acked-outside`)",
        base: Start,
        reason: "must be 1-64 characters",
        acked: false,
        line: |v| with(v, "id", json!("../../acked-outside")),
        then: |host: &FakeHost| {
            for dir in [host.queue_root(), host.kind_dir(DNSMASQ)] {
                assert_not_created(&dir.join("acked-outside.json"));
            }
        },
    }

    negative_pid_is_rejected {
        case: "signal request with pid -1 (every process)",
        base: Signal,
        reason: "invalid value: integer `-1`",
        acked: true,
        line: |v| with(v, "pid", json!(-1)),
    }

    huge_pid_is_rejected {
        case: "signal request with pid 2^40",
        base: Signal,
        reason: "invalid value: integer `1099511627776`",
        acked: true,
        line: |v| with(v, "pid", json!(1u64 << 40)),
    }

    pid_above_pid_max_is_rejected {
        case: "signal request with pid 4194305 (above PID_MAX_LIMIT)",
        base: Signal,
        reason: "pid 4194305 is outside 2..=4194304",
        acked: true,
        line: |v| with(v, "pid", json!(4_194_305)),
    }

    pid_1_is_rejected {
        case: "signal request for pid 1 (init)",
        base: Signal,
        reason: "pid 1 is outside 2..=4194304",
        acked: true,
        line: |v| with(v, "pid", json!(1)),
    }

    signal_outside_the_allowed_set_is_rejected {
        case: "signal outside HUP/TERM/KILL (`USR1`)",
        base: Signal,
        reason: "unknown variant `USR1`",
        acked: true,
        line: |v| with(v, "signal", json!("USR1")),
    }
}

#[test]
fn a_second_configuration_on_the_same_state_dir_is_refused() {
    let Some(mut host) = privileged_host("two configurations sharing one state_dir") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let first = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, first.to_line().as_bytes());
    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    // Another configuration: its own queue root, the first one's state directory (and so,
    // without the check, its identity and its sidecars).
    let other_root = host.dir().join("other-queue");
    fs::create_dir_all(other_root.join("dnsmasq")).expect("mkdir");
    host.set_config(|c| c["queue_root"] = json!(other_root));
    let calls = host.calls().len();
    let run = host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let e = run.error_line();
    assert!(
        e.contains("must not share a state_dir")
            && e.contains(&other_root.display().to_string())
            && e.contains("owner.json"),
        "{e}"
    );
    assert_eq!(
        host.calls().len(),
        calls,
        "no podman call: {:?}",
        host.calls()
    );
    common::reliability(
        "a second host configuration (another queue_root) names the first one's state_dir",
        "refused before any podman call, naming both queue roots and the fix",
        &host
            .redact()
            .apply(&format!("exit {}; {e}", run.code.unwrap_or(-1))),
    );
}

// ---------------------------------------------------------------------------------------------
// Links, FIFOs and hard links in the shared directory.

/// A host with one valid dnsmasq request and one valid haproxy request queued, ready for the
/// dnsmasq directory to be tampered with.
struct TwoKinds {
    host: FakeHost,
    ns: Netns,
    dnsmasq: Record,
    haproxy: Record,
    haproxy_tag: String,
}

impl TwoKinds {
    fn new() -> TwoKinds {
        let host = FakeHost::new();
        let (ns, tag) = dhcp_netns();
        let dnsmasq = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
        let haproxy_tag = tag.replace("dnsmasq-", "haproxy-");
        let haproxy = start_record(HAPROXY, &ns, &haproxy_tag, &["-f", "/x.cfg"]);
        host.write_queue(HAPROXY, haproxy.to_line().as_bytes());
        TwoKinds {
            host,
            ns,
            dnsmasq,
            haproxy,
            haproxy_tag,
        }
    }

    fn host_file(&self, bytes: &[u8]) -> HostFile {
        HostFile::new(self.host.dir().join("host-file"), bytes)
    }

    /// The haproxy request was served despite the dnsmasq directory.
    #[track_caller]
    fn assert_haproxy_served(&self) {
        assert!(
            self.host
                .run_names()
                .contains(&self.host.sidecar_name(HAPROXY, &self.haproxy_tag)),
            "{:?}",
            self.host.run_names()
        );
        self.host.assert_ack(HAPROXY, &self.haproxy.id, "ok");
    }

    fn redact(&self) -> Redact {
        redactor(&self.host, &self.ns, &[&self.dnsmasq, &self.haproxy])
    }
}

#[test]
fn queue_symlink_to_a_host_file_fails_the_kind_and_leaves_the_file_alone() {
    if !privileged("queue.jsonl is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    // The host file even holds a valid request: following the link would run it.
    let target = t.host_file(t.dnsmasq.to_line().as_bytes());
    symlink(&target.path, t.host.queue_file(DNSMASQ)).expect("symlink");
    t.host.mark_pending(DNSMASQ);

    let run = t.host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let path = t.host.queue_file(DNSMASQ).display().to_string();
    assert!(
        run.stderr
            .contains(&format!("{path} is a symlink; remove it")),
        "{}",
        run.stderr
    );
    target.assert_untouched();
    assert!(!t.host.run_names().iter().any(|n| n.contains("dnsmasq")));
    assert_eq!(t.host.ack(DNSMASQ, &t.dnsmasq.id), None);
    t.assert_haproxy_served();
    common::reliability(
        "queue file is a symlink to a host file (holding a valid request)",
        "the kind's sync fails naming the link (exit 1); the file keeps its bytes and mtime; other kinds are served",
        &t.redact().apply(&format!(
            "{}; `{}`; host file untouched; haproxy served",
            exit(run.code),
            run.error_line()
        )),
    );
}

#[test]
fn lock_symlink_to_a_missing_host_path_is_refused_and_nothing_created() {
    if !privileged("lock is a dangling symlink") {
        return;
    }
    let t = TwoKinds::new();
    t.host.write_queue(DNSMASQ, t.dnsmasq.to_line().as_bytes());
    let target = t.host.dir().join("created-by-root");
    symlink(&target, t.host.kind_dir(DNSMASQ).join("lock")).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("lock is a symlink"), "{}", run.stderr);
    assert_not_created(&target);
    assert_eq!(
        fs::read(t.host.queue_file(DNSMASQ)).expect("queue"),
        t.dnsmasq.to_line().as_bytes(),
        "the queue is not claimed without its lock"
    );
    t.assert_haproxy_served();
    common::reliability(
        "lock file is a dangling symlink to a host path",
        "refused (exit 1), the target is not created, the queue stays as it was",
        &t.redact().apply(&format!(
            "{}; target absent; queue unchanged; haproxy served",
            exit(run.code)
        )),
    );
}

#[test]
fn timestamp_symlink_is_never_followed() {
    if !privileged("timestamp is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    t.host.write_queue(DNSMASQ, t.dnsmasq.to_line().as_bytes());
    let target = t.host_file(b"host data\n");
    symlink(&target.path, t.host.kind_dir(DNSMASQ).join("timestamp")).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    target.assert_untouched();
    t.host.assert_ack(DNSMASQ, &t.dnsmasq.id, "ok");
    t.assert_haproxy_served();
    common::reliability(
        "timestamp file is a symlink to a host file",
        "the host never opens the timestamp: the file keeps its bytes and mtime, requests are served",
        &format!(
            "{}; host file untouched; both requests acknowledged ok",
            exit(run.code)
        ),
    );
}

#[test]
fn pending_symlink_is_removed_not_followed() {
    if !privileged("pending is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    fs::write(t.host.queue_file(DNSMASQ), t.dnsmasq.to_line()).expect("queue");
    let target = t.host_file(b"host data\n");
    let pending = t.host.kind_dir(DNSMASQ).join("pending");
    symlink(&target.path, &pending).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    target.assert_untouched();
    assert!(
        fs::symlink_metadata(&pending).is_err(),
        "the link itself is removed"
    );
    t.host.assert_ack(DNSMASQ, &t.dnsmasq.id, "ok");
    common::reliability(
        "pending marker is a symlink to a host file",
        "the link itself is unlinked (unlinkat), the file it points at stays",
        &format!("{}; link removed; host file untouched", exit(run.code)),
    );
}

#[test]
fn ack_path_symlink_is_replaced_not_followed() {
    if !privileged("acks/<id>.json is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    t.host.write_queue(DNSMASQ, t.dnsmasq.to_line().as_bytes());
    let target = t.host_file(b"host data\n");
    let acks = t.host.kind_dir(DNSMASQ).join("acks");
    fs::create_dir(&acks).expect("mkdir acks");
    let ack_path = acks.join(format!("{}.json", t.dnsmasq.id));
    symlink(&target.path, &ack_path).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    target.assert_untouched();
    assert!(fs::symlink_metadata(&ack_path).expect("ack").is_file());
    t.host.assert_ack(DNSMASQ, &t.dnsmasq.id, "ok");
    common::reliability(
        "acknowledgement path is a symlink to a host file",
        "the ack is a fresh file renamed over the link; the host file stays",
        &format!(
            "{}; ack is a regular file; host file untouched",
            exit(run.code)
        ),
    );
}

#[test]
fn acks_dir_symlink_is_never_written_through() {
    if !privileged("acks/ is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    t.host.write_queue(DNSMASQ, t.dnsmasq.to_line().as_bytes());
    let elsewhere = t.host.dir().join("host-dir");
    fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, t.host.kind_dir(DNSMASQ).join("acks")).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
    assert!(
        run.stderr.contains("cannot acknowledge request") && run.stderr.contains("is a symlink"),
        "{}",
        run.stderr
    );
    assert!(
        t.host.run_names().contains(
            &t.host
                .sidecar_name(DNSMASQ, t.dnsmasq.tag.as_deref().expect("tag"))
        ),
        "the request itself is still served"
    );
    t.assert_haproxy_served();
    common::reliability(
        "acks directory is a symlink to a host directory",
        "nothing is written through it (logged `cannot acknowledge`), the request still runs",
        &format!(
            "{}; host directory empty; sidecar started; stderr names the link",
            exit(run.code)
        ),
    );
}

#[test]
fn kind_dir_symlink_is_refused() {
    if !privileged("the kind directory is a symlink") {
        return;
    }
    let t = TwoKinds::new();
    let elsewhere = t.host.dir().join("host-dir");
    fs::create_dir(&elsewhere).expect("mkdir");
    fs::write(elsewhere.join("queue.jsonl"), t.dnsmasq.to_line()).expect("queue");
    let kind_dir = t.host.kind_dir(DNSMASQ);
    fs::remove_dir(&kind_dir).expect("rmdir");
    symlink(&elsewhere, &kind_dir).expect("symlink");

    let run = t.host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("{} is a symlink", kind_dir.display())),
        "{}",
        run.stderr
    );
    let names: Vec<_> = fs::read_dir(&elsewhere)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["queue.jsonl"], "nothing created there");
    assert_eq!(
        fs::read(elsewhere.join("queue.jsonl")).expect("read"),
        t.dnsmasq.to_line().as_bytes()
    );
    t.assert_haproxy_served();
    common::reliability(
        "the kind directory itself is a symlink to a host directory",
        "refused (exit 1); nothing created, read or truncated there",
        &format!(
            "{}; target directory unchanged; haproxy served",
            exit(run.code)
        ),
    );
}

#[test]
fn symlinked_parent_of_the_queue_root_is_refused() {
    if !privileged("a parent of the queue root is a symlink") {
        return;
    }
    // Default layout: the queue root lies in /var/lib/neutron, which the agent writes.
    let mut host = FakeHost::new();
    let neutron = host.dir().join("neutron");
    let elsewhere = host.dir().join("host-dir");
    fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, &neutron).expect("symlink");
    let root = neutron.join("sidespawn");
    host.set_config(|c| c["queue_root"] = json!(root));

    let run = host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("{} is a symlink", neutron.display())),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
    common::reliability(
        "a parent directory of the queue root is a symlink",
        "refused at that component (exit 1); nothing created behind the link",
        &host.redact().apply(&format!(
            "{}; `{}`; target directory empty",
            exit(run.code),
            run.error_line()
        )),
    );
}

#[test]
fn fifo_queue_does_not_hang_the_sync() {
    if !privileged("queue.jsonl is a FIFO") {
        return;
    }
    let t = TwoKinds::new();
    nix::unistd::mkfifo(
        &t.host.queue_file(DNSMASQ),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    t.host.mark_pending(DNSMASQ);

    // `FakeHost::sync` fails the test if the sync takes over two minutes.
    let run = t.host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("is a FIFO, not a regular file"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    t.assert_haproxy_served();
    common::reliability(
        "queue file is a FIFO",
        "refused without opening it (O_PATH): the sync does not block, fails that kind, serves the others",
        &format!(
            "{} after {} ms; stderr: `… is a FIFO, not a regular file; remove it …`; haproxy served",
            exit(run.code),
            run.elapsed.as_millis()
        ),
    );
}

#[test]
fn hard_linked_queue_is_refused() {
    if !privileged("queue.jsonl is a hard link") {
        return;
    }
    let t = TwoKinds::new();
    let target = t.host_file(t.dnsmasq.to_line().as_bytes());
    fs::hard_link(&target.path, t.host.queue_file(DNSMASQ)).expect("link");
    t.host.mark_pending(DNSMASQ);

    let run = t.host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("has 2 hard links"), "{}", run.stderr);
    target.assert_untouched();
    assert_eq!(t.host.ack(DNSMASQ, &t.dnsmasq.id), None);
    t.assert_haproxy_served();
    common::reliability(
        "queue file is a hard link to a host file",
        "refused (link count 2): the file is neither read into the journal nor truncated",
        &format!("{}; host file untouched; haproxy served", exit(run.code)),
    );
}

#[test]
fn queue_swapped_between_file_and_symlink_during_syncs_never_touches_the_host_file() {
    let Some(host) = privileged_host("queue swapped while syncing") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let lure = start_record(DNSMASQ, &ns, &tag, &["--lure"]);
    let target = HostFile::new(host.dir().join("host-file"), lure.to_line().as_bytes());
    let kind_dir = host.kind_dir(DNSMASQ);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_failure = StopOnDrop(Arc::clone(&stop));
    let swapper = {
        let (stop, kind_dir, target) = (Arc::clone(&stop), kind_dir.clone(), target.path.clone());
        std::thread::spawn(move || swap_loop(&kind_dir, &target, &stop))
    };
    // At least SYNCS syncs, and on until one of them found a regular file in place (which
    // outcome a sync sees depends on the scheduler: on a loaded machine a run of syncs can all
    // land on the link), up to MAX_SYNCS.
    const SYNCS: usize = 30;
    const MAX_SYNCS: usize = 300;
    let mut codes = Vec::new();
    while codes.len() < SYNCS || (codes.len() < MAX_SYNCS && host.rejects(DNSMASQ).is_empty()) {
        host.mark_pending(DNSMASQ);
        let run = host.sync();
        codes.push(run.code);
        target.assert_untouched();
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    target.assert_untouched();
    assert!(swaps > codes.len(), "only {swaps} swaps");
    // Whatever the sync claimed came from the regular files, never from the host file.
    assert_eq!(host.ack(DNSMASQ, &lure.id), None);
    let claimed_junk = host.rejects(DNSMASQ).len();
    assert!(
        claimed_junk > 0,
        "the regular files in between were never claimed: {codes:?}, {swaps} swaps"
    );
    assert!(codes.iter().all(|c| matches!(c, Some(0 | 1))), "{codes:?}");
    common::reliability(
        "queue file swapped between a regular file and a symlink to a host file during syncs",
        "the host file is never read into the journal nor modified, whatever the timing",
        &format!(
            "{} syncs against {swaps} swaps: {} exited 0, {} exited 1 (refused the link); {claimed_junk} junk lines claimed from the regular files; host file untouched; its request never ran",
            codes.len(),
            codes.iter().filter(|c| **c == Some(0)).count(),
            codes.iter().filter(|c| **c == Some(1)).count()
        ),
    );
}

/// Swaps `queue.jsonl` atomically (rename) between a regular file holding a junk line and a
/// symlink to `target`, until `stop`; returns how many swaps it made.
fn swap_loop(kind_dir: &Path, target: &Path, stop: &AtomicBool) -> usize {
    let queue = kind_dir.join("queue.jsonl");
    let tmp = kind_dir.join(".swap");
    let mut swaps = 0;
    // Bounded even if the test never says stop.
    while !stop.load(Ordering::Relaxed) && swaps < 10_000_000 {
        let _ = fs::remove_file(&tmp);
        if swaps % 2 == 0 {
            symlink(target, &tmp).expect("symlink");
        } else {
            fs::write(&tmp, b"{\"junk\":1}\n").expect("file");
        }
        fs::rename(&tmp, &queue).expect("rename");
        swaps += 1;
    }
    swaps
}

// ---------------------------------------------------------------------------------------------
// Size and volume.

/// Exit code, peak RSS and wall time of a child process.
struct Measured {
    code: Option<i32>,
    peak_rss_kib: u64,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

/// `VmHWM` (peak resident set size, KiB) of a live process, if it still has memory.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to its end and measures its peak resident set size.
///
/// Not with wait4(2)'s `ru_maxrss`: std spawns with posix_spawn, whose child shares the test
/// process's memory until it execs, and Linux carries that high-water mark over the exec, so
/// `ru_maxrss` would report the (large, multi-threaded) test process. `VmHWM` belongs to the
/// sync's own address space; it is sampled every few milliseconds until the process exits (it
/// only grows, so the last sample is the peak up to a few milliseconds before exit).
fn run_measured(cmd: &mut Command, dir: &Path, timeout: Duration) -> Measured {
    let out = dir.join("measured.stdout");
    let err = dir.join("measured.stderr");
    let start = Instant::now();
    let mut child = cmd
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Measured {
        code: status.code(),
        peak_rss_kib: peak,
        elapsed: start.elapsed(),
        stdout: fs::read_to_string(&out).expect("stdout"),
        stderr: fs::read_to_string(&err).expect("stderr"),
    }
}

/// Peak RSS allowed for a sync facing a hostile volume of input.
const RSS_BOUND_KIB: u64 = 200 * 1024;

#[test]
fn sparse_multi_gigabyte_queue_is_cut_at_the_cap_quickly_with_bounded_memory() {
    let Some(host) = privileged_host("8 GiB sparse queue") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let good = start_record(DNSMASQ, &ns, &tag, &["--first-line"]);
    host.write_queue(DNSMASQ, good.to_line().as_bytes());
    const SIZE: u64 = 8 << 30;
    fs::File::options()
        .write(true)
        .open(host.queue_file(DNSMASQ))
        .and_then(|f| f.set_len(SIZE))
        .expect("extend the queue to 8 GiB of holes");

    let m = run_measured(&mut host.sync_cmd(), host.dir(), Duration::from_secs(120));
    assert_eq!(m.code, Some(0), "{}\n{}", m.stdout, m.stderr);
    assert!(
        (1..RSS_BOUND_KIB).contains(&m.peak_rss_kib),
        "peak RSS {} KiB",
        m.peak_rss_kib
    );
    assert!(m.elapsed < Duration::from_secs(30), "{:?}", m.elapsed);
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    host.assert_ack(DNSMASQ, &good.id, "ok");
    let reject = only_reject(&host, DNSMASQ);
    let reason = reject["reason"].as_str().expect("reason");
    let dropped = SIZE - good.to_line().len() as u64;
    assert_eq!(
        reason,
        format!("queue over 67108864 bytes; {dropped} bytes dropped")
    );
    assert_eq!(
        fs::metadata(host.queue_file(DNSMASQ)).expect("queue").len(),
        0
    );
    common::reliability(
        "8 GiB sparse queue file (one valid line, then holes)",
        "the valid line runs; the rest is dropped at the 64 MiB cap as one reject; quick, bounded memory",
        &format!(
            "{} in {:.1} s, peak RSS {} MiB; reject: {reason}",
            exit(m.code),
            m.elapsed.as_secs_f64(),
            m.peak_rss_kib / 1024
        ),
    );
}

#[test]
fn ten_megabyte_line_is_rejected_and_the_next_served() {
    let Some(host) = privileged_host("10 MB line") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let good = start_record(DNSMASQ, &ns, &tag, &["--after-the-big-one"]);
    let mut huge = start_record(DNSMASQ, &ns, &format!("{tag}-big"), &[]);
    huge.argv = vec!["y".repeat(10 * 1024 * 1024)];
    let mut queue = huge.to_line().into_bytes();
    queue.extend_from_slice(good.to_line().as_bytes());
    host.write_queue(DNSMASQ, &queue);

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    host.assert_ack(DNSMASQ, &good.id, "ok");
    let reject = only_reject(&host, DNSMASQ);
    let reason = reject["reason"].as_str().expect("reason");
    assert!(reason.contains("over the 1048576-byte limit"), "{reason}");
    assert!(run.stderr.contains(reason), "{}", run.stderr);
    common::reliability(
        "a 10 MB line (one record with a 10 MiB argument)",
        "rejected as over the 1 MiB line limit without holding it in memory; the next line runs",
        &format!(
            "{}; reject: {reason}; the next request started",
            exit(run.code)
        ),
    );
}

#[test]
fn hundred_thousand_identical_requests_make_one_podman_run() {
    let Some(host) = privileged_host("100,000 identical requests") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    const N: usize = 100_000;
    let records: Vec<Record> = (0..N)
        .map(|_| start_record(DNSMASQ, &ns, &tag, &["--no-hosts", "", "--port=0"]))
        .collect();
    let mut queue = Vec::with_capacity(N * 400);
    for r in &records {
        queue.extend_from_slice(r.to_line().as_bytes());
    }
    host.write_queue(DNSMASQ, &queue);

    let m = run_measured(&mut host.sync_cmd(), host.dir(), Duration::from_secs(300));
    assert_eq!(m.code, Some(0), "{}\n{}", m.stdout, m.stderr);
    assert!(
        m.stdout.contains(&format!("claimed {N}, started 1,")),
        "{}",
        m.stdout
    );
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    assert_eq!(
        host.calls().len(),
        2,
        "one `ps` and one `run`: {:?}",
        host.calls().iter().map(|c| &c[0]).collect::<Vec<_>>()
    );
    assert!(
        (1..RSS_BOUND_KIB).contains(&m.peak_rss_kib),
        "peak RSS {} KiB",
        m.peak_rss_kib
    );
    // Every request is answered: the last with the start, the others as superseded by it.
    host.assert_ack(DNSMASQ, &records[N - 1].id, "ok");
    host.assert_ack(DNSMASQ, &records[0].id, "ok");
    let acks = fs::read_dir(host.kind_dir(DNSMASQ).join("acks"))
        .expect("acks")
        .count();
    assert_eq!(acks, N);
    common::reliability(
        "100,000 identical start requests in one queue",
        "coalesced into one `podman run`; every request acknowledged; peak RSS < 200 MB",
        &format!(
            "one `ps` + one `run`; {acks} acks; {} in {:.1} s, peak RSS {} MiB",
            exit(m.code),
            m.elapsed.as_secs_f64(),
            m.peak_rss_kib / 1024
        ),
    );
}

#[test]
fn one_kind_flooding_does_not_starve_another() {
    if !privileged("flood in one kind") {
        return;
    }
    let t = TwoKinds::new();
    // 200,000 junk lines to begin with; then the dnsmasq agent appends more without the lock
    // and re-creates the marker, for as long as the test lets it, so that its kind always has
    // more to claim.
    t.host
        .write_queue(DNSMASQ, &b"{\"v\":1,\"id\":\"junk\"}\n".repeat(200_000));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_failure = StopOnDrop(Arc::clone(&stop));
    let flooder = {
        let stop = Arc::clone(&stop);
        let dir = t.host.kind_dir(DNSMASQ);
        std::thread::spawn(move || {
            let chunk = b"{\"v\":1,\"id\":\"junk\"}\n".repeat(10_000);
            let mut rounds = 0usize;
            // Paced (about 4 MB/s) and bounded (at most 100 s): a flood the sync is always
            // busy with, that does not fill the disk of the machine running the test.
            while !stop.load(Ordering::Relaxed) && rounds < 2_000 {
                let mut q = fs::File::options()
                    .append(true)
                    .create(true)
                    .open(dir.join("queue.jsonl"))
                    .expect("open queue");
                q.write_all(&chunk).expect("append");
                let _ = fs::write(dir.join("pending"), b"");
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            rounds
        })
    };
    let spawn_sync = |kind: Kind| {
        // As the units run it: one `sync --kind K` per kind's path unit.
        let mut cmd = t.host.sync_cmd();
        cmd.args(["--kind", kind.as_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ChildGuard(cmd.spawn().expect("spawn sync"))
    };
    let mut flooded = spawn_sync(DNSMASQ);
    let start = Instant::now();
    let mut other = spawn_sync(HAPROXY);
    common::wait_until(
        Duration::from_secs(60),
        "the haproxy request is acknowledged during the flood",
        || t.host.ack(HAPROXY, &t.haproxy.id).is_some(),
    );
    let served_after = start.elapsed();
    let still_flooding = !flooder.is_finished();
    // Observed, not asserted: between two bursts the flooded sync may find nothing pending and
    // end (its path unit would start it again); what matters is the flood going on.
    let flood_sync_busy = flooded.0.try_wait().expect("try_wait").is_none();
    let other_status = other.0.wait().expect("wait");
    stop.store(true, Ordering::Relaxed);
    let rounds = flooder.join().expect("flooder");
    // With the flood over, the flooded kind's sync drains what is left and ends.
    common::wait_until(Duration::from_secs(120), "the flooded sync ends", || {
        flooded.0.try_wait().expect("try_wait").is_some()
    });
    let flooded_status = flooded.0.wait().expect("wait");

    assert!(still_flooding, "the flood ended before haproxy was served");
    assert!(served_after < Duration::from_secs(20), "{served_after:?}");
    assert_eq!(other_status.code(), Some(0));
    assert_eq!(flooded_status.code(), Some(0));
    t.assert_haproxy_served();
    let rejects = t.host.rejects(DNSMASQ);
    assert!(
        rejects.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("more rejected lines")),
        "floods are summarised past the listing cap"
    );
    common::reliability(
        "one kind's queue flooded with junk (200,000 lines, then 10,000 more every 50 ms without the lock) while another kind has a valid request",
        "the other kind's sync (its own unit, as installed) serves it while the flood goes on; junk is rejected in bounded summaries; the flooded sync ends once the flood stops",
        &format!(
            "haproxy acknowledged ok {:.1} s after both syncs started, the flood going on{}; {rounds} chunks appended in all; both syncs exit 0",
            served_after.as_secs_f64(),
            if flood_sync_busy {
                " and the dnsmasq sync busy with it"
            } else {
                ""
            }
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// What reaches podman.

#[test]
fn podman_options_in_argv_reach_only_the_daemon() {
    let Some(host) = privileged_host("podman options in argv") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let hostile: [&str; 11] = [
        "--privileged",
        "-v",
        "/:/host",
        "--volume=/:/host:rw",
        "--network=host",
        "--pid=host",
        "--entrypoint=/bin/sh",
        "--security-opt=label=disable",
        "--",
        "--name=evil",
        "$(reboot)",
    ];
    let rec = start_record(DNSMASQ, &ns, &tag, &hostile);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    let runs = host.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let argv = &runs[0];
    let daemon = after_image(argv);
    let mut want = vec!["-k".to_owned()];
    want.extend(hostile.iter().map(|s| (*s).to_owned()));
    assert_eq!(daemon, want, "the daemon gets the request's argv exactly");
    // Everything before the `--` that precedes the image is podman's.
    let podman_side = &argv[..argv.len() - daemon.len() - 2];
    assert_eq!(argv[podman_side.len()], "--");
    for word in podman_side {
        assert!(
            !hostile.contains(&word.as_str()),
            "`{word}` from the request reached podman's own options: {argv:?}"
        );
    }
    let network = podman_side
        .iter()
        .position(|a| a == "--network")
        .map(|i| podman_side[i + 1].clone());
    assert_eq!(network, Some(format!("ns:/run/netns/{}", ns.name())));
    assert_eq!(
        podman_side
            .iter()
            .filter(|a| a.starts_with("--name="))
            .count(),
        1
    );
    common::reliability(
        "argv with podman options (`--privileged`, `-v /:/host`, `--network=host`, `--entrypoint=/bin/sh`, `--`, `--name=evil`, …)",
        "they reach the daemon's argv only: nothing from the record appears before the image",
        &format!(
            "podman run argv before the image holds none of them; after it: `{}`",
            daemon.join(" ")
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// An entry placed in /run/netns (as a privileged agent with the host's /run/netns mounted
/// could), removed on drop.
struct NetnsEntry(PathBuf);

impl Drop for NetnsEntry {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Queues a start request naming namespace `name` with inode `ino` next to a valid one,
/// syncs, and checks that only the valid one ran and the other was rejected with `want`.
fn netns_case(case: &str, name: &str, ino: u64, want: &str, also_redact: &[u64]) {
    let host = FakeHost::new();
    let (ns, tag) = dhcp_netns();
    let good = start_record(DNSMASQ, &ns, &tag, &["--good"]);
    let mut bad = start_record(DNSMASQ, &ns, &format!("{tag}-bad"), &["--bad"]);
    let bad_ns = bad.netns.as_mut().expect("netns");
    bad_ns.name = name.to_owned();
    bad_ns.ino = ino;
    host.write_queue(
        DNSMASQ,
        format!("{}{}", bad.to_line(), good.to_line()).as_bytes(),
    );

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    host.assert_ack(DNSMASQ, &good.id, "ok");
    let ack = host.assert_ack(DNSMASQ, &bad.id, "rejected");
    let message = ack["message"].as_str().expect("message");
    assert!(message.contains(want), "{message}");
    let reject = only_reject(&host, DNSMASQ);
    assert_eq!(reject["reason"], message);
    assert!(run.stderr.contains(message), "{}", run.stderr);
    let redact = redactor(&host, &ns, &[&good, &bad])
        .add(name, "<entry>")
        .add(ino, "<ino>");
    let redact = also_redact
        .iter()
        .fold(redact, |r, other| r.add(other, "<other ino>"));
    common::reliability(
        case,
        &format!("rejected right before `podman run` ({want}); the valid request runs"),
        &redact.apply(&format!(
            "{}; ack rejected: {message}; no podman run for it",
            exit(run.code)
        )),
    );
}

#[test]
fn netns_entry_that_is_a_regular_file_is_rejected() {
    if !privileged("netns entry is a regular file") {
        return;
    }
    let name = format!("qdhcp-{}", common::uuid());
    let entry = NetnsEntry(Path::new(common::NETNS_DIR).join(&name));
    fs::write(&entry.0, b"").expect("create file in /run/netns");
    let ino = fs::metadata(&entry.0).expect("stat").ino();
    netns_case(
        "netns entry that is a regular file (matching name and inode)",
        &name,
        ino,
        "is not a network namespace mount",
        &[],
    );
}

#[test]
fn netns_entry_that_is_a_symlink_to_a_namespace_is_rejected() {
    if !privileged("netns entry is a symlink") {
        return;
    }
    let real = Netns::new(&format!("qdhcp-{}", common::uuid()));
    let name = format!("qdhcp-{}", common::uuid());
    let entry = NetnsEntry(Path::new(common::NETNS_DIR).join(&name));
    symlink(real.path(), &entry.0).expect("symlink in /run/netns");
    netns_case(
        "netns entry that is a symlink to another namespace",
        &name,
        real.inode(),
        "is not a network namespace mount",
        &[],
    );
}

#[test]
fn netns_inode_mismatch_is_rejected() {
    if !privileged("netns inode mismatch") {
        return;
    }
    let other = Netns::new(&format!("qdhcp-{}", common::uuid()));
    netns_case(
        "namespace recreated under the same name (inode differs from the record's)",
        other.name(),
        other.inode() + 1,
        "was replaced since the request",
        &[other.inode()],
    );
}

/// A namespace of another type bind-mounted under /run/netns, unmounted and removed on drop.
struct ForeignNamespace(PathBuf);

impl ForeignNamespace {
    /// `unshare --TYPE=FILE true` binds the new namespace of that type onto FILE.
    fn new(name: &str, nstype: &str) -> ForeignNamespace {
        let path = Path::new(common::NETNS_DIR).join(name);
        fs::create_dir_all(common::NETNS_DIR).expect("create /run/netns");
        fs::write(&path, b"").expect("create the mount point in /run/netns");
        let entry = ForeignNamespace(path);
        common::run(
            Command::new("unshare")
                .arg(format!("--{nstype}={}", entry.0.display()))
                .arg("true"),
        );
        entry
    }
}

impl Drop for ForeignNamespace {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn netns_entry_that_is_a_uts_namespace_is_rejected() {
    if !privileged("netns entry is a UTS namespace") {
        return;
    }
    let name = format!("qdhcp-{}", common::uuid());
    let entry = ForeignNamespace::new(&name, "uts");
    // A real nsfs mount: the type is the only thing wrong with it.
    let ino = fs::metadata(&entry.0).expect("stat").ino();
    netns_case(
        "netns entry that is a bind mount of a UTS namespace (nsfs, matching name and inode)",
        &name,
        ino,
        "is a uts namespace, not a network namespace",
        &[],
    );
}

#[test]
fn one_agent_asking_for_a_thousand_new_sidecars_gets_max_sidecars() {
    if !privileged("a thousand distinct tags") {
        return;
    }
    const LIMIT: usize = 20;
    const TAGS: usize = 1000;
    let host = FakeHost::with_config(|c| c["kinds"]["dnsmasq"]["max_sidecars"] = LIMIT.into());
    let (ns, tag) = dhcp_netns();
    let records: Vec<Record> = (0..TAGS)
        .map(|i| start_record(DNSMASQ, &ns, &format!("{tag}-{i:04}"), &["--x"]))
        .collect();
    let text: String = records.iter().map(Record::to_line).collect();
    host.write_queue(DNSMASQ, text.as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(host.runs().len(), LIMIT, "{}", run.summary());
    let limit = format!(
        "limit of {LIMIT} sidecars for kind dnsmasq reached; raise kinds.dnsmasq.max_sidecars in {}",
        host.config_path().display()
    );
    let (mut ok, mut refused) = (0, 0);
    for r in &records {
        let ack = host
            .ack(DNSMASQ, &r.id)
            .expect("every request is acknowledged");
        match ack["result"].as_str() {
            Some("ok") => ok += 1,
            Some("rejected") => {
                assert_eq!(ack["message"], limit.as_str());
                refused += 1;
            }
            other => panic!("{other:?}: {ack}"),
        }
    }
    assert_eq!((ok, refused), (LIMIT, TAGS - LIMIT));
    assert_eq!(host.rejects(DNSMASQ).len(), TAGS - LIMIT);
    assert!(
        run.summary()
            .contains(&format!("rejected {}", TAGS - LIMIT)),
        "{}",
        run.summary()
    );
    common::reliability(
        &format!(
            "{TAGS} start requests with distinct tags from one agent (`max_sidecars: {LIMIT}`)"
        ),
        "the first max_sidecars start, the rest are rejected naming the key to raise; no podman run for them",
        &host.redact().apply(&format!(
            "{} after {} ms; {LIMIT} podman runs; {} acks rejected: `{limit}`",
            exit(run.code),
            run.elapsed.as_millis(),
            TAGS - LIMIT
        )),
    );
}

#[test]
fn failed_start_with_80_kib_of_argv_is_still_acknowledged() {
    if !privileged("a failing start with 80 KiB of argv") {
        return;
    }
    // Above the default max_argv_bytes (64 KiB), so the limit is raised: the request must reach
    // podman and fail there.
    let host = FakeHost::with_config(|c| {
        c["kinds"]["dnsmasq"]["max_argv_bytes"] = json!(1 << 20);
    });
    let (ns, tag) = dhcp_netns();
    let args: Vec<String> = (0..800).map(|i| format!("--dhcp-host={i:0>88}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rec = start_record(DNSMASQ, &ns, &tag, &args);
    host.fail_run_of(&host.sidecar_name(DNSMASQ, &tag));
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    let path = host.kind_dir(DNSMASQ).join(format!("acks/{}.json", rec.id));
    let size = fs::metadata(&path).expect("acknowledged").len();
    assert!(size <= sidespawn::shared::ack::MAX_ACK_BYTES, "{size}");
    let ack = host.assert_ack(DNSMASQ, &rec.id, "failed");
    let message = ack["message"].as_str().expect("message");
    assert!(message.contains("injected failure"), "{message}");
    assert!(message.contains("more bytes)"), "{message}");
    common::reliability(
        "start request with 80 KiB of argv whose `podman run` fails",
        "acknowledged `failed` with podman's reason; the command line in the message is cut, the ack stays under 64 KiB",
        &host.redact().add(&tag, "<tag>").apply(&format!(
            "{}; ack failed ({size} bytes), message {} bytes ending `{}`",
            exit(run.code),
            message.len(),
            message.rsplit_once("): ").map_or(message, |(_, tail)| tail)
        )),
    );
}
