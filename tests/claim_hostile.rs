//! The host's claim against a queue directory a compromised container has
//! prepared. Needs root (chown, mknod, files owned by other uids); each test
//! says so and skips when not run as root.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use common::TempDir;
use sidespawn::host::claim::{ClaimError, Journal, Limits, RejectLog, SharedDir};
use sidespawn::shared::ack::{Ack, Outcome};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;
use sidespawn::shared::record::{Action, Record, VERSION, new_id, now_ms};

const KIND: Kind = Kind::Dnsmasq;

/// A queue root and a state directory under /tmp, removed on drop.
struct Fixture {
    top: TempDir,
}

impl Fixture {
    /// A fixture when this test can run as root (see `common::privileged_root`).
    fn privileged() -> Option<Fixture> {
        common::privileged_root("hostile claim tests").then(Fixture::new)
    }

    fn new() -> Fixture {
        Fixture {
            top: TempDir::new("sidespawn-claim"),
        }
    }
    fn root(&self) -> PathBuf {
        self.top.join("queues")
    }
    fn state(&self) -> PathBuf {
        self.top.join("state")
    }
    fn kind_dir(&self) -> PathBuf {
        self.root().join(KIND.as_str())
    }
    fn queue(&self) -> QueueDir {
        QueueDir::new(&self.root(), KIND)
    }
    /// Host-owned file outside the shared directory, as a container would
    /// like the host to damage.
    fn host_file(&self, content: &[u8]) -> PathBuf {
        let p = self.top.join("host-secret");
        fs::write(&p, content).unwrap();
        p
    }
    fn shared(&self) -> SharedDir {
        self.shared_with(Limits::default())
    }
    fn shared_with(&self, limits: Limits) -> SharedDir {
        SharedDir::open(&self.root(), KIND, true, limits).unwrap()
    }
    fn journal(&self) -> Journal {
        Journal::open(&self.state(), KIND).unwrap()
    }
    fn rejects(&self) -> RejectLog {
        RejectLog::open(&self.state(), KIND).unwrap()
    }
    fn claim(&self, dir: &SharedDir) -> Result<sidespawn::host::claim::ClaimReport, ClaimError> {
        dir.claim(&self.journal(), &self.rejects())
    }
    fn write_queue(&self, bytes: &[u8]) {
        fs::write(self.queue().queue(), bytes).unwrap();
    }
}

impl Fixture {
    /// `text` with this fixture's temporary directory replaced by `<tmp>`.
    fn redact(&self, text: &str) -> String {
        common::Redact::new()
            .add(self.top.path().display(), "<tmp>")
            .apply(text)
    }
}

fn rec(kind: Kind, arg: &str) -> Record {
    Record {
        v: VERSION,
        id: new_id(now_ms()),
        kind,
        action: Action::Start,
        argv: vec![arg.to_owned()],
        netns: None,
        tag: None,
        signal: None,
        pid: None,
        ts: now_ms(),
    }
}

fn assert_mentions(err: &ClaimError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn symlinked_queue_is_refused_and_its_target_untouched() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let target = fx.host_file(b"host data\n");
    symlink(&target, fx.queue().queue()).unwrap();
    fs::write(fx.queue().pending(), b"").unwrap();

    let err = fx.claim(&dir).unwrap_err();
    assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");
    assert_mentions(&err, &fx.queue().queue());
    assert!(err.to_string().contains("remove it"), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"host data\n");
    assert!(fx.journal().is_empty().unwrap());
    assert!(dir.is_pending(), "an unclaimable queue stays pending");

    common::reliability(
        "queue file is a symlink to a host file (claim)",
        "claim refused naming the link; the target unchanged; nothing journaled; the queue stays pending",
        &fx.redact(&format!(
            "{err}; target unchanged; journal empty; still pending"
        )),
    );
}

#[test]
fn a_symlink_anywhere_on_the_way_to_the_queue_root_is_refused() {
    let Some(f) = Fixture::privileged() else {
        return;
    };
    // The container swaps a component of the queue root (which lies in a
    // tree it can write) for a link to a host directory.
    let elsewhere = f.top.join("host-dir");
    fs::create_dir_all(&elsewhere).unwrap();
    let parent = f.top.join("shared");
    symlink(&elsewhere, &parent).unwrap();
    let root = parent.join("queues");
    for create in [false, true] {
        let err = SharedDir::open(&root, KIND, create, Limits::default()).unwrap_err();
        assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");
        assert_mentions(&err, &parent);
    }
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing created through the link"
    );

    let err = SharedDir::open(&root, KIND, true, Limits::default()).unwrap_err();
    common::reliability(
        "a component of the queue root is a symlink (claim)",
        "refused at that component, with or without creating; nothing created behind it",
        &f.redact(&format!("{err}; nothing created behind it")),
    );
}

