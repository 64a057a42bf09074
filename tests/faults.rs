//! Fault injection: what the sync and the wrapper do when what they depend on breaks — podman
//! missing, hanging or failing, the shared directory full or read-only, the host state corrupt
//! or gone, a namespace deleted between claim and start, a stuck lock — and that each fault ends
//! with a clear message and, once repaired, with every request served.
//!
//! A sync killed (SIGKILL) at each of its steps and run again is proven against real podman in
//! `tests/sync_podman.rs`, `sync_killed_at_every_step_converges`.
//!
//! Podman is the logging shim of `common::fake_host`. Needs root and `ip`.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fake_host::{FakeHost, dhcp_netns, exit, start_record};
use common::{Netns, TempDir, TmpfsMount};
use serde_json::{Value, json};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;

const DNSMASQ: Kind = Kind::Dnsmasq;
const HAPROXY: Kind = Kind::Haproxy;

fn privileged(what: &str) -> bool {
    common::privileged(&format!("faults: {what}"))
}

/// [`privileged`] and a fresh fake host.
fn privileged_host(what: &str) -> Option<FakeHost> {
    FakeHost::privileged(&format!("faults: {what}"))
}

#[test]
fn podman_missing_fails_clearly_and_the_request_runs_on_the_next_good_sync() {
    if !privileged("podman missing") {
        return;
    }
    let mut host = FakeHost::with_config(|c| c["podman"] = json!("/nonexistent/podman"));
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let error = run.error_line().to_owned();
    assert!(
        error.contains("cannot run /nonexistent/podman")
            && error.contains("podman is not installed")
            && error.contains("set \"podman\" in the host configuration"),
        "{}",
        run.stderr
    );
    // Claimed into the journal, not lost, not acknowledged.
    assert_eq!(host.journal_ids(DNSMASQ), std::slice::from_ref(&rec.id));
    assert_eq!(host.ack(DNSMASQ, &rec.id), None);
    let status = host.status(DNSMASQ).expect("status recorded");
    assert_eq!(status["ok"], false, "{status}");

    let shim = host.dir().join("podman");
    host.set_config(|c| c["podman"] = json!(shim));
    let again = host.sync();
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    assert!(host.journal_ids(DNSMASQ).is_empty());
    common::reliability(
        "podman missing (`\"podman\": \"/nonexistent/podman\"`)",
        "sync exits 1 naming podman and the setting; the request stays in the journal and runs on the next good sync",
        &host.redact().apply(&format!(
            "{}: `{error}`; request kept in the journal, status ok=false; after the fix: {}, started, acknowledged ok",
            exit(run.code),
            exit(again.code)
        )),
    );
}

#[test]
fn podman_hanging_is_killed_at_its_timeout_and_the_request_acknowledged_failed() {
    if !privileged("podman hanging") {
        return;
    }
    let host = FakeHost::with_config(|c| c["podman_timeout_ms"] = json!(1000));
    host.hang_runs();
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    let ack = host.assert_ack(DNSMASQ, &rec.id, "failed");
    let message = ack["message"].as_str().expect("message");
    assert!(
        message.contains("timed out after 1s and was killed"),
        "{message}"
    );
    assert!(run.summary().contains("failed 1"), "{}", run.summary());
    let pid = host.hung_pid().expect("the shim hung");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the hung podman {pid} outlived its timeout"
    );
    assert!(
        host.journal_ids(DNSMASQ).is_empty(),
        "acknowledged, so done"
    );
    common::reliability(
        "podman hangs on `run` (`podman_timeout_ms: 1000`)",
        "the call is killed at the timeout with its process group; the sync finishes; the request is acknowledged `failed` with \"timed out\"",
        &host.redact().apply(&format!(
            "{} after {:.1} s; ack failed: `podman run …` {}; hung podman gone",
            exit(run.code),
            run.elapsed.as_secs_f64(),
            message
                .rsplit_once("` ")
                .map_or(message, |(_, outcome)| outcome)
        )),
    );
}

