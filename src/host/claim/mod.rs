//! The host's side of a kind's shared queue directory: claiming queued
//! requests into a host-private journal, keeping rejected lines aside, and
//! writing acknowledgements back.
//!
//! The queue directory is bind-mounted into agent containers, so everything
//! in it may have been put there by a compromised container, and this code
//! runs as root. Its invariants:
//!
//! * **The lock is held only while claiming**: copy the queue into the
//!   journal, fsync, empty the queue, remove the `pending` marker, release.
//!   No podman work ever happens under it, so wrappers never wait long.
//! * **Claimed records are durable before the queue is emptied**: the journal
//!   and the reject log are fsynced before the queue is truncated, so a crash
//!   at any point loses nothing (at worst a batch is claimed twice, which the
//!   idempotent sync tolerates).
//! * **Nothing is followed through a symlink a container could place**: the
//!   kind directory is opened with `O_DIRECTORY|O_NOFOLLOW` relative to the
//!   (host-controlled) queue root, and every entry in it is reached with
//!   `*at` calls relative to that descriptor, never by path. Files are first
//!   opened `O_PATH|O_NOFOLLOW`, which opens nothing (not a FIFO, not a
//!   device), checked with `fstat` (a regular file, one link, the expected
//!   owner) and only then reopened for I/O through `/proc/self/fd`, which
//!   yields exactly the inode that was checked.
//! * **Nothing is truncated or unlinked by a path a container could
//!   redirect**: the queue is emptied with `ftruncate` on the checked
//!   descriptor, and entries are removed with `unlinkat` relative to a
//!   directory descriptor opened without following links.
//! * **Everything is bounded**: a line is kept in memory up to
//!   [`MAX_LINE_BYTES`] (longer lines are skipped to their newline and
//!   rejected), one claim reads at most [`Limits::max_queue_bytes`], at most
//!   [`MAX_REJECTS_LISTED`] rejects are listed per claim, and pruning the
//!   acknowledgements scans at most [`MAX_ACKS_SCANNED`] entries per call.
//!
//! A queue over [`Limits::max_queue_bytes`]: its whole lines within the cap
//! are claimed as usual; everything from the first line that crosses the cap
//! to the end of the file is dropped and reported as one reject ("queue over
//! N bytes; M bytes dropped"). Leaving the excess in the queue instead would
//! look kinder but a container that keeps the queue full would then pin the
//! level trigger (and the sync) forever; nothing valid within the cap is
//! lost, and the dropped region's start is kept as the reject's excerpt.
//!
//! The host-private state directory (journal and reject log) must be a real
//! directory owned by root and writable by root alone; no container sees it.
//!
//! This module is the claim itself ([`SharedDir`]: lock, drain, acknowledge)
//! and its line reader; [`journal`] and [`rejects`] are where claimed and
//! refused lines go, and [`fsat`] holds the descriptor-relative no-follow
//! file helpers all three use.

pub mod fsat;
pub mod journal;
pub mod rejects;

use fsat::*;
pub use journal::Journal;
pub use rejects::{RejectEntry, RejectLog};

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, open, openat, renameat};
use nix::libc;
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Uid, UnlinkatFlags, fchown, fsync, unlinkat};
use serde::{Deserialize, Serialize};

use crate::shared::ack::{Ack, MAX_ACK_BYTES, MAX_MESSAGE_BYTES};
use crate::shared::kind::Kind;
use crate::shared::lock::{LockError, LockGuard, lock_exclusive};
use crate::shared::queue::{ACKS_DIR, LOCK_FILE, PENDING_FILE, QUEUE_FILE};
use crate::shared::record::{
    Action, MAX_ID_LEN, MAX_LINE_BYTES, Record, RejectReason, is_safe_name, now_ms,
};