#[test]
fn symlinked_lock_is_refused() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let target = fx.host_file(b"host data\n");
    symlink(&target, fx.queue().lock_path()).unwrap();
    let line = rec(KIND, "a").to_line();
    fx.write_queue(line.as_bytes());

    let err = fx.claim(&dir).unwrap_err();
    assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");
    assert_mentions(&err, &fx.queue().lock_path());
    assert_eq!(fs::read(&target).unwrap(), b"host data\n");
    assert_eq!(
        fs::read(fx.queue().queue()).unwrap(),
        line.as_bytes(),
        "queue untouched"
    );

    common::reliability(
        "lock file is a symlink to a host file (claim)",
        "refused; the target unchanged; the queue untouched",
        &fx.redact(&format!("{err}; target and queue unchanged")),
    );
}

#[test]
fn symlinked_acks_dir_is_not_written_through() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let elsewhere = fx.top.join("host-dir");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir(fx.queue().acks()).unwrap();
    symlink(&elsewhere, fx.queue().acks()).unwrap();

    let ack = Ack {
        v: 1,
        id: new_id(now_ms()),
        result: Outcome::Ok,
        message: "started".into(),
        container: None,
        ts: now_ms(),
    };
    let err = dir.write_ack(&ack).unwrap_err();
    assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");
    assert_mentions(&err, &fx.queue().acks());
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    let err = dir.prune_acks(Duration::ZERO).unwrap_err();
    assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");

    common::reliability(
        "acks directory is a symlink to a host directory (write_ack, prune_acks)",
        "both refuse; nothing written or removed there",
        &fx.redact(&format!("{err}; host directory empty")),
    );
}

#[test]
fn symlinked_kind_dir_is_refused() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let elsewhere = fx.top.join("host-dir");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(fx.root()).unwrap();
    symlink(&elsewhere, fx.kind_dir()).unwrap();

    for create in [false, true] {
        let err = SharedDir::open(&fx.root(), KIND, create, Limits::default()).unwrap_err();
        assert!(matches!(err, ClaimError::Symlink { .. }), "{err}");
        assert_mentions(&err, &fx.kind_dir());
    }
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing made there"
    );

    let err = SharedDir::open(&fx.root(), KIND, true, Limits::default()).unwrap_err();
    common::reliability(
        "kind directory is a symlink to a host directory (claim)",
        "refused, with or without creating; nothing made there",
        &fx.redact(&format!("{err}; host directory empty")),
    );
}

#[test]
fn kind_dir_that_is_a_file_or_foreign_is_refused() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    fs::create_dir_all(fx.root()).unwrap();
    fs::write(fx.kind_dir(), b"").unwrap();
    let err = SharedDir::open(&fx.root(), KIND, true, Limits::default()).unwrap_err();
    assert!(matches!(err, ClaimError::WrongType { .. }), "{err}");
    let wrong_type = err.to_string();

    fs::remove_file(fx.kind_dir()).unwrap();
    fs::create_dir(fx.kind_dir()).unwrap();
    nix::unistd::chown(&fx.kind_dir(), Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
    let err = SharedDir::open(&fx.root(), KIND, true, Limits::default()).unwrap_err();
    assert!(
        matches!(err, ClaimError::WrongOwner { uid: 1234, .. }),
        "{err}"
    );
    let wrong_owner = err.to_string();

    let err = SharedDir::open(&fx.top.join("missing"), KIND, false, Limits::default()).unwrap_err();
    assert!(matches!(err, ClaimError::NoQueueDir(_)), "{err}");

    common::reliability(
        "kind directory is a file, or owned by another uid, or missing",
        "each refused with what is wrong and what to do",
        &fx.redact(&format!("{wrong_type} / {wrong_owner} / {err}")),
    );
}

#[test]
fn created_dirs_belong_to_the_owner_uid() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let limits = Limits {
        owner_uid: 4242,
        ..Limits::default()
    };
    let dir = fx.shared_with(limits);
    for p in [fx.kind_dir(), fx.queue().acks()] {
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.uid(), 4242, "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{}", p.display());
    }
    // The lock the host creates must be usable by that uid's wrappers.
    fx.claim(&dir).unwrap();
    assert_eq!(fs::metadata(fx.queue().lock_path()).unwrap().uid(), 4242);

    common::reliability(
        "directories and lock the host creates in the shared tree",
        "owned by the configured owner uid, mode 0755 exactly (not the umask's)",
        "kind dir, acks/ and lock owned by uid 4242; directories mode 0755",
    );
}