#[test]
fn podman_failing_for_one_request_leaves_the_others_running() {
    let Some(host) = privileged_host("podman failing for one container") else {
        return;
    };
    let (ns, _) = dhcp_netns();
    let tags: Vec<String> = (0..3)
        .map(|_| format!("dnsmasq-{}", common::uuid()))
        .collect();
    let recs: Vec<_> = tags
        .iter()
        .map(|t| start_record(DNSMASQ, &ns, t, &["--port=0"]))
        .collect();
    let failing = host.sidecar_name(DNSMASQ, &tags[1]);
    host.fail_run_of(&failing);
    let queue: String = recs.iter().map(|r| r.to_line()).collect();
    host.write_queue(DNSMASQ, queue.as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.summary().contains("started 2") && run.summary().contains("failed 1"),
        "{}",
        run.summary()
    );
    host.assert_ack(DNSMASQ, &recs[0].id, "ok");
    host.assert_ack(DNSMASQ, &recs[2].id, "ok");
    let ack = host.assert_ack(DNSMASQ, &recs[1].id, "failed");
    let message = ack["message"].as_str().expect("message");
    assert!(
        message.contains("Error: injected failure for") && message.contains(&failing),
        "{message}"
    );
    assert_eq!(ack["container"], failing.as_str());

    // The agent asks again (as Neutron does when the pid file never appears) once podman works.
    host.heal_run_of(&failing);
    let retry = start_record(DNSMASQ, &ns, &tags[1], &["--port=0"]);
    host.write_queue(DNSMASQ, retry.to_line().as_bytes());
    let again = host.sync();
    assert_eq!(again.code, Some(0), "{again:#?}");
    host.assert_ack(DNSMASQ, &retry.id, "ok");
    assert_eq!(
        host.run_names().iter().filter(|n| **n == failing).count(),
        2,
        "tried once, failed, tried again"
    );
    common::reliability(
        "podman fails for one container of three",
        "the other two start; the failing request is acknowledged `failed` with podman's stderr; re-queued, it starts",
        &format!(
            "{}; `{}`; ack failed with podman's `Error: injected failure for …`; re-queued: started, ack ok",
            exit(run.code),
            run.summary()
        ),
    );
}

#[test]
fn podman_ps_failing_keeps_the_request_for_the_next_sync() {
    let Some(host) = privileged_host("podman ps failing") else {
        return;
    };
    host.fail_ps();
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let error = run.error_line().to_owned();
    assert!(
        error.contains("cannot list containers") && error.contains("injected failure of ps"),
        "{}",
        run.stderr
    );
    assert_eq!(host.journal_ids(DNSMASQ), std::slice::from_ref(&rec.id));
    assert!(host.run_names().is_empty());

    host.heal_ps();
    let again = host.sync();
    assert_eq!(again.code, Some(0), "{again:#?}");
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    common::reliability(
        "`podman ps` fails",
        "sync exits 1 with podman's error before changing anything; the request waits in the journal",
        &host.redact().apply(&format!(
            "{}: `{error}`; nothing run; next sync: started, ack ok",
            exit(run.code)
        )),
    );
}

/// Runs `cmd`, asserting its exit code.
fn expect_exit(cmd: &mut Command, code: i32) -> std::process::Output {
    let out = common::output(cmd);
    common::assert_exit(cmd, &out, code);
    out
}

/// A queue root on a tmpfs of `size`, a namespace to call the wrapper from, and one request
/// (`first`) already queued: `before` holds the queue's bytes then.
struct TmpfsQueue {
    tmpfs: TmpfsMount,
    dir: TempDir,
    ns: Netns,
    queue: PathBuf,
    before: Vec<u8>,
}

impl TmpfsQueue {
    fn new(size: &str) -> TmpfsQueue {
        let tmpfs = TmpfsMount::new(size);
        let dir = TempDir::new("sidespawn-faults");
        fs::create_dir(tmpfs.path().join("dnsmasq")).expect("mkdir");
        let (ns, _) = dhcp_netns();
        let queue = common::queue_file(tmpfs.path(), "dnsmasq");
        let mut q = TmpfsQueue {
            tmpfs,
            dir,
            ns,
            queue,
            before: Vec::new(),
        };
        expect_exit(&mut q.wrapper("first"), 0);
        q.before = fs::read(&q.queue).expect("queue");
        q
    }