/// Default for [`Limits::max_queue_bytes`].
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`Limits::lock_timeout`]: as long as a wrapper waits, since
/// both only ever hold the lock for milliseconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Rejects listed one by one per claim; the rest are counted in one summary
/// reject, so a queue of millions of one-byte garbage lines cannot exhaust
/// memory or flood the logs.
pub const MAX_REJECTS_LISTED: usize = 1000;
/// Bytes of a rejected line kept as its excerpt.
pub const EXCERPT_BYTES: usize = 200;
/// Directory entries `prune_acks` looks at per call, so an acks directory
/// flooded by a container cannot stall the sync.
pub const MAX_ACKS_SCANNED: usize = 100_000;
/// Size at which the reject log is rotated to `<kind>.jsonl.1`.
pub const REJECT_LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

const JOURNAL_DIR: &str = "journal";
const REJECTS_DIR: &str = "rejects";
/// Valid lines are gathered up to this size before each journal write.
const JOURNAL_CHUNK: usize = 1024 * 1024;

/// Failure while touching a shared queue directory or the host's state.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "queue directory {0} does not exist; `sidespawn sync` creates it (or run `systemd-tmpfiles --create`)"
    )]
    NoQueueDir(PathBuf),
    #[error("{path} is a symlink; remove it — the host never follows links in the queue directory")]
    Symlink { path: PathBuf },
    #[error(
        "{path} is a {found}, not a {expected}; remove it — the host uses only plain files and directories in the queue directory"
    )]
    WrongType {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error(
        "{path} has {links} hard links; remove it — a container could hard-link a host file into the queue directory, so the host refuses files with more than one link"
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error(
        "{path} is owned by uid {uid}, not {expected}; remove it, or `chown {expected}` it if it is genuine (the expected owner is the host's `owner_uid`)"
    )]
    WrongOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error(
        "host state directory {path} {problem}; it must be a real directory owned by root and writable by root alone (`chown root:root {path} && chmod 0700 {path}`)"
    )]
    UnsafeStateDir { path: PathBuf, problem: String },
    #[error(
        "claimed the queue into the journal but cannot remove the pending marker {path}: {source}; remove it by hand — while it exists the .path unit keeps firing"
    )]
    PendingNotCleared {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to write an acknowledgement for request id {0:?}: not a safe file name")]
    UnsafeAckId(String),
    #[error(
        "acknowledgement for request {id} does not fit the {MAX_ACK_BYTES}-byte limit the wrapper reads even with its {len}-byte message cut (its id or container name is too long)"
    )]
    AckTooLarge { id: String, len: usize },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
}

fn io_err(op: &'static str, path: &Path, source: impl Into<io::Error>) -> ClaimError {
    ClaimError::Io {
        op,
        path: path.to_owned(),
        source: source.into(),
    }
}

/// Bounds on what one kind's queue may cost the host.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most queue bytes read per claim (see the module doc for the excess).
    pub max_queue_bytes: u64,
    /// How long a claim waits for the queue lock.
    pub lock_timeout: Duration,
    /// The only uid allowed to own the queue directory and its files; what
    /// the host creates there is given to it.
    pub owner_uid: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            owner_uid: 0,
        }
    }
}

/// One queue line the claim refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// 1-based line number in the queue as claimed.
    pub line: usize,
    /// The request id, when the line carried a safe one (so the host can
    /// acknowledge the rejection).
    pub id: Option<String>,
    pub reason: String,
    /// The line's first [`EXCERPT_BYTES`] bytes, lossily decoded.
    pub excerpt: String,
}

/// What one claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReport {
    /// Records appended to the journal.
    pub claimed: usize,
    /// Of those, kill requests (which resolve a pid).
    pub signals: usize,
    pub rejected: Vec<Reject>,
    /// How long the queue lock was held (waiting excluded).
    pub lock_held: Duration,
    /// Bytes taken out of the queue (claimed, rejected and dropped).
    pub bytes: u64,
}

/// One kind's shared queue directory, opened without following links.
#[derive(Debug)]
pub struct SharedDir {
    kind: Kind,
    path: PathBuf,
    fd: OwnedFd,
    limits: Limits,
}