#[test]
fn fifo_queue_is_refused_without_blocking() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    nix::unistd::mkfifo(
        &fx.queue().queue(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let (tx, rx) = mpsc::channel();
    let (state, root) = (fx.state(), fx.root());
    std::thread::spawn(move || {
        let dir = SharedDir::open(&root, KIND, false, Limits::default()).unwrap();
        let result = dir.claim(
            &Journal::open(&state, KIND).unwrap(),
            &RejectLog::open(&state, KIND).unwrap(),
        );
        let _ = tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("claim hung on a FIFO");
    let err = result.unwrap_err();
    assert!(err.contains("FIFO") && err.contains("queue.jsonl"), "{err}");
    drop(dir);

    common::reliability(
        "queue file is a FIFO (claim)",
        "refused without opening it; the claim does not block",
        &fx.redact(&format!("{err}; returned at once")),
    );
}

#[test]
fn device_queue_is_refused() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    // /dev/null's numbers: harmless even if it were opened.
    mknod(
        &fx.queue().queue(),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 3),
    )
    .unwrap();
    let err = fx.claim(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ClaimError::WrongType {
                found: "character device",
                ..
            }
        ),
        "{err}"
    );

    common::reliability(
        "queue file is a character device (claim)",
        "refused without opening it",
        &fx.redact(&err.to_string()),
    );
}

#[test]
fn hard_linked_queue_is_refused_and_the_other_name_untouched() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let line = rec(KIND, "a").to_line();
    let other = fx.host_file(line.as_bytes());
    fs::hard_link(&other, fx.queue().queue()).unwrap();

    let err = fx.claim(&dir).unwrap_err();
    assert!(
        matches!(err, ClaimError::HardLinked { links: 2, .. }),
        "{err}"
    );
    assert_mentions(&err, &fx.queue().queue());
    assert_eq!(fs::read(&other).unwrap(), line.as_bytes());
    assert!(fx.journal().is_empty().unwrap());

    common::reliability(
        "queue file is a hard link to a host file (claim)",
        "refused (link count 2); the host file neither journaled nor truncated",
        &fx.redact(&format!("{err}; host file unchanged; journal empty")),
    );
}

#[test]
fn queue_of_another_owner_is_refused() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let line = rec(KIND, "a").to_line();
    fx.write_queue(line.as_bytes());
    nix::unistd::chown(
        &fx.queue().queue(),
        Some(nix::unistd::Uid::from_raw(1234)),
        None,
    )
    .unwrap();

    let err = fx.claim(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ClaimError::WrongOwner {
                uid: 1234,
                expected: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &fx.queue().queue());
    assert_eq!(fs::read(fx.queue().queue()).unwrap(), line.as_bytes());

    common::reliability(
        "queue file owned by another uid (claim)",
        "refused, naming the owner and the fix",
        &fx.redact(&format!("{err}; queue unchanged")),
    );
}

#[test]
fn a_huge_line_is_rejected_and_the_next_one_claimed() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let good = rec(KIND, "after the big one");
    let mut text = vec![b'x'; 10 * 1024 * 1024];
    text.push(b'\n');
    text.extend_from_slice(good.to_line().as_bytes());
    fx.write_queue(&text);

    let report = fx.claim(&dir).unwrap();
    assert_eq!(report.claimed, 1);
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    assert_eq!(r.line, 1);
    assert!(r.reason.contains("over the"), "{}", r.reason);
    assert_eq!(r.excerpt.len(), 200);
    assert_eq!(fx.journal().read_records().unwrap(), [good]);
    assert_eq!(report.bytes, text.len() as u64);

    common::reliability(
        "a 10 MiB line without a valid record (claim)",
        "rejected with a 200-byte excerpt, read without holding it; the next line claimed",
        &format!(
            "reject line 1: {}; next line claimed",
            report.rejected[0].reason
        ),
    );
}