    /// The tmpfs, the queue root.
    fn root(&self) -> &Path {
        self.tmpfs.path()
    }

    /// The wrapper, called in the namespace the explicit way, with a configuration naming
    /// the queue root.
    fn wrapper(&self, arg: &str) -> Command {
        let config = self.dir.join("wrapper.json");
        fs::write(&config, json!({ "queue_root": self.root() }).to_string()).expect("config");
        let mut cmd = self.ns.exec(env!("CARGO_BIN_EXE_sidespawn-wrapper"));
        cmd.args(["--kind", "dnsmasq", "--", arg])
            .env(common::WRAPPER_CONFIG_ENV, config)
            .env_remove("PROCESS_TAG");
        cmd
    }
}

#[test]
fn wrapper_on_a_full_file_system_exits_1_and_leaves_the_queue_unchanged() {
    if !privileged("wrapper: ENOSPC") {
        return;
    }
    let q = TmpfsQueue::new("64k");
    let (tmpfs, root, queue, before) = (&q.tmpfs, q.root(), &q.queue, &q.before);

    // Completely full: not a block left.
    let filler = root.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    assert!(tmpfs.available() < 4096, "{} bytes left", tmpfs.available());
    // Bigger than the free room left in the queue file's last page.
    let big = "x".repeat(8000);
    let out = expect_exit(&mut q.wrapper(&big), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Linux either refuses the write (ENOSPC) or writes what fits (a short write).
    assert!(
        (stderr.contains("No space left on device") || stderr.contains("short write"))
            && stderr.contains(&queue.display().to_string()),
        "{stderr}"
    );
    assert_eq!(&fs::read(queue).expect("queue"), before, "queue changed");

    fs::remove_file(&filler).expect("free space");
    let mut later = q.wrapper("third");
    expect_exit(&mut later, 0);
    let records = common::queue_records(root, "dnsmasq");
    let argv: Vec<&Value> = records.iter().map(|r| &r["argv"][0]).collect();
    assert_eq!(argv, [&json!("first"), &json!("third")]);
    common::reliability(
        "the shared directory's file system is full (ENOSPC) when the wrapper appends",
        "wrapper exits 1 naming the queue and the error; the queue is byte-for-byte unchanged; later requests go through",
        &tmpfs_redact(root).apply(&format!(
            "exit 1: `{}`; queue unchanged; after freeing space the next request is queued",
            stderr.trim()
        )),
    );
}

#[test]
fn wrapper_on_a_read_only_file_system_exits_1_and_leaves_the_queue_unchanged() {
    if !privileged("wrapper: read-only file system") {
        return;
    }
    use nix::mount::{MsFlags, mount};
    let q = TmpfsQueue::new("1m");
    let (root, queue, before) = (q.root(), &q.queue, &q.before);

    let remount = |flags: MsFlags| {
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .expect("remount")
    };
    remount(MsFlags::MS_RDONLY);
    let mut ro = q.wrapper("second");
    let out = common::output(&mut ro);
    remount(MsFlags::empty());
    common::assert_exit(&ro, &out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Read-only file system") && stderr.contains(&root.display().to_string()),
        "{stderr}"
    );
    assert_eq!(&fs::read(queue).expect("queue"), before, "queue changed");

    let mut later = q.wrapper("third");
    expect_exit(&mut later, 0);
    assert_eq!(common::queue_records(root, "dnsmasq").len(), 2);
    common::reliability(
        "the shared directory is read-only (`mount -o remount,ro`) when the wrapper appends",
        "wrapper exits 1 naming the path and the error; the queue is unchanged; after remounting rw requests go through",
        &tmpfs_redact(root).apply(&format!(
            "exit 1: `{}`; queue unchanged; rw again: next request queued",
            stderr.trim()
        )),
    );
}

/// Placeholders for a tmpfs mount point.
fn tmpfs_redact(root: &Path) -> common::Redact {
    common::Redact::new().add(root.display(), "<tmpfs>")
}

#[test]
fn corrupt_generation_file_fails_clearly_and_the_advice_recovers() {
    let Some(host) = privileged_host("corrupt generation state") else {
        return;
    };
    // What podman reports: a sidecar of ours from before, at generation 41.
    host.set_ps(&json!([{
        "Id": "f".repeat(64),
        "Names": [host.sidecar_name(DNSMASQ, "old")],
        "State": "running",
        "Pid": 4242,
        "Image": common::fake_host::IMAGE,
        "Labels": {
            "io.sidespawn.managed-by": "sidespawn",
            "io.sidespawn.instance": host.instance(),
            "io.sidespawn.kind": "dnsmasq",
            "io.sidespawn.key": "dnsmasq/tag/old",
            "io.sidespawn.tag": "old",
            "io.sidespawn.generation": "41"
        }
    }]));
    let generation = host.state_dir().join("generation/dnsmasq");
    fs::create_dir_all(generation.parent().expect("parent")).expect("mkdir");
    fs::write(&generation, b"\x00garbage").expect("corrupt");
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());
    let (hns, htag) = (&ns, tag.replace("dnsmasq-", "haproxy-"));
    let other = start_record(HAPROXY, hns, &htag, &["-f", "/x.cfg"]);
    host.write_queue(HAPROXY, other.to_line().as_bytes());

    let run = host.sync();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let path = generation.display().to_string();
    assert!(
        run.stderr.contains(&format!("corrupt state file {path}"))
            && run
                .stderr
                .contains("move it aside and run `sidespawn sync --full`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        host.journal_ids(DNSMASQ),
        std::slice::from_ref(&rec.id),
        "request kept"
    );
    let status = host.status(DNSMASQ).expect("status");
    assert_eq!(status["ok"], false, "`status` shows the failure: {status}");
    // The other kind's state is fine: it is served.
    host.assert_ack(HAPROXY, &other.id, "ok");

    // The advice, followed.
    fs::rename(&generation, generation.with_extension("bad")).expect("move aside");
    let mut full = host.sync_cmd();
    full.arg("--full");
    let again = host.run_sync(&mut full);
    assert_eq!(again.code, Some(0), "{again:#?}");
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    let run_argv = host
        .runs()
        .into_iter()
        .find(|c| common::fake_host::run_name(c) == Some(host.sidecar_name(DNSMASQ, &tag)))
        .expect("started");
    assert!(
        run_argv.contains(&"--label=io.sidespawn.generation=42".to_owned()),
        "generations continue after podman's highest: {run_argv:?}"
    );
    let first_error = run.error_line().to_owned();
    common::reliability(
        "host state corrupt: garbage in `<state_dir>/generation/dnsmasq`",
        "that kind's sync exits 1 naming the file and the recovery; `status` shows the failure; the request waits in the journal; other kinds are served; moving the file aside and `sync --full` recovers, generations continuing from podman's labels",
        &host.redact().apply(&format!(
            "{}: `{first_error}`; status ok=false; haproxy served; after the advice: {}, started with generation 42 (podman had 41)",
            exit(run.code),
            exit(again.code)
        )),
    );
}

#[test]
fn damaged_journal_lines_are_skipped_and_the_rest_runs() {
    let Some(host) = privileged_host("damaged journal") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    let journal = host.journal_path(DNSMASQ);
    fs::create_dir_all(journal.parent().expect("parent")).expect("mkdir");
    fs::set_permissions(
        host.state_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    fs::set_permissions(
        journal.parent().expect("parent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    // A crash mid-write and a stray write: garbage, the record, a torn line.
    let mut text = b"\xff\xfegarbage\n".to_vec();
    text.extend_from_slice(rec.to_line().as_bytes());
    text.extend_from_slice(b"{\"v\":1,\"id\":\"tor");
    fs::write(&journal, &text).expect("journal");
    host.mark_pending(DNSMASQ);

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    let path = journal.display().to_string();
    let skipped: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(&path) && l.contains("skipped (journal damaged?)"))
        .collect();
    assert_eq!(skipped.len(), 2, "{}", run.stderr);
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    assert_eq!(fs::metadata(&journal).expect("journal").len(), 0, "cleared");
    common::reliability(
        "host journal damaged (a garbage line and a torn last line around a valid record)",
        "damaged lines are logged with the journal's path and skipped; the valid record runs; the journal is cleared",
        &host.redact().apply(&format!(
            "{}; 2 lines logged `{}`; the valid request started, ack ok",
            exit(run.code),
            "skipped (journal damaged?)"
        )),
    );
}

#[test]
fn state_dir_deleted_is_recreated_and_replaced_by_a_file_is_refused_clearly() {
    let Some(host) = privileged_host("state dir deleted / replaced") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let first = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, first.to_line().as_bytes());
    assert_eq!(host.sync().code, Some(0));
    let state = host.state_dir();

    // Deleted between syncs: the next sync rebuilds it, private.
    fs::remove_dir_all(&state).expect("rm -rf state");
    let second = start_record(DNSMASQ, &ns, &tag, &["--port=1"]);
    host.write_queue(DNSMASQ, second.to_line().as_bytes());
    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    host.assert_ack(DNSMASQ, &second.id, "ok");
    let mode = fs::metadata(&state).expect("state").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    // Replaced by a file: refused, saying what it must be.
    fs::remove_dir_all(&state).expect("rm -rf state");
    fs::write(&state, b"").expect("a file");
    let third = start_record(DNSMASQ, &ns, &tag, &["--port=2"]);
    host.write_queue(DNSMASQ, third.to_line().as_bytes());
    let broken = host.sync();
    assert_eq!(broken.code, Some(1), "{broken:#?}");
    let error = broken.error_line().to_owned();
    assert!(
        error.contains(&state.display().to_string())
            && error.contains("not a directory; move it aside"),
        "{}",
        broken.stderr
    );
    assert_eq!(
        fs::read(host.queue_file(DNSMASQ)).expect("queue"),
        third.to_line().as_bytes(),
        "nothing claimed without a journal"
    );
    fs::remove_file(&state).expect("rm");
    let fixed = host.sync();
    assert_eq!(fixed.code, Some(0), "{fixed:#?}");
    host.assert_ack(DNSMASQ, &third.id, "ok");
    common::reliability(
        "host state directory deleted between syncs, or replaced by a file",
        "deleted: recreated (0700) and the sync goes on; a file: exit 1 naming it and saying what to do, nothing claimed; removing it recovers",
        &host.redact().apply(&format!(
            "deleted: {}, state recreated 0700; file: {}: `{error}`; queue untouched; removed: {}, served",
            exit(run.code),
            exit(broken.code),
            exit(fixed.code)
        )),
    );
}

#[test]
fn namespace_deleted_between_claim_and_start_is_rejected() {
    let Some(host) = privileged_host("namespace deleted after planning") else {
        return;
    };
    let (ns, tag) = dhcp_netns();
    let (doomed, doomed_tag) = dhcp_netns();
    let keep = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    let gone = start_record(DNSMASQ, &doomed, &doomed_tag, &["--port=0"]);
    host.write_queue(
        DNSMASQ,
        format!("{}{}", gone.to_line(), keep.to_line()).as_bytes(),
    );

    let mut crashing = host.sync_cmd();
    crashing.env("SIDESPAWN_FAULT", "after-plan");
    let out = common::output(&mut crashing);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        common::explain(&crashing, &out)
    );
    assert!(
        host.run_names().is_empty(),
        "killed before running anything"
    );
    let doomed_name = doomed.name().to_owned();
    drop(doomed); // `ip netns delete`

    let run = host.sync();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(host.run_names(), [host.sidecar_name(DNSMASQ, &tag)]);
    host.assert_ack(DNSMASQ, &keep.id, "ok");
    let ack = host.assert_ack(DNSMASQ, &gone.id, "rejected");
    let message = ack["message"].as_str().expect("message");
    assert!(message.contains("does not exist"), "{message}");
    let rejects = host.rejects(DNSMASQ);
    assert!(
        rejects
            .iter()
            .any(|r| r["id"] == gone.id.as_str() && r["reason"] == message),
        "{rejects:?}"
    );
    common::reliability(
        "the namespace is deleted between claim and start (SIGKILL at `after-plan`, `ip netns delete`, sync again)",
        "the request is rejected with \"does not exist\" right before `podman run`; the other request starts",
        &host
            .redact()
            .add(&doomed_name, "qdhcp-<deleted>")
            .apply(&format!(
                "{}; ack rejected: {message}; the other started",
                exit(run.code)
            )),
    );
}

#[test]
fn a_wrapper_holding_the_lock_forever_times_the_claim_out_and_nothing_is_lost() {
    if !privileged("stuck lock") {
        return;
    }
    let host = FakeHost::with_config(|c| c["lock_timeout_ms"] = json!(500));
    let (ns, tag) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());
    let queue = QueueDir::new(&host.queue_root(), DNSMASQ);
    let guard = queue.lock(Duration::from_secs(5), || {}).expect("lock");

    let run = host.sync();
    drop(guard);
    assert_eq!(run.code, Some(1), "{run:#?}");
    let error = run.error_line().to_owned();
    assert!(
        error.contains("waiting for the lock on") && error.contains("fuser -v"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(host.queue_file(DNSMASQ)).expect("queue"),
        rec.to_line().as_bytes()
    );
    let again = host.sync();
    assert_eq!(again.code, Some(0), "{again:#?}");
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    common::reliability(
        "a wrapper (or a hostile agent) holds the queue lock and never lets go",
        "the claim gives up after lock_timeout_ms naming the lock and how to find its holder; the queue is untouched; the next sync serves it",
        &host.redact().apply(&format!(
            "{}: `{error}`; queue unchanged; once released: {}, ack ok",
            exit(run.code),
            exit(again.code)
        )),
    );
}

#[test]
fn a_failing_sync_backs_off_instead_of_spinning() {
    if !privileged("back-off") {
        return;
    }
    let host = FakeHost::with_config(|c| c["podman"] = json!("/nonexistent/podman"));
    let (ns, tag) = dhcp_netns();
    host.write_queue(
        DNSMASQ,
        start_record(DNSMASQ, &ns, &tag, &[]).to_line().as_bytes(),
    );
    let backoff = || {
        let mut cmd = host.sync_cmd();
        cmd.arg("--backoff");
        host.run_sync(&mut cmd)
    };
    let first = backoff();
    assert_eq!(first.code, Some(1));
    let second = backoff();
    assert_eq!(second.code, Some(1));
    assert!(
        second
            .stderr
            .contains("previous sync failed 1 time(s) in a row"),
        "{}",
        second.stderr
    );
    assert!(
        second.elapsed >= Duration::from_millis(500),
        "{:?}",
        second.elapsed
    );
    let third = backoff();
    assert!(
        third
            .stderr
            .contains("previous sync failed 2 time(s) in a row"),
        "{}",
        third.stderr
    );
    assert!(
        third.elapsed >= Duration::from_millis(1500),
        "{:?}",
        third.elapsed
    );
    let status = host.status(DNSMASQ).expect("status");
    assert_eq!(status["consecutive_failures"], 3, "{status}");
    common::reliability(
        "a sync that keeps failing (podman missing) restarted at once by the level trigger",
        "each retry waits longer (1 s doubling to 60 s) and says why; `status` counts the failures",
        &format!(
            "runs took {:.1} s, {:.1} s, {:.1} s; consecutive_failures {}",
            first.elapsed.as_secs_f64(),
            second.elapsed.as_secs_f64(),
            third.elapsed.as_secs_f64(),
            status["consecutive_failures"]
        ),
    );
}

#[test]
fn wrapper_refuses_a_request_longer_than_the_host_accepts() {
    if !privileged("wrapper: request over the line limit") {
        return;
    }
    // Ten arguments of 110 KiB: each under the kernel's 128 KiB per argument, 1.1 MiB in all,
    // over the host's 1 MiB per queue line. Queued, the host would reject it without an id to
    // answer, and a start request (not waited for) would vanish without a word.
    let host = FakeHost::new();
    let (ns, tag) = dhcp_netns();
    let config = host.dir().join("wrapper.json");
    fs::write(
        &config,
        json!({ "queue_root": host.queue_root() }).to_string(),
    )
    .expect("config");
    let arg = "a".repeat(110 * 1024);
    let mut cmd = ns.exec(env!("CARGO_BIN_EXE_sidespawn-wrapper"));
    cmd.args(["--kind", "dnsmasq", "--"])
        .args(std::iter::repeat_n(&arg, 10))
        .env(common::WRAPPER_CONFIG_ENV, &config)
        .env("PROCESS_TAG", &tag);
    let out = common::output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("over the host's limit of 1048576 bytes"),
        "{stderr}"
    );
    assert!(common::queue_records(&host.queue_root(), "dnsmasq").is_empty());
    common::reliability(
        "a request whose queue line would exceed the host's 1 MiB line limit (10 arguments of 110 KiB)",
        "the wrapper refuses it (exit 2, saying why) instead of queueing a line the host would drop unanswered",
        &format!("exit 2: `{}`; nothing queued", stderr.trim()),
    );
}