impl SharedDir {
    /// Opens `<queue_root>/<kind>`. Every component of the queue root is
    /// opened without following links, because the default root lies under
    /// `/var/lib/neutron`, which agent containers can write: a container
    /// that swapped a component for a link must not steer the host
    /// elsewhere. The kind directory must be a directory owned by
    /// `limits.owner_uid`. With
    /// `create`, missing directories are made (mode 0755). `acks/` is always
    /// made if missing.
    pub fn open(
        queue_root: &Path,
        kind: Kind,
        create: bool,
        limits: Limits,
    ) -> Result<SharedDir, ClaimError> {
        let path = queue_root.join(kind.as_str());
        let root = open_root_nofollow(queue_root, create).map_err(|e| match e {
            ClaimError::NoQueueDir(_) => ClaimError::NoQueueDir(path.clone()),
            e => e,
        })?;

        if create {
            make_dir_at(&root, kind.as_str(), &path, limits.owner_uid)?;
        }
        let fd = open_dir_at(&root, kind.as_str(), &path).map_err(|e| match e {
            ClaimError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ClaimError::NoQueueDir(path.clone())
            }
            e => e,
        })?;
        let st = fstat(&fd).map_err(|e| io_err("cannot stat", &path, e))?;
        check_entry(&st, &path, Expect::Dir, limits.owner_uid)?;
        make_dir_at(&fd, ACKS_DIR, &path.join(ACKS_DIR), limits.owner_uid)?;
        Ok(SharedDir {
            kind,
            path,
            fd,
            limits,
        })
    }

    /// The kind directory, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// True when the pending marker exists or the queue is not empty. An
    /// entry that cannot be examined counts as pending, so that the claim
    /// runs and reports the problem instead of it going unseen.
    pub fn is_pending(&self) -> bool {
        match fstatat(&self.fd, PENDING_FILE, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => return true,
            Err(Errno::ENOENT) => {}
            Err(_) => return true,
        }
        match fstatat(&self.fd, QUEUE_FILE, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st.st_size != 0,
            Err(Errno::ENOENT) => false,
            Err(_) => true,
        }
    }

    /// Claims the queue: under the lock, appends every valid line to
    /// `journal`, keeps the others in `rejects`, fsyncs both, empties the
    /// queue and removes the pending marker. An error before the queue is
    /// emptied leaves the queue as it was and takes this claim's lines back
    /// out of the journal; [`ClaimError::PendingNotCleared`] comes after, so
    /// the claimed records are in the journal then.
    pub fn claim(&self, journal: &Journal, rejects: &RejectLog) -> Result<ClaimReport, ClaimError> {
        let guard = self.lock()?;
        let result = self.claim_locked(journal, rejects);
        let lock_held = guard.held_for();
        drop(guard);
        tracing::debug!(kind = %self.kind, ?lock_held, "released the queue lock");
        let mut report = result?;
        report.lock_held = lock_held;
        Ok(report)
    }

    /// Reads the queue without claiming it (for `status` and `sync
    /// --dry-run`): no lock, nothing changed. A last line still being
    /// written is left out. Returns the valid records and the rejects.
    pub fn peek(&self) -> Result<(Vec<Record>, Vec<Reject>), ClaimError> {
        let qpath = self.path.join(QUEUE_FILE);
        let Some(queue) = self.open_file(QUEUE_FILE, OFlag::O_RDONLY)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut reader =
            BufReader::with_capacity(64 * 1024, queue.take(self.limits.max_queue_bytes));
        let mut records = Vec::new();
        let mut listed: Vec<Reject> = Vec::new();
        let mut buf = Vec::new();
        let mut line_no = 0;
        while let Some(raw) = read_capped_line(&mut reader, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| io_err("cannot read queue", &qpath, e))?
        {
            if !raw.terminated {
                break;
            }
            line_no += 1;
            match self.check_line(line_no, raw.len, &buf) {
                Ok(r) => records.push(r),
                Err(r) => listed.push(r),
            }
        }
        listed.truncate(MAX_REJECTS_LISTED);
        Ok((records, listed))
    }

    /// Checks one whole queue line of `len` bytes (`buf` holds at most the
    /// cap of them): a valid record of this directory's kind, or the reject.
    fn check_line(&self, line_no: usize, len: u64, buf: &[u8]) -> Result<Record, Reject> {
        if len > MAX_LINE_BYTES as u64 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            return Err(reject(line_no, buf, RejectReason::TooLong(len).to_string()));
        }
        match Record::parse_line(buf) {
            Ok(record) if record.kind != self.kind => Err(Reject {
                line: line_no,
                reason: format!(
                    "a {} request in the {} queue: each queue carries its own kind only",
                    record.kind, self.kind
                ),
                id: Some(record.id),
                excerpt: excerpt(buf),
            }),
            Ok(record) => Ok(record),
            Err(reason) => Err(reject(line_no, buf, reason.to_string())),
        }
    }

    fn lock(&self) -> Result<LockGuard, ClaimError> {
        let path = self.path.join(LOCK_FILE);
        // An exclusive create never follows a link and never opens an
        // existing FIFO or device; only when the file exists does it go
        // through the checked open.
        let file = match openat(
            &self.fd,
            LOCK_FILE,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                if self.limits.owner_uid != 0 {
                    fchown(&fd, Some(Uid::from_raw(self.limits.owner_uid)), None)
                        .map_err(|e| io_err("cannot chown lock file", &path, e))?;
                }
                File::from(fd)
            }
            Err(Errno::EEXIST) => self
                .open_file(LOCK_FILE, OFlag::O_RDWR)?
                // Removed between the two opens: only a container does that.
                .ok_or_else(|| io_err("lock file vanished", &path, Errno::ENOENT))?,
            Err(e) => return Err(io_err("cannot create lock file", &path, e)),
        };
        let on_wait = || tracing::info!("waiting for lock on {}", path.display());
        Ok(lock_exclusive(
            file,
            &path,
            self.limits.lock_timeout,
            on_wait,
        )?)
    }

    /// Opens an existing entry of the queue directory for I/O once it has
    /// proved to be a regular file with one link and the right owner.
    /// `None` when it does not exist.
    fn open_file(&self, name: &str, flags: OFlag) -> Result<Option<File>, ClaimError> {
        let path = self.path.join(name);
        // O_PATH opens nothing: a FIFO cannot block, a device sees no open.
        let handle = match openat(
            &self.fd,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        let st = fstat(&handle).map_err(|e| io_err("cannot stat", &path, e))?;
        check_entry(&st, &path, Expect::File, self.limits.owner_uid)?;
        // Reopening the magic link reaches the very inode just checked,
        // whatever has been renamed in the directory since. O_NONBLOCK and
        // O_NOCTTY are belt and braces: it is a regular file.
        let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let fd = open(
            proc_path.as_str(),
            flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| io_err("cannot reopen (is /proc mounted?)", &path, e))?;
        Ok(Some(File::from(fd)))
    }

    fn claim_locked(
        &self,
        journal: &Journal,
        rejects: &RejectLog,
    ) -> Result<ClaimReport, ClaimError> {
        let qpath = self.path.join(QUEUE_FILE);
        let mut report = ClaimReport {
            claimed: 0,
            signals: 0,
            rejected: Vec::new(),
            lock_held: Duration::ZERO,
            bytes: 0,
        };
        if let Some(queue) = self.open_file(QUEUE_FILE, OFlag::O_RDWR)? {
            let start = journal.len()?;
            if let Err(e) = self.drain(&queue, &qpath, journal, rejects, &mut report) {
                // The queue still holds every line: take this claim's copies
                // back out so the next claim does not journal them twice.
                if let Err(undo) = journal.truncate_to(start) {
                    tracing::error!(
                        "cannot take a failed claim back out of {}: {undo}; its records may run twice",
                        journal.path().display()
                    );
                }
                return Err(e);
            }
        }
        self.clear_pending()?;
        Ok(report)
    }

    /// Reads, journals and empties the queue (see [`SharedDir::claim`]).
    fn drain(
        &self,
        queue: &File,
        qpath: &Path,
        journal: &Journal,
        rejects: &RejectLog,
        report: &mut ClaimReport,
    ) -> Result<(), ClaimError> {
        let max = self.limits.max_queue_bytes;
        let mut reader = BufReader::with_capacity(64 * 1024, queue.take(max));
        let mut listed = Rejects::new(self.kind);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut line_no = 0;
        let mut consumed: u64 = 0;
        while let Some(raw) = read_capped_line(&mut reader, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| io_err("cannot read queue", qpath, e))?
        {
            if !raw.terminated && reader.get_ref().limit() == 0 {
                // Cut by the byte cap, not by the writer: reported below
                // with the rest of the excess.
                break;
            }
            line_no += 1;
            if !raw.terminated {
                consumed += raw.len;
                listed.push(reject(
                    line_no,
                    &buf,
                    "incomplete line (no trailing newline): a writer died mid-append or wrote without the lock"
                        .into(),
                ));
                break;
            }
            consumed += raw.len + 1;
            match self.check_line(line_no, raw.len, &buf) {
                Ok(record) => {
                    tracing::debug!(
                        kind = %self.kind,
                        sidespawn_request = %record.id,
                        "claimed {:?} {}",
                        record.action,
                        record.tag.as_deref().unwrap_or("-")
                    );
                    out.extend_from_slice(&buf);
                    out.push(b'\n');
                    report.claimed += 1;
                    report.signals += usize::from(record.action == Action::Signal);
                    if out.len() >= JOURNAL_CHUNK {
                        journal.append(&out)?;
                        out.clear();
                    }
                }
                Err(r) => listed.push(r),
            }
        }

        // Whatever lies past the lines handled above goes too: over the cap,
        // or written without the lock while we read.
        let size = file_size(queue, qpath)?;
        let dropped = size.saturating_sub(consumed);
        if dropped > 0 {
            let mut head = vec![0; EXCERPT_BYTES];
            let n = queue
                .read_at(&mut head, consumed)
                .map_err(|e| io_err("cannot read queue", qpath, e))?;
            head.truncate(n);
            let reason = if size > max {
                format!("queue over {max} bytes; {dropped} bytes dropped")
            } else {
                format!("{dropped} bytes written without the lock during the claim; dropped")
            };
            listed.push(Reject {
                line: line_no + 1,
                id: None,
                reason,
                excerpt: excerpt(&head),
            });
        }
        report.bytes = size;
        report.rejected = listed.finish();

        // Durable before the queue is emptied; with nothing claimed there is
        // nothing to make durable (an empty queue costs no fsync).
        if !out.is_empty() {
            journal.append(&out)?;
            journal.sync()?;
        }
        rejects.append(&report.rejected)?;
        queue
            .set_len(0)
            .map_err(|e| io_err("cannot empty queue", qpath, e))
    }

    fn clear_pending(&self) -> Result<(), ClaimError> {
        let path = self.path.join(PENDING_FILE);
        let result = match unlinkat(&self.fd, PENDING_FILE, UnlinkatFlags::NoRemoveDir) {
            // A container may have made it a directory; an empty one goes.
            Err(Errno::EISDIR) => unlinkat(&self.fd, PENDING_FILE, UnlinkatFlags::RemoveDir),
            other => other,
        };
        match result {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(ClaimError::PendingNotCleared {
                path,
                source: e.into(),
            }),
        }
    }

    /// The acks directory, opened without following a link and checked.
    fn open_acks(&self) -> Result<(OwnedFd, PathBuf), ClaimError> {
        let path = self.path.join(ACKS_DIR);
        let fd = open_dir_at(&self.fd, ACKS_DIR, &path)?;
        let st = fstat(&fd).map_err(|e| io_err("cannot stat", &path, e))?;
        check_entry(&st, &path, Expect::Dir, self.limits.owner_uid)?;
        Ok((fd, path))
    }

    /// Writes `acks/<id>.json` atomically: a fresh temporary file (never an
    /// existing one, never through a link) renamed into place.
    pub fn write_ack(&self, ack: &Ack) -> Result<(), ClaimError> {
        // Record ids never start with a dot; temporary files always do.
        if !is_safe_name(&ack.id, MAX_ID_LEN) || ack.id.starts_with('.') {
            return Err(ClaimError::UnsafeAckId(ack.id.clone()));
        }
        // A long message is cut rather than the ack dropped: a wrapper
        // waiting for it must learn why, not time out.
        let json =
            ack.to_json_within(MAX_ACK_BYTES as usize)
                .ok_or_else(|| ClaimError::AckTooLarge {
                    id: ack.id.clone(),
                    len: ack.message.len(),
                })?;
        let (acks, dir) = self.open_acks()?;
        let name = format!("{}.json", ack.id);
        let tmp = format!(".tmp-{}-{}", ack.id, crate::shared::record::new_id(0));
        crate::host::atomic::write_at(&acks, &dir, &name, &tmp, &json, 0o644, false)
            .map_err(|e| io_err(e.op, &e.path, e.source))
    }

    /// Removes acknowledgements (and anything else that is not a directory:
    /// stale temporary files, links a container left) last modified more
    /// than `max_age` ago. Never follows a link. Returns how many went.
    pub fn prune_acks(&self, max_age: Duration) -> Result<usize, ClaimError> {
        let now = SystemTime::now();
        let Some(cutoff) = now.checked_sub(max_age) else {
            return Ok(0);
        };
        let future = now + Duration::from_secs(60);
        let (acks, dir) = self.open_acks()?;
        // Dir owns one descriptor for reading entries; the *at calls use the
        // other, so iterating and unlinking do not fight over a borrow.
        let list_fd = acks
            .try_clone()
            .map_err(|e| io_err("cannot duplicate descriptor of", &dir, e))?;
        let mut list = Dir::from_fd(list_fd).map_err(|e| io_err("cannot list", &dir, e))?;
        let mut scanned = 0;
        let mut removed = 0;
        for entry in list.iter() {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            scanned += 1;
            if scanned > MAX_ACKS_SCANNED {
                tracing::warn!(
                    "{} holds more than {MAX_ACKS_SCANNED} entries; pruned among the first {MAX_ACKS_SCANNED} only",
                    dir.display()
                );
                break;
            }
            let st = match fstatat(&acks, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io_err("cannot stat an entry of", &dir, e)),
            };
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                continue;
            }
            if mtime(&st) > future {
                // Written before the wall clock was stepped back: restamped
                // so it ages from now instead of outliving the step.
                let _ = nix::sys::stat::utimensat(
                    &acks,
                    name,
                    &nix::sys::time::TimeSpec::UTIME_OMIT,
                    &nix::sys::time::TimeSpec::UTIME_NOW,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                );
                continue;
            }
            if mtime(&st) >= cutoff {
                continue;
            }
            match unlinkat(&acks, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => {
                    let path = dir.join(name.to_string_lossy().as_ref());
                    return Err(io_err("cannot remove", &path, e));
                }
            }
        }
        Ok(removed)
    }
}