#[test]
fn bad_lines_are_rejected_one_by_one_and_good_ones_kept_in_order() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let good: Vec<Record> = (0..3).map(|i| rec(KIND, &format!("good {i}"))).collect();
    let v2 = rec(KIND, "v2");
    let extra = rec(KIND, "extra");
    let other_kind = rec(Kind::Haproxy, "haproxy here");
    let mut text = Vec::new();
    text.extend_from_slice(good[0].to_line().as_bytes()); // 1
    text.extend_from_slice(b"{not json\n"); // 2
    text.extend_from_slice(b"\xff\xfe{\"id\":\"x\"}\n"); // 3
    text.extend_from_slice(v2.to_line().replace("\"v\":1", "\"v\":2").as_bytes()); // 4
    text.extend_from_slice(
        extra
            .to_line()
            .replace("\"ts\":", "\"cmd\":\"reboot\",\"ts\":")
            .as_bytes(),
    ); // 5
    text.extend_from_slice(other_kind.to_line().as_bytes()); // 6
    text.extend_from_slice(good[1].to_line().as_bytes()); // 7
    text.extend_from_slice(b"\n"); // 8: empty line
    text.extend_from_slice(good[2].to_line().as_bytes()); // 9
    fx.write_queue(&text);

    let since = now_ms();
    let report = fx.claim(&dir).unwrap();
    assert_eq!(report.claimed, 3);
    assert_eq!(fx.journal().read_records().unwrap(), good);

    let got: Vec<(usize, Option<&str>)> = report
        .rejected
        .iter()
        .map(|r| (r.line, r.id.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (2, None),
            (3, None),
            (4, Some(v2.id.as_str())),
            (5, Some(extra.id.as_str())),
            (6, Some(other_kind.id.as_str())),
            (8, None),
        ]
    );
    let reasons: Vec<&str> = report.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert!(reasons[0].contains("JSON"), "{}", reasons[0]);
    assert!(reasons[1].contains("UTF-8"), "{}", reasons[1]);
    assert!(reasons[2].contains("version 2"), "{}", reasons[2]);
    assert!(reasons[3].contains("unknown field"), "{}", reasons[3]);
    assert!(
        reasons[4].contains("haproxy request in the dnsmasq queue"),
        "{}",
        reasons[4]
    );
    assert!(report.rejected[1].excerpt.contains('\u{fffd}'));

    let log = fx.rejects();
    assert_eq!(log.count_since(since).unwrap(), 6);
    assert_eq!(log.count_since(now_ms() + 1000).unwrap(), 0);
    let logged: Vec<sidespawn::host::claim::RejectEntry> = fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(logged.len(), 6);
    assert_eq!(logged[2].line, 4);
    assert_eq!(logged[2].id.as_deref(), Some(v2.id.as_str()));
    assert_eq!(logged[2].kind, KIND);

    common::reliability(
        "one batch mixing good lines with invalid JSON, invalid UTF-8, version 2, an unknown field, another kind and an empty line (claim)",
        "each bad line rejected with its line number and reason (ids kept where readable); good lines journaled in order",
        &format!(
            "3 good lines journaled in order; rejected lines {:?}",
            got.iter().map(|(l, _)| l).collect::<Vec<_>>()
        ),
    );
}

#[test]
fn the_claim_counts_the_kill_requests_it_took() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let mut kill = rec(KIND, "unused");
    kill.action = Action::Signal;
    kill.argv.clear();
    kill.signal = Some(sidespawn::shared::record::Signal::Hup);
    kill.pid = Some(4242);
    let records = [rec(KIND, "a"), kill, rec(KIND, "b")];
    let text: String = records.iter().map(Record::to_line).collect();
    fx.write_queue(text.as_bytes());

    let report = fx.claim(&dir).unwrap();
    assert_eq!((report.claimed, report.signals), (3, 1));
    assert_eq!(fx.journal().read_records().unwrap(), records);
}

#[test]
fn a_trailing_partial_line_is_rejected_as_incomplete() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let good = rec(KIND, "a");
    let torn = rec(KIND, "b").to_line();
    let mut text = good.to_line().into_bytes();
    text.extend_from_slice(torn.trim_end().as_bytes());
    fx.write_queue(&text);

    let report = fx.claim(&dir).unwrap();
    assert_eq!(report.claimed, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].line, 2);
    assert!(report.rejected[0].reason.contains("incomplete line"));
    assert_eq!(fx.journal().read_records().unwrap(), [good]);
    assert_eq!(fs::metadata(fx.queue().queue()).unwrap().len(), 0);

    common::reliability(
        "the queue ends in a line without its newline (a writer died mid-append)",
        "that line rejected as incomplete; the whole lines before it claimed",
        &format!("line 2: {}", report.rejected[0].reason),
    );
}

#[test]
fn a_queue_over_the_byte_cap_keeps_whole_lines_within_it() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let records: Vec<Record> = (0..5).map(|i| rec(KIND, &format!("r{i}"))).collect();
    let lines: Vec<String> = records.iter().map(Record::to_line).collect();
    let text = lines.concat();
    // Two whole lines and half of the third fit.
    let max = (lines[0].len() + lines[1].len() + lines[2].len() / 2) as u64;
    let dir = fx.shared_with(Limits {
        max_queue_bytes: max,
        ..Limits::default()
    });
    fx.write_queue(text.as_bytes());

    let report = fx.claim(&dir).unwrap();
    assert_eq!(report.claimed, 2);
    assert_eq!(fx.journal().read_records().unwrap(), records[..2]);
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    let dropped = text.len() - lines[0].len() - lines[1].len();
    assert_eq!(r.line, 3);
    assert_eq!(
        r.reason,
        format!("queue over {max} bytes; {dropped} bytes dropped")
    );
    assert!(text[text.len() - dropped..].starts_with(&r.excerpt));
    assert!(!r.excerpt.is_empty());
    assert_eq!(fs::metadata(fx.queue().queue()).unwrap().len(), 0);
    assert!(!dir.is_pending());

    common::reliability(
        "a queue over the byte cap (claim)",
        "whole lines within the cap claimed; the rest dropped as one reject with its excerpt; the queue emptied",
        &format!("2 lines claimed; line 3: {}", r.reason),
    );
}

