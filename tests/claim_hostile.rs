//! The host's claim against a queue directory a compromised container has
//! prepared. Needs root (chown, mknod, files owned by other uids); each test
//! says so and skips when not run as root.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sidespawn::ack::{Ack, Outcome};
use sidespawn::claim::{ClaimError, Journal, Limits, RejectLog, SharedDir};
use sidespawn::kind::Kind;
use sidespawn::queue::QueueDir;
use sidespawn::record::{Action, Record, VERSION, new_id, now_ms};

const KIND: Kind = Kind::Dnsmasq;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("SIDESPAWN_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("claim_hostile needs root, and SIDESPAWN_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (needs root): hostile claim tests"
    );
    false
}

/// A queue root and a state directory under /tmp, removed on drop.
struct Fixture {
    top: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let top = std::env::temp_dir().join(format!("sidespawn-claim-{}", new_id(0)));
        fs::create_dir_all(&top).unwrap();
        Fixture { top }
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
    fn claim(&self, dir: &SharedDir) -> Result<sidespawn::claim::ClaimReport, ClaimError> {
        dir.claim(&self.journal(), &self.rejects())
    }
    fn write_queue(&self, bytes: &[u8]) {
        fs::write(self.queue().queue(), bytes).unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.top);
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
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn a_symlink_anywhere_on_the_way_to_the_queue_root_is_refused() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
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
}

#[test]
fn symlinked_lock_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn symlinked_acks_dir_is_not_written_through() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn symlinked_kind_dir_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn kind_dir_that_is_a_file_or_foreign_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fs::create_dir_all(fx.root()).unwrap();
    fs::write(fx.kind_dir(), b"").unwrap();
    let err = SharedDir::open(&fx.root(), KIND, true, Limits::default()).unwrap_err();
    assert!(matches!(err, ClaimError::WrongType { .. }), "{err}");

    fs::remove_file(fx.kind_dir()).unwrap();
    fs::create_dir(fx.kind_dir()).unwrap();
    nix::unistd::chown(&fx.kind_dir(), Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
    let err = SharedDir::open(&fx.root(), KIND, true, Limits::default()).unwrap_err();
    assert!(
        matches!(err, ClaimError::WrongOwner { uid: 1234, .. }),
        "{err}"
    );

    let err = SharedDir::open(&fx.top.join("missing"), KIND, false, Limits::default()).unwrap_err();
    assert!(matches!(err, ClaimError::NoQueueDir(_)), "{err}");
}

#[test]
fn created_dirs_belong_to_the_owner_uid() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn fifo_queue_is_refused_without_blocking() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn device_queue_is_refused() {
    if !is_root() {
        return;
    }
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let fx = Fixture::new();
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
}

#[test]
fn hard_linked_queue_is_refused_and_the_other_name_untouched() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn queue_of_another_owner_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn a_huge_line_is_rejected_and_the_next_one_claimed() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn bad_lines_are_rejected_one_by_one_and_good_ones_kept_in_order() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
    let logged: Vec<sidespawn::claim::RejectEntry> = fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(logged.len(), 6);
    assert_eq!(logged[2].line, 4);
    assert_eq!(logged[2].id.as_deref(), Some(v2.id.as_str()));
    assert_eq!(logged[2].kind, KIND);
}

#[test]
fn a_trailing_partial_line_is_rejected_as_incomplete() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn a_queue_over_the_byte_cap_keeps_whole_lines_within_it() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn a_claim_empties_the_queue_clears_pending_and_journals_exact_lines() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn a_claim_waits_for_the_lock_or_times_out_naming_it() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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
}

#[test]
fn concurrent_appends_and_claims_lose_and_tear_nothing() {
    if !is_root() {
        return;
    }
    const WRITERS: usize = 8;
    const EACH: usize = 500;
    let fx = Fixture::new();
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
}

#[test]
fn acks_are_written_atomically_and_pruned_without_following_links() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
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

    assert_eq!(dir.prune_acks(Duration::from_secs(60)).unwrap(), 2);
    assert!(!path.exists());
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(fs::read(&target).unwrap(), b"host data\n");
    assert!(q.ack(&ack2.id).exists());
    assert!(q.acks().join("a-dir").is_dir());
}

#[test]
fn an_unsafe_state_dir_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let state = fx.state();
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Journal::open(&state, KIND).unwrap_err();
    assert!(matches!(err, ClaimError::UnsafeStateDir { .. }), "{err}");
    assert!(err.to_string().contains("writable"), "{err}");
    assert!(RejectLog::open(&state, KIND).is_err());

    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
    let err = Journal::open(&state, KIND).unwrap_err();
    assert!(err.to_string().contains("owned by uid 1234"), "{err}");

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
}

#[test]
fn a_damaged_journal_line_is_skipped() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let journal = fx.journal();
    let a = rec(KIND, "a");
    let b = rec(KIND, "b");
    journal.append(a.to_line().as_bytes()).unwrap();
    journal.append(b"garbage\n").unwrap();
    journal.append(b.to_line().as_bytes()).unwrap();
    journal.append(b"{\"torn").unwrap();
    assert_eq!(journal.read_records().unwrap(), [a, b]);
}

#[test]
fn the_reject_log_rotates_and_still_counts_both_files() {
    if !is_root() {
        return;
    }
    use sidespawn::claim::{REJECT_LOG_ROTATE_BYTES, Reject};
    let fx = Fixture::new();
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
}