/// One line as [`read_capped_line`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawLine {
    /// Length without the newline, however much of it was kept.
    len: u64,
    /// False when the input ended before a newline.
    terminated: bool,
}

/// Reads the next line into `buf` (newline stripped), keeping at most `cap`
/// bytes of it: the rest is read and thrown away, so a multi-gigabyte line
/// costs no memory. `None` at the end of input.
fn read_capped_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<RawLine>> {
    buf.clear();
    let mut len: u64 = 0;
    loop {
        let avail = match reader.fill_buf() {
            Ok(avail) => avail,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok((len > 0).then_some(RawLine {
                len,
                terminated: false,
            }));
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let chunk = &avail[..newline.unwrap_or(avail.len())];
        let room = cap.saturating_sub(buf.len()).min(chunk.len());
        buf.extend_from_slice(&chunk[..room]);
        len += chunk.len() as u64;
        let used = chunk.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(RawLine {
                len,
                terminated: true,
            }));
        }
    }
}

/// Reads a host-private JSON-lines file from its start without moving any
/// file offset, passing each line (or why it is unusable) to `f` with its
/// 1-based number, until `f` breaks.
fn for_each_line(
    file: &File,
    path: &Path,
    mut f: impl FnMut(usize, Result<&[u8], String>) -> ControlFlow<()>,
) -> Result<(), ClaimError> {
    let mut reader = BufReader::with_capacity(64 * 1024, ReadAt { file, pos: 0 });
    let mut buf = Vec::new();
    let mut line_no = 0;
    while let Some(raw) = read_capped_line(&mut reader, &mut buf, MAX_LINE_BYTES)
        .map_err(|e| io_err("cannot read", path, e))?
    {
        line_no += 1;
        let line = if !raw.terminated {
            Err("incomplete last line".to_owned())
        } else if raw.len > MAX_LINE_BYTES as u64 {
            Err(format!("line of {} bytes, over the limit", raw.len))
        } else {
            Ok(buf.as_slice())
        };
        if f(line_no, line).is_break() {
            break;
        }
    }
    Ok(())
}