#[test]
fn a_claim_empties_the_queue_clears_pending_and_journals_exact_lines() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    assert!(!dir.is_pending());
    let q = fx.queue();
    let records: Vec<Record> = (0..3)
        .map(|i| rec(KIND, &format!("with space, \"quotes\" and {i}")))
        .collect();
    for r in &records {
        q.append(r, Duration::from_secs(5), || {}).unwrap();
    }
    assert!(dir.is_pending());
    let queued = fs::read(q.queue()).unwrap();

    let journal = fx.journal();
    let report = dir.claim(&journal, &fx.rejects()).unwrap();
    assert_eq!(report.claimed, 3);
    assert!(report.rejected.is_empty());
    assert_eq!(report.bytes, queued.len() as u64);
    assert!(report.lock_held < Duration::from_secs(5));
    assert_eq!(fs::metadata(q.queue()).unwrap().len(), 0);
    assert!(!q.pending().exists());
    assert!(!dir.is_pending());
    assert_eq!(fs::read(journal.path()).unwrap(), queued);
    assert_eq!(
        fs::metadata(journal.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Nothing queued: an empty claim, and a stray marker still goes.
    fs::write(q.pending(), b"").unwrap();
    let report = dir.claim(&journal, &fx.rejects()).unwrap();
    assert_eq!(report.claimed, 0);
    assert!(!q.pending().exists());
    assert_eq!(journal.read_records().unwrap(), records);

    journal.clear().unwrap();
    assert!(journal.is_empty().unwrap());

    common::reliability(
        "an ordinary claim",
        "the journal holds the queue's bytes exactly (mode 0600); the queue is emptied and the marker removed",
        &format!(
            "3 claimed, lock held {} ms; queue 0 bytes; pending removed; journal byte-identical",
            report.lock_held.as_millis()
        ),
    );
}

#[test]
fn a_claim_waits_for_the_lock_or_times_out_naming_it() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let q = fx.queue();
    q.append(&rec(KIND, "a"), Duration::from_secs(5), || {})
        .unwrap();

    let guard = q.lock(Duration::from_secs(5), || {}).unwrap();
    let impatient = fx.shared_with(Limits {
        lock_timeout: Duration::from_millis(50),
        ..Limits::default()
    });
    let err = fx.claim(&impatient).unwrap_err();
    assert!(matches!(err, ClaimError::Lock(_)), "{err}");
    assert_mentions(&err, &q.lock_path());

    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(guard);
    });
    let start = Instant::now();
    let report = fx.claim(&dir).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(report.claimed, 1);
    holder.join().unwrap();

    common::reliability(
        "the queue lock held by someone else (a stuck or hostile wrapper)",
        "the claim waits up to lock_timeout, then fails naming the lock file",
        &fx.redact(&format!(
            "{err}; with the lock released within the timeout the claim proceeds"
        )),
    );
}