#[test]
fn a_full_state_directory_fails_every_run_visibly_and_backs_off() {
    if !privileged("state directory on a full file system") {
        return;
    }
    let tmpfs = TmpfsMount::new("256k");
    let state = tmpfs.path().join("state");
    let host = FakeHost::with_config(|c| c["state_dir"] = json!(state));
    let (ns, tag) = dhcp_netns();
    let first = start_record(DNSMASQ, &ns, &tag, &["--port=0"]);
    host.write_queue(DNSMASQ, first.to_line().as_bytes());
    assert_eq!(host.sync().code, Some(0));

    // Not a block left.
    {
        use std::io::Write;
        let mut f = fs::File::create(tmpfs.path().join("filler")).expect("filler");
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let (ns2, tag2) = dhcp_netns();
    let rec = start_record(DNSMASQ, &ns2, &tag2, &["--port=0"]);
    host.write_queue(DNSMASQ, rec.to_line().as_bytes());
    let backoff = || {
        let mut cmd = host.sync_cmd();
        cmd.arg("--backoff");
        host.run_sync(&mut cmd)
    };
    let run1 = backoff();
    assert_eq!(run1.code, Some(1), "{run1:#?}");
    assert!(
        run1.stderr.contains("No space left on device"),
        "{}",
        run1.stderr
    );
    let status = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(host.config_path())
            .arg("status")
            .env("NO_COLOR", "1");
        common::output(&mut cmd)
    };
    let st = status();
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    assert_eq!(st.status.code(), Some(1), "{text}");
    assert!(
        text.contains("STATE NOT WRITABLE") && text.contains("FAILED"),
        "{text}"
    );
    let run2 = backoff();
    assert_eq!(run2.code, Some(1));
    assert!(
        run2.stderr
            .contains("previous sync failed 1 time(s) in a row"),
        "{}",
        run2.stderr
    );
    assert!(
        run2.elapsed >= Duration::from_millis(900),
        "{:?}",
        run2.elapsed
    );
    let mut left = Vec::new();
    let mut todo = vec![state.clone()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("list").map(Result::unwrap) {
            if e.file_type().expect("type").is_dir() {
                todo.push(e.path());
            } else if e.file_name().to_string_lossy().contains(".tmp-") {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "temporary files left: {left:?}");

    fs::remove_file(tmpfs.path().join("filler")).expect("free space");
    let run3 = host.sync();
    assert_eq!(run3.code, Some(0), "{run3:#?}");
    host.assert_ack(DNSMASQ, &rec.id, "ok");
    // (Still exit 1 here: the shim's `ps` shows none of the desired sidecars.)
    let text = String::from_utf8_lossy(&status().stdout).into_owned();
    assert!(
        !text.contains("STATE NOT WRITABLE")
            && text
                .lines()
                .any(|l| l.starts_with("dnsmasq") && l.contains(" ok ")),
        "{text}"
    );
    common::reliability(
        "the host state directory's file system is full (ENOSPC) under `sync --backoff` (the units' command)",
        "every run exits 1 naming the error; `status` exits 1 saying the state directory is not writable; the second run backs off; no temporary file is left; once space is freed the request runs",
        &format!(
            "runs exit {} and {}; second run waited {:.1} s; status exit 1 `STATE NOT WRITABLE`; no .tmp- file; after freeing space: exit 0, ack ok",
            exit(run1.code),
            exit(run2.code),
            run2.elapsed.as_secs_f64()
        ),
    );
}