/// Reads with pread(2), so readers never disturb each other or appends.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Collects one claim's rejects, logging each, up to [`MAX_REJECTS_LISTED`].
struct Rejects {
    kind: Kind,
    listed: Vec<Reject>,
    unlisted: usize,
    first_unlisted: usize,
}

impl Rejects {
    fn new(kind: Kind) -> Self {
        Rejects {
            kind,
            listed: Vec::new(),
            unlisted: 0,
            first_unlisted: 0,
        }
    }

    fn push(&mut self, r: Reject) {
        if self.listed.len() < MAX_REJECTS_LISTED {
            log_reject(self.kind, &r);
            self.listed.push(r);
        } else {
            if self.unlisted == 0 {
                self.first_unlisted = r.line;
            }
            self.unlisted += 1;
        }
    }

    fn finish(mut self) -> Vec<Reject> {
        if self.unlisted > 0 {
            let r = Reject {
                line: self.first_unlisted,
                id: None,
                reason: format!(
                    "{} more rejected lines from here on, not listed (at most {MAX_REJECTS_LISTED} per claim)",
                    self.unlisted
                ),
                excerpt: String::new(),
            };
            log_reject(self.kind, &r);
            self.listed.push(r);
        }
        self.listed
    }
}

fn log_reject(kind: Kind, r: &Reject) {
    tracing::warn!(
        %kind,
        line = r.line,
        sidespawn_request = r.id.as_deref().unwrap_or("-"),
        result = "rejected",
        "rejected queue line: {}",
        r.reason
    );
}