#[test]
fn concurrent_appends_and_claims_lose_and_tear_nothing() {
    const WRITERS: usize = 8;
    const EACH: usize = 500;
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let journal = fx.journal();
    let rejects = fx.rejects();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let q = fx.queue();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    q.append(
                        &rec(KIND, &format!("w{w} #{i}")),
                        Duration::from_secs(30),
                        || {},
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    let mut claims = 0;
    while writers.iter().any(|w| !w.is_finished()) || dir.is_pending() {
        let report = dir.claim(&journal, &rejects).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        claims += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(claims > 1, "the claimer never overlapped the writers");

    let text = fs::read_to_string(journal.path()).unwrap();
    assert!(text.ends_with('\n'));
    let mut ids = HashSet::new();
    for line in text.lines() {
        let r = Record::parse_line(line.as_bytes()).expect("no torn journal line");
        assert!(ids.insert(r.id), "duplicate id");
    }
    assert_eq!(ids.len(), WRITERS * EACH);
    assert_eq!(journal.read_records().unwrap().len(), WRITERS * EACH);

    common::reliability(
        "8 writers appending 500 requests each while the host claims in a loop",
        "no request lost, torn or duplicated",
        &format!(
            "{} records over {claims} claims; every line parses; ids unique",
            WRITERS * EACH
        ),
    );
}

#[test]
fn acks_are_written_atomically_and_pruned_without_following_links() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let q = fx.queue();
    let ack = Ack {
        v: 1,
        id: new_id(now_ms()),
        result: Outcome::Rejected,
        message: "namespace gone".into(),
        container: Some("sidespawn-dnsmasq-x".into()),
        ts: now_ms(),
    };
    dir.write_ack(&ack).unwrap();
    let path = q.ack(&ack.id);
    let back: Ack = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, ack);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::read_dir(q.acks()).unwrap().count(),
        1,
        "no temporary left"
    );

    // A link a container placed where an ack goes is replaced, not followed.
    let target = fx.host_file(b"host data\n");
    let ack2 = Ack {
        id: new_id(now_ms()),
        ..ack.clone()
    };
    symlink(&target, q.ack(&ack2.id)).unwrap();
    dir.write_ack(&ack2).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"host data\n");
    assert!(!fs::symlink_metadata(q.ack(&ack2.id)).unwrap().is_symlink());

    for id in ["../escape", ".hidden", "", "a/b"] {
        let bad = Ack {
            id: id.into(),
            ..ack.clone()
        };
        let err = dir.write_ack(&bad).unwrap_err();
        assert!(matches!(err, ClaimError::UnsafeAckId(_)), "{err}");
    }

    // Age: one old ack, one old link to a host file, one fresh ack, one
    // directory a container made.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let link = q.acks().join("old-link.json");
    symlink(&target, &link).unwrap();
    let ts = nix::sys::time::TimeSpec::from(Duration::from_secs(1_000_000));
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &link,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    fs::create_dir(q.acks().join("a-dir")).unwrap();
    // Written a day ahead (the clock went back since): restamped to now, so
    // it goes after ack_max_age_s instead of after the day.
    let ahead = q.acks().join("from-the-future.json");
    fs::write(&ahead, b"{}").unwrap();
    fs::File::options()
        .write(true)
        .open(&ahead)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(86_400))
        .unwrap();

    assert_eq!(dir.prune_acks(Duration::from_secs(60)).unwrap(), 2);
    let restamped = fs::metadata(&ahead).unwrap().modified().unwrap();
    assert!(restamped <= std::time::SystemTime::now(), "{restamped:?}");

    assert!(!path.exists());
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(fs::read(&target).unwrap(), b"host data\n");
    assert!(q.ack(&ack2.id).exists());
    assert!(q.acks().join("a-dir").is_dir());
    dir.prune_acks(Duration::ZERO).unwrap();
    assert!(!ahead.exists());

    common::reliability(
        "acknowledgement written over a symlink; ack ids with `../`, `/`, a leading dot; old links in acks/",
        "acks are fresh files renamed into place (0644); unsafe ids refused; pruning unlinks links without following them",
        "link replaced, target unchanged; 4 unsafe ids refused; 2 old entries pruned, the directory and fresh ack kept",
    );
}

#[test]
fn an_unsafe_state_dir_is_refused() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let state = fx.state();
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Journal::open(&state, KIND).unwrap_err();
    assert!(matches!(err, ClaimError::UnsafeStateDir { .. }), "{err}");
    assert!(err.to_string().contains("writable"), "{err}");
    assert!(RejectLog::open(&state, KIND).is_err());
    let writable = err.to_string();

    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
    let err = Journal::open(&state, KIND).unwrap_err();
    assert!(err.to_string().contains("owned by uid 1234"), "{err}");
    let foreign = err.to_string();

    let real = fx.top.join("real-state");
    fs::create_dir(&real).unwrap();
    let link = fx.top.join("linked-state");
    symlink(&real, &link).unwrap();
    let err = Journal::open(&link, KIND).unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0);

    // A fresh one is made private.
    let fresh = fx.top.join("fresh-state");
    Journal::open(&fresh, KIND).unwrap();
    for p in [fresh.clone(), fresh.join("journal")] {
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    common::reliability(
        "host state directory world-writable, foreign-owned or a symlink",
        "refused, saying what it must be and the command to fix it; a fresh one is made 0700",
        &fx.redact(&format!("{writable} / {foreign} / {err}")),
    );
}

#[test]
fn a_damaged_journal_line_is_skipped() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let journal = fx.journal();
    let a = rec(KIND, "a");
    let b = rec(KIND, "b");
    journal.append(a.to_line().as_bytes()).unwrap();
    journal.append(b"garbage\n").unwrap();
    journal.append(b.to_line().as_bytes()).unwrap();
    journal.append(b"{\"torn").unwrap();
    assert_eq!(journal.read_records().unwrap(), [a, b]);

    common::reliability(
        "garbage and a torn last line in the host journal",
        "damaged lines skipped (logged), the valid records read in order",
        "2 of 4 lines read; garbage and torn line skipped",
    );
}

