//! The shared queue directory of one kind, as the wrapper sees it.
//!
//! `<queue_root>/<kind>/` is bind-mounted into the agent containers and holds:
//!
//! * `queue.jsonl` — pending requests, one JSON record per line;
//! * `lock` — the flock(2) target shared by every wrapper and the host;
//! * `timestamp` — touched after each append (the `.path` unit's
//!   `PathModified=` trigger);
//! * `pending` — created by every append and removed by the host only once
//!   it has claimed the queue (the level trigger that cannot be lost);
//! * `acks/` — the host's answers, one `<request id>.json` each.
//!
//! Invariant: a line is appended only while holding the lock, in a single
//! write; if anything fails the file is cut back to its previous length, so
//! the queue never holds a partial line. The host claims under the same lock.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::shared::kind::Kind;
use crate::shared::lock::{LockError, LockGuard, lock_exclusive};
use crate::shared::record::Record;

pub const QUEUE_FILE: &str = "queue.jsonl";
pub const LOCK_FILE: &str = "lock";
pub const TIMESTAMP_FILE: &str = "timestamp";
pub const PENDING_FILE: &str = "pending";
pub const ACKS_DIR: &str = "acks";

/// Failure while queueing a request.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "queue directory {0} does not exist; the host creates it (`systemd-tmpfiles --create` or `sidespawn sync`) and the agent container must bind-mount it"
    )]
    NoDirectory(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "short write to {path} ({written} of {len} bytes); the partial line was removed, the queue is unchanged"
    )]
    ShortWrite {
        path: PathBuf,
        written: usize,
        len: usize,
    },
}

/// Paths of one kind's shared queue directory.
#[derive(Debug, Clone)]
pub struct QueueDir {
    dir: PathBuf,
}

impl QueueDir {
    pub fn new(queue_root: &Path, kind: Kind) -> Self {
        QueueDir {
            dir: queue_root.join(kind.as_str()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn queue(&self) -> PathBuf {
        self.dir.join(QUEUE_FILE)
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }
    pub fn timestamp(&self) -> PathBuf {
        self.dir.join(TIMESTAMP_FILE)
    }
    pub fn pending(&self) -> PathBuf {
        self.dir.join(PENDING_FILE)
    }
    pub fn acks(&self) -> PathBuf {
        self.dir.join(ACKS_DIR)
    }
    pub fn ack(&self, id: &str) -> PathBuf {
        self.acks().join(format!("{id}.json"))
    }

    /// Takes the queue lock, as the wrapper does.
    pub fn lock(&self, timeout: Duration, on_wait: impl FnOnce()) -> Result<LockGuard, QueueError> {
        let path = self.lock_path();
        let file = open_nofollow(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )
        .map_err(|source| self.io_err("cannot open lock file", &path, source))?;
        Ok(lock_exclusive(file, &path, timeout, on_wait)?)
    }

    fn io_err(&self, op: &'static str, path: &Path, source: std::io::Error) -> QueueError {
        if source.kind() == ErrorKind::NotFound && !self.dir.is_dir() {
            return QueueError::NoDirectory(self.dir.clone());
        }
        QueueError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Appends one record: under the lock, marks the queue pending, writes
    /// the line in one write and touches the timestamp. On any failure the
    /// queue file is cut back to its previous length.
    pub fn append(
        &self,
        record: &Record,
        lock_timeout: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<(), QueueError> {
        let line = record.to_line();
        let _guard = self.lock(lock_timeout, on_wait)?;

        // The marker first: should it fail, nothing has been queued yet.
        let pending = self.pending();
        open_nofollow(&pending, OpenOptions::new().write(true).create(true))
            .map_err(|source| self.io_err("cannot create pending marker", &pending, source))?;

        let qpath = self.queue();
        let mut queue = open_nofollow(&qpath, OpenOptions::new().append(true).create(true))
            .map_err(|source| self.io_err("cannot open queue", &qpath, source))?;
        let before = queue
            .metadata()
            .map_err(|source| self.io_err("cannot stat queue", &qpath, source))?
            .len();
        let rollback = |queue: &File, err: QueueError| -> QueueError {
            match queue.set_len(before) {
                Ok(()) => err,
                Err(source) => QueueError::Io {
                    op: "cannot remove a partial line (the host will reject it) from",
                    path: qpath.clone(),
                    source,
                },
            }
        };
        match queue.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            Ok(n) => {
                return Err(rollback(
                    &queue,
                    QueueError::ShortWrite {
                        path: qpath.clone(),
                        written: n,
                        len: line.len(),
                    },
                ));
            }
            Err(source) => {
                return Err(rollback(
                    &queue,
                    QueueError::Io {
                        op: "cannot append to queue",
                        path: qpath.clone(),
                        source,
                    },
                ));
            }
        }

        let ts = self.timestamp();
        if let Err(source) = touch(&ts) {
            return Err(rollback(
                &queue,
                QueueError::Io {
                    op: "cannot touch timestamp",
                    path: ts,
                    source,
                },
            ));
        }
        Ok(())
    }
}

/// Opens without following a symlink in the last component.
pub fn open_nofollow(path: &Path, opts: &mut OpenOptions) -> std::io::Result<File> {
    opts.mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

/// Updates the timestamp file's times (creating it if needed). Setting times
/// needs no free blocks, so it works on a full filesystem, and it raises the
/// inotify events `PathModified=` waits for.
fn touch(path: &Path) -> std::io::Result<()> {
    let f = open_nofollow(path, OpenOptions::new().write(true).create(true))?;
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::futimens(&f, &now, &now).map_err(std::io::Error::from)?;
    // Closing a file opened for writing raises IN_CLOSE_WRITE as well.
    let mut f = f;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::record::{Action, VERSION, new_id, now_ms};

    fn rec(arg: &str) -> Record {
        Record {
            v: VERSION,
            id: new_id(now_ms()),
            kind: Kind::Haproxy,
            action: Action::Start,
            argv: vec![arg.to_owned()],
            netns: None,
            tag: None,
            signal: None,
            pid: None,
            ts: now_ms(),
        }
    }

    #[test]
    fn append_writes_line_marker_and_timestamp() {
        let root = std::env::temp_dir().join(format!("sidespawn-q-{}", new_id(0)));
        let q = QueueDir::new(&root, Kind::Haproxy);
        let err = q
            .append(&rec("a"), Duration::from_secs(1), || {})
            .unwrap_err();
        assert!(matches!(err, QueueError::NoDirectory(_)), "{err}");
        assert!(err.to_string().contains(&q.dir().display().to_string()));

        std::fs::create_dir_all(q.dir()).unwrap();
        q.append(&rec("a"), Duration::from_secs(1), || {}).unwrap();
        q.append(&rec("b c"), Duration::from_secs(1), || {})
            .unwrap();
        let text = std::fs::read_to_string(q.queue()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let r2 = Record::parse_line(lines[1].as_bytes()).unwrap();
        assert_eq!(r2.argv, ["b c"]);
        assert!(q.pending().exists());
        assert!(q.timestamp().exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_symlinked_queue_file() {
        let root = std::env::temp_dir().join(format!("sidespawn-q-{}", new_id(0)));
        let q = QueueDir::new(&root, Kind::Haproxy);
        std::fs::create_dir_all(q.dir()).unwrap();
        let target = root.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, q.queue()).unwrap();
        assert!(q.append(&rec("a"), Duration::from_secs(1), || {}).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