fn reject(line: usize, bytes: &[u8], reason: String) -> Reject {
    Reject {
        line,
        id: extract_id(bytes),
        reason,
        excerpt: excerpt(bytes),
    }
}

/// The request id of a line that failed validation, if it is a JSON object
/// whose `id` is a safe name: enough to acknowledge the rejection.
fn extract_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    // serde would also read a struct from an array; only objects count.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let id = serde_json::from_slice::<IdOnly>(bytes).ok()?.id;
    (is_safe_name(&id, MAX_ID_LEN) && !id.starts_with('.')).then_some(id)
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cap: usize, bufsize: usize) -> Vec<(Vec<u8>, RawLine)> {
        let mut reader = BufReader::with_capacity(bufsize, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(raw) = read_capped_line(&mut reader, &mut buf, cap).unwrap() {
            out.push((buf.clone(), raw));
        }
        out
    }

    fn whole(len: u64) -> RawLine {
        RawLine {
            len,
            terminated: true,
        }
    }

    #[test]
    fn splits_lines_across_buffer_boundaries() {
        for bufsize in [1, 2, 3, 7, 64 * 1024] {
            let got = lines(b"a\n\nbcdefghij\nlast", 100, bufsize);
            assert_eq!(
                got,
                [
                    (b"a".to_vec(), whole(1)),
                    (b"".to_vec(), whole(0)),
                    (b"bcdefghij".to_vec(), whole(9)),
                    (
                        b"last".to_vec(),
                        RawLine {
                            len: 4,
                            terminated: false
                        }
                    ),
                ],
                "buffer of {bufsize}"
            );
        }
        assert!(lines(b"", 100, 8).is_empty());
        assert_eq!(lines(b"\n", 100, 8), [(Vec::new(), whole(0))]);
    }

    #[test]
    fn long_lines_are_cut_at_the_cap_and_skipped_to_their_newline() {
        for bufsize in [3, 5, 4096] {
            let got = lines(b"0123456789\nok\n", 4, bufsize);
            assert_eq!(
                got,
                [(b"0123".to_vec(), whole(10)), (b"ok".to_vec(), whole(2))]
            );
        }
        // Exactly the cap is kept whole; the caller tells it from longer
        // lines by `len`.
        assert_eq!(lines(b"0123\n", 4, 2), [(b"0123".to_vec(), whole(4))]);
    }

    #[test]
    fn a_huge_line_costs_no_more_than_the_cap() {
        let mut input = vec![b'x'; 10 * 1024 * 1024];
        input.push(b'\n');
        let mut reader = BufReader::with_capacity(64 * 1024, input.as_slice());
        let mut buf = Vec::new();
        let raw = read_capped_line(&mut reader, &mut buf, 4096)
            .unwrap()
            .unwrap();
        assert_eq!(raw, whole(10 * 1024 * 1024));
        assert_eq!(buf.len(), 4096);
        assert!(buf.capacity() <= 2 * 4096, "capacity {}", buf.capacity());
    }

    #[test]
    fn line_reading_stops_when_asked() {
        let path = std::env::temp_dir().join(format!(
            "sidespawn-lines-{}",
            crate::shared::record::new_id(0)
        ));
        std::fs::write(&path, b"a\nb\nc\n").unwrap();
        let file = File::open(&path).unwrap();
        let mut seen = Vec::new();
        for_each_line(&file, &path, |n, line| {
            seen.push((n, line.unwrap().to_vec()));
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(seen, [(1, b"a".to_vec()), (2, b"b".to_vec())]);
    }

    #[test]
    fn extracts_only_safe_ids() {
        assert_eq!(
            extract_id(br#"{"v":9,"id":"abc-1.2_3","zzz":[]}"#).as_deref(),
            Some("abc-1.2_3")
        );
        for bad in [
            &br#"{"id":"../etc/passwd"}"#[..],
            br#"{"id":".hidden"}"#,
            br#"{"id":""}"#,
            br#"{"id":7}"#,
            br#"{"v":1}"#,
            br#"["id"]"#,
            b"{\"id\":\"a\"",
            b"\xff",
        ] {
            assert_eq!(extract_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"id":"{}"}}"#, "a".repeat(MAX_ID_LEN + 1));
        assert_eq!(extract_id(long.as_bytes()), None);
    }

    #[test]
    fn excerpts_are_short_and_lossy() {
        assert_eq!(excerpt(&[b'a'; 500]).len(), EXCERPT_BYTES);
        assert_eq!(excerpt(b"ok\xffok"), "ok\u{fffd}ok");
        assert_eq!(excerpt(b""), "");
    }

    #[test]
    fn rejects_beyond_the_cap_are_summarised() {
        let mut rejects = Rejects::new(Kind::Radvd);
        for line in 1..=MAX_REJECTS_LISTED + 5 {
            rejects.push(reject(line, b"junk", "bad".into()));
        }
        let listed = rejects.finish();
        assert_eq!(listed.len(), MAX_REJECTS_LISTED + 1);
        let last = listed.last().unwrap();
        assert_eq!(last.line, MAX_REJECTS_LISTED + 1);
        assert!(
            last.reason.starts_with("5 more rejected lines"),
            "{}",
            last.reason
        );
    }
}