#[test]
fn the_reject_log_rotates_and_still_counts_both_files() {
    use sidespawn::host::claim::{REJECT_LOG_ROTATE_BYTES, Reject};
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let log = fx.rejects();
    let old = format!(
        "{}\n",
        serde_json::json!({"ts": now_ms(), "kind": "dnsmasq", "line": 1, "id": null,
                           "reason": "old", "excerpt": "x".repeat(900)})
    );
    let copies = REJECT_LOG_ROTATE_BYTES as usize / old.len() + 1;
    fs::write(log.path(), old.repeat(copies)).unwrap();

    let r = Reject {
        line: 7,
        id: Some("abc".into()),
        reason: "new".into(),
        excerpt: "{".into(),
    };
    log.append(std::slice::from_ref(&r)).unwrap();
    let rotated = log.path().with_extension("jsonl.1");
    assert_eq!(
        fs::metadata(&rotated).unwrap().len(),
        (old.len() * copies) as u64
    );
    let fresh = fs::read_to_string(log.path()).unwrap();
    assert_eq!(fresh.lines().count(), 1);
    assert!(fresh.contains("\"reason\":\"new\""), "{fresh}");
    assert_eq!(log.count_since(0).unwrap(), copies + 1);

    common::reliability(
        "the reject log reaches its rotation size",
        "rotated to .1 once, counted across both files: bounded disk use",
        &format!(
            "rotated at {} bytes; {} entries counted",
            old.len() * copies,
            copies + 1
        ),
    );
}

// Races: a container swaps an entry of its queue directory back and forth while the host works.
// renameat2(RENAME_EXCHANGE) swaps two names atomically, so the name the host opens always
// exists and is, at any instant, either the honest file or the trap.

/// How long each race runs at least.
const RACE_TIME: Duration = Duration::from_secs(3);
/// Longest a race runs while it waits to see both outcomes.
const RACE_LIMIT: Duration = Duration::from_secs(120);

/// Whether a race that started at `start` goes on: at least [`RACE_TIME`], and on until both
/// outcomes were seen (on a loaded machine, where each claim's fsync can take seconds, only a
/// claim or two may fit in [`RACE_TIME`]), up to [`RACE_LIMIT`].
fn racing(start: Instant, ok: usize, refused: usize) -> bool {
    let t = start.elapsed();
    t < RACE_LIMIT && (t < RACE_TIME || ok == 0 || refused == 0)
}

/// Exchanges `a` and `b` until `stop` (at most ten million times), calling `after(swaps)` after
/// each exchange; returns how many exchanges it made.
fn exchange_loop(
    a: PathBuf,
    b: PathBuf,
    stop: Arc<AtomicBool>,
    mut after: impl FnMut(usize) + Send + 'static,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) && swaps < 10_000_000 {
            // Only fails once the test has ended (and removed the directory).
            if renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).is_err() {
                break;
            }
            swaps += 1;
            after(swaps);
        }
        swaps
    })
}

/// A host file's bytes and modification time, to prove nothing touched it.
fn fingerprint(path: &Path) -> (Vec<u8>, std::time::SystemTime) {
    let meta = fs::symlink_metadata(path).unwrap();
    (fs::read(path).unwrap(), meta.modified().unwrap())
}

/// Claims in a loop for [`RACE_TIME`] while `queue.jsonl` is exchanged with `decoy` (which
/// points at, or is, `target`, a host file holding a valid request). Returns (claims that
/// succeeded, records they claimed, claims refused, exchanges).
fn race_queue_against(fx: &Fixture, decoy: &Path, target: &Path) -> (usize, usize, usize, usize) {
    let dir = fx.shared();
    let journal = fx.journal();
    let rejects = fx.rejects();
    let queue = fx.queue().queue();
    let honest = rec(KIND, "honest").to_line();
    fs::write(&queue, &honest).unwrap();
    let before = fingerprint(target);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let queue = queue.clone();
        // The honest file is back under the queue's name after every second exchange: refill
        // it then, so that successful claims have something to take.
        exchange_loop(
            queue.clone(),
            decoy.to_owned(),
            Arc::clone(&stop),
            move |n| {
                if n % 2 == 0
                    && let Ok(mut f) = fs::File::options()
                        .append(true)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(&queue)
                {
                    let _ = f.write_all(honest.as_bytes());
                }
            },
        )
    };
    let (mut ok, mut claimed, mut refused) = (0, 0, 0);
    let start = Instant::now();
    while racing(start, ok, refused) {
        match dir.claim(&journal, &rejects) {
            Ok(report) => {
                ok += 1;
                claimed += report.claimed;
            }
            Err(ClaimError::Symlink { .. } | ClaimError::HardLinked { .. }) => refused += 1,
            Err(e) => panic!("unexpected claim error: {e}"),
        }
        assert_eq!(fingerprint(target), before, "the host file was touched");
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    (ok, claimed, refused, swaps)
}

/// The queue file exchanged, over and over during claims, with `decoy` — made by `link` to a
/// host file holding a lure request — and checked: the race happened (claims and refusals), the
/// honest file's records were claimed, `lure_claimed` finds no trace of the lure, and the host
/// file was never touched ([`race_queue_against`] checks it after every claim). `refused` names
/// the decoy in the reliability row.
fn queue_exchange_race(
    link: fn(&Path, &Path) -> std::io::Result<()>,
    lure_claimed: fn(&Fixture, &str) -> bool,
    case: &str,
    expected: &str,
    refused: &str,
) {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let lure = rec(KIND, "lure");
    let target = fx.host_file(lure.to_line().as_bytes());
    let decoy = fx.kind_dir().join(".decoy");
    fs::create_dir_all(fx.kind_dir()).unwrap();
    link(&target, &decoy).unwrap();

    let (ok, claimed, refusals, swaps) = race_queue_against(&fx, &decoy, &target);
    assert!(
        ok > 0 && refusals > 0,
        "no race: {ok} claims, {refusals} refusals"
    );
    assert!(claimed > 0, "nothing claimed from the honest file");
    assert!(
        !lure_claimed(&fx, &lure.id),
        "the host file's request was claimed"
    );
    common::reliability(
        case,
        expected,
        &format!(
            "{swaps} exchanges during {} claims: {ok} claimed {claimed} honest records, {refusals} refused {refused}; host file bytes and mtime unchanged",
            ok + refusals
        ),
    );
}

#[test]
fn queue_exchanged_with_a_symlink_during_claims_never_touches_the_host_file() {
    queue_exchange_race(
        |target, decoy| symlink(target, decoy),
        |fx, id| {
            let ids: Vec<String> = fx
                .journal()
                .read_records()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.iter().any(|i| i == id)
        },
        "queue file exchanged atomically with a symlink to a host file, over and over, during claims",
        "every claim either takes the honest file or refuses the link; the host file is never read or written",
        "the link",
    );
}

#[test]
fn queue_exchanged_with_a_hard_link_during_claims_never_touches_the_host_file() {
    queue_exchange_race(
        |target, decoy| fs::hard_link(target, decoy),
        |fx, id| {
            let journal = fs::read_to_string(fx.journal().path()).unwrap();
            journal.contains(id)
        },
        "queue file exchanged atomically with a hard link to a host file, over and over, during claims",
        "the linked inode (2 links) is always refused: never journaled, never truncated",
        "the hard link",
    );
}

#[test]
fn lock_exchanged_with_a_dangling_symlink_during_claims_creates_nothing() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let (journal, rejects) = (fx.journal(), fx.rejects());
    // A root open(O_CREAT) through this link would create a file where the agent chose.
    let target = fx.top.join("created-by-root");
    let decoy = fx.kind_dir().join(".decoy");
    symlink(&target, &decoy).unwrap();
    fs::write(fx.queue().lock_path(), b"").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = exchange_loop(fx.queue().lock_path(), decoy, Arc::clone(&stop), |_| {});
    let (mut ok, mut refused) = (0, 0);
    let start = Instant::now();
    while racing(start, ok, refused) {
        match dir.claim(&journal, &rejects) {
            Ok(_) => ok += 1,
            Err(ClaimError::Symlink { .. }) => refused += 1,
            Err(e) => panic!("unexpected claim error: {e}"),
        }
        assert!(
            fs::symlink_metadata(&target).is_err(),
            "{} created",
            target.display()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        ok > 0 && refused > 0,
        "no race: {ok} claims, {refused} refusals"
    );
    common::reliability(
        "lock file exchanged atomically with a dangling symlink, over and over, during claims",
        "every claim locks the real lock file or refuses the link; nothing is ever created at the link's target",
        &format!(
            "{swaps} exchanges during {} claims: {ok} locked, {refused} refused; target never created",
            ok + refused
        ),
    );
}

#[test]
fn acks_dir_exchanged_with_a_symlink_during_ack_writes_writes_nothing_outside() {
    let Some(fx) = Fixture::privileged() else {
        return;
    };
    let dir = fx.shared();
    let elsewhere = fx.top.join("host-dir");
    fs::create_dir(&elsewhere).unwrap();
    let decoy = fx.kind_dir().join(".decoy");
    symlink(&elsewhere, &decoy).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = exchange_loop(fx.queue().acks(), decoy, Arc::clone(&stop), |_| {});
    let (mut ok, mut refused) = (0, 0);
    let start = Instant::now();
    while racing(start, ok, refused) {
        let ack = Ack {
            v: 1,
            id: new_id(now_ms()),
            result: Outcome::Ok,
            message: "started".into(),
            container: None,
            ts: now_ms(),
        };
        match dir.write_ack(&ack) {
            Ok(()) => ok += 1,
            Err(ClaimError::Symlink { .. }) => refused += 1,
            // O_DIRECTORY|O_NOFOLLOW met the link (ENOTDIR), but the directory was back by the
            // time the host looked at what was there: refused all the same.
            Err(ClaimError::Io { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                refused += 1
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        ok > 0 && refused > 0,
        "no race: {ok} written, {refused} refused"
    );
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "written through the link"
    );
    common::reliability(
        "acks directory exchanged atomically with a symlink to a host directory during ack writes",
        "every ack lands in the real acks directory or is refused; nothing is written through the link",
        &format!(
            "{swaps} exchanges during {} ack writes: {ok} written, {refused} refused; host directory empty",
            ok + refused
        ),
    );
}
