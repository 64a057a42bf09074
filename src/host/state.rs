//! Host-private state under the state directory (root-only, never shared
//! with a container): the generation counter and the last result of each
//! kind's sync, and the per-kind sync locks. Written atomically through
//! [`crate::host::atomic`] (temporary file, fsync, rename) so a sync killed at any
//! point leaves either the old or the new value.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::shared::kind::Kind;

/// Longest wait for another sync (or `gc`, `upgrade`) of the same kind to
/// finish.
pub const SYNC_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::shared::lock::LockError),
    #[error(
        "corrupt state file {path}: {message}; move it aside and run `sidespawn sync --full` to rebuild it from the engine's containers"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "unreadable desired-sidecar file {path}: {message}; run `sidespawn sync --full`: it moves the file aside to <state_dir>/desired/corrupt/ and rebuilds the entry from the sidecar's container"
    )]
    CorruptDesired { path: PathBuf, message: String },
    #[error(
        "host state directory {path} is a {found}, not a directory; move it aside: the next sync recreates the directory (root-only, mode 0700)"
    )]
    NotADirectory { path: PathBuf, found: &'static str },
    #[error(
        "host state directory {path} belongs to the configuration whose queue_root is {owner}, not {queue_root} (recorded in {path}/owner.json): two configurations must not share a state_dir, their journals and desired sidecars would mix; give this configuration a state_dir of its own, or, if that queue root was moved here, delete {path}/owner.json"
    )]
    SharedStateDir {
        path: PathBuf,
        owner: PathBuf,
        queue_root: PathBuf,
    },
}

/// Who owns a state directory (`<state_dir>/owner.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The canonical queue root of the configuration that first synced with this state
    /// directory.
    pub queue_root: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_replace(path, bytes, true)
}

/// Replaces `path` atomically; `durable` adds the fsyncs that make it
/// survive a power loss (not needed for informational files).
fn write_replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("cannot create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    let io_of = |e: crate::host::atomic::WriteError| StateError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    };
    let fd = crate::host::atomic::open_dir(dir).map_err(io_of)?;
    // One of this pid's is a leftover of a killed writer that had our pid:
    // the writer creates its temporary file afresh (never an existing one).
    let _ = nix::unistd::unlinkat(&fd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    crate::host::atomic::write_at(&fd, dir, &name, &tmp, bytes, 0o600, durable).map_err(io_of)?;
    if durable {
        let _ = crate::host::atomic::sync_dir(fd, dir);
    }
    Ok(())
}

/// Whether `name` is a temporary file of [`write_replace`] whose writer is
/// gone (`.<name>.tmp-<pid>` with no process `pid`). One whose process
/// lives is another sync's, mid-write.
fn is_stale_tmp(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once(".tmp-"))
        .and_then(|(_, pid)| pid.parse::<i32>().ok())
        .filter(|&p| p > 0)
    else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", path)(e)),
    }
}

/// Below this much free space `status` reports the state directory as not
/// writable: a sync writes a few small files, and a desired entry can be as
/// big as the largest request.
const MIN_FREE_BYTES: u64 = 64 * 1024;

/// The host state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// The outcome of the last sync of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStatus {
    /// Unix ms when the last sync of this kind finished.
    pub last_sync_ms: u64,
    /// `true` when it ran (per-request failures do not count).
    pub ok: bool,
    /// Why it could not run.
    pub error: Option<String>,
    /// Failed runs in a row (drives the back-off).
    pub consecutive_failures: u32,
    pub claimed: usize,
    pub failed: usize,
    pub rejected: usize,
    /// Requests claimed by every sync so far (each request is claimed once).
    #[serde(default)]
    pub total_claimed: u64,
    /// Requests rejected by every sync so far.
    #[serde(default)]
    pub total_rejected: u64,
    /// When the sync before this one finished (0: none), so `status` can
    /// count the rejects logged since then.
    #[serde(default)]
    pub previous_sync_ms: u64,
}

impl KindStatus {
    /// Whether this status is at least as new as the failure `mark`
    /// ([`StateDir::failure_mark`]), which every sync writes just before it.
    /// Two syncs may end in the same millisecond: then it is current when it
    /// says the same as the mark.
    pub fn is_current(&self, (failures, at): (u32, u64)) -> bool {
        self.last_sync_ms > at || (self.last_sync_ms == at && self.consecutive_failures == failures)
    }
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn generation_path(&self, kind: Kind) -> PathBuf {
        self.dir.join("generation").join(kind.as_str())
    }

    fn status_path(&self, kind: Kind) -> PathBuf {
        self.dir.join("status").join(format!("{kind}.json"))
    }

    /// Takes the host-side lock that lets one sync at a time work on `kind`
    /// (`<state_dir>/locks/<kind>.lock`), waiting up to `timeout`.
    pub fn sync_lock(
        &self,
        kind: Kind,
        timeout: std::time::Duration,
    ) -> Result<crate::shared::lock::LockGuard, StateError> {
        self.check_dir()?;
        let dir = self.dir.join("locks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("cannot create", &dir))?;
        let path = dir.join(format!("{kind}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        crate::shared::lock::lock_exclusive(file, &path, timeout, || {
            tracing::info!(
                "another sync of {kind} is running; waiting for {}",
                path.display()
            )
        })
        .map_err(StateError::Lock)
    }

    /// Takes the sync locks of `kinds` ([`StateDir::sync_lock`]), each once and
    /// in kind order, so two holders of several kinds cannot deadlock. The
    /// sync, `gc` and `upgrade` all take them this way: whoever edits a
    /// kind's desired table or containers excludes the others.
    pub fn sync_locks(
        &self,
        kinds: &[Kind],
        timeout: std::time::Duration,
    ) -> Result<Vec<crate::shared::lock::LockGuard>, StateError> {
        let mut sorted = kinds.to_vec();
        sorted.sort();
        sorted.dedup();
        sorted.iter().map(|&k| self.sync_lock(k, timeout)).collect()
    }

    /// Fails with advice when the state directory exists as something else than a directory
    /// (a missing one is fine: it is created as needed). Without this, creating the first
    /// subdirectory would fail with a bare "Not a directory".
    pub fn check_dir(&self) -> Result<(), StateError> {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(m) => Err(StateError::NotADirectory {
                path: self.dir.clone(),
                found: if m.is_symlink() {
                    "symlink"
                } else if m.is_file() {
                    "regular file"
                } else {
                    "special file"
                },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot stat", &self.dir)(e)),
        }
    }

    /// Checks that this state directory is not another configuration's: the first sync
    /// records its queue root in `owner.json` (when `record`), and a configuration with
    /// another queue root is refused from then on. Two configurations on one state
    /// directory would replay each other's journals, share desired tables and, above
    /// all, have one identity (`config::instance_id`), so that each would take the other's
    /// sidecars for its own. A state directory that cannot be written to is left for the
    /// sync to report; the check is then only made once it can be recorded.
    pub fn claim_owner(&self, queue_root: &Path, record: bool) -> Result<(), StateError> {
        let path = self.dir.join("owner.json");
        let queue_root = crate::host::config::canonical_through_ancestors(queue_root);
        match read_json::<Owner>(&path)? {
            Some(o) if o.queue_root == queue_root => Ok(()),
            Some(o) => Err(StateError::SharedStateDir {
                path: self.dir.clone(),
                owner: o.queue_root,
                queue_root,
            }),
            None if record => {
                let text = serde_json::to_vec_pretty(&Owner { queue_root }).map_err(|e| {
                    StateError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                })?;
                if let Err(e) = write_atomic(&path, &text) {
                    tracing::warn!("cannot record the owner of the state directory: {e}");
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Removes the temporary files a killed writer left (`.*.tmp-<pid>` of a
    /// process that is gone) in the state directory and its subdirectories,
    /// two levels deep (`desired/<kind>/`). Returns how many went.
    pub fn clean_stale_tmp(&self) -> usize {
        fn walk(dir: &Path, depth: u32, removed: &mut usize) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.filter_map(Result::ok) {
                let Ok(ft) = e.file_type() else { continue };
                let name = e.file_name();
                if ft.is_dir() && depth > 0 {
                    walk(&e.path(), depth - 1, removed);
                } else if ft.is_file()
                    && name.to_str().is_some_and(is_stale_tmp)
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    *removed += 1;
                }
            }
        }
        let mut removed = 0;
        walk(&self.dir, 2, &mut removed);
        if removed > 0 {
            tracing::info!(
                "removed {removed} temporary file(s) a killed sync left in {}",
                self.dir.display()
            );
        }
        removed
    }

    fn lock_path(&self, kind: Kind) -> PathBuf {
        self.dir.join("locks").join(format!("{kind}.lock"))
    }

    /// Records the failed syncs of `kind` in a row (0 after a success) where
    /// recording needs no free block: in the length of the kind's lock file
    /// (extended sparse, never written) and its modification time. The back-off
    /// and `status` read it back, so both work when the state directory is
    /// full and the JSON status cannot be written.
    pub fn mark_failures(&self, kind: Kind, failures: u32, at_ms: u64) -> Result<(), StateError> {
        let path = self.lock_path(kind);
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        f.set_len(u64::from(failures))
            .map_err(io("cannot record the failures in", &path))?;
        let at = nix::sys::time::TimeSpec::from(std::time::Duration::from_millis(at_ms));
        nix::sys::stat::futimens(&f, &at, &at)
            .map_err(|e| io("cannot record the failures in", &path)(e.into()))
    }

    /// Failed syncs of `kind` in a row and when the last sync ended (Unix
    /// ms), from whichever of the failure mark and the JSON status is newer:
    /// the mark is written first by every sync, the status may not be.
    pub fn failures(&self, kind: Kind) -> Option<(u32, u64)> {
        let st = self.status(kind).ok().flatten();
        match (self.failure_mark(kind), st) {
            (Some(mark), Some(st)) if st.is_current(mark) => {
                Some((st.consecutive_failures, st.last_sync_ms))
            }
            (Some(mark), _) => Some(mark),
            (None, st) => st.map(|st| (st.consecutive_failures, st.last_sync_ms)),
        }
    }

    /// What [`StateDir::mark_failures`] recorded: failures in a row and
    /// when (Unix ms); `None` before the first record.
    pub fn failure_mark(&self, kind: Kind) -> Option<(u32, u64)> {
        let path = self.lock_path(kind);
        let m = std::fs::symlink_metadata(&path).ok()?;
        if !m.is_file() {
            return None;
        }
        let at = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        Some((u32::try_from(m.len()).unwrap_or(u32::MAX), at))
    }

    /// Why the state directory cannot take a write now (read-only, or no
    /// free blocks or inodes), from `statvfs` alone: nothing is written.
    pub fn unwritable(&self) -> Option<String> {
        let v = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        let dir = self.dir.display();
        if v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Some(format!(
                "state directory {dir} is on a read-only filesystem"
            ));
        }
        // Root may use the reserved blocks, hence `bfree`, not `bavail`.
        let free = (v.blocks_free() as u64).saturating_mul(v.fragment_size() as u64);
        if free < MIN_FREE_BYTES {
            return Some(format!(
                "state directory {dir} is full ({free} bytes free); free space on its filesystem: every sync of it fails until then"
            ));
        }
        if v.files() > 0 && v.files_free() == 0 {
            return Some(format!(
                "state directory {dir} has no free inodes; free some on its filesystem: every sync of it fails until then"
            ));
        }
        None
    }

    /// The next generation number to hand out for `kind` (starts at 1).
    /// Per kind, so that syncs of different kinds, which run at the same
    /// time, each own their counter under their sync lock.
    pub fn next_generation(&self, kind: Kind) -> Result<u64, StateError> {
        Ok(self.stored_generation(kind)?.unwrap_or(1))
    }

    /// The stored counter of `kind`, `None` when there is none yet (or its file was removed).
    pub fn stored_generation(&self, kind: Kind) -> Result<Option<u64>, StateError> {
        read_json::<u64>(&self.generation_path(kind))
    }

    pub fn store_generation(&self, kind: Kind, next: u64) -> Result<(), StateError> {
        write_atomic(&self.generation_path(kind), next.to_string().as_bytes())
    }

    pub fn status(&self, kind: Kind) -> Result<Option<KindStatus>, StateError> {
        read_json(&self.status_path(kind))
    }

    pub fn store_status(&self, kind: Kind, st: &KindStatus) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(st).map_err(|e| StateError::Corrupt {
            path: self.status_path(kind),
            message: e.to_string(),
        })?;
        // Informational: losing the last update in a power cut is harmless.
        write_replace(&self.status_path(kind), &text, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_and_status_round_trip() {
        let d = std::env::temp_dir().join(format!(
            "sidespawn-state-{}",
            crate::shared::record::new_id(0)
        ));
        let s = StateDir::new(&d);
        assert_eq!(s.next_generation(Kind::Radvd).unwrap(), 1);
        s.store_generation(Kind::Radvd, 42).unwrap();
        assert_eq!(s.next_generation(Kind::Radvd).unwrap(), 42);
        assert_eq!(s.next_generation(Kind::Dnsmasq).unwrap(), 1);
        assert_eq!(s.status(Kind::Radvd).unwrap(), None);
        let st = KindStatus {
            ok: true,
            claimed: 3,
            ..Default::default()
        };
        s.store_status(Kind::Radvd, &st).unwrap();
        assert_eq!(s.status(Kind::Radvd).unwrap(), Some(st));
        std::fs::write(d.join("generation/radvd"), b"garbage").unwrap();
        let e = s.next_generation(Kind::Radvd).unwrap_err().to_string();
        assert!(
            e.contains("generation") && e.contains("move it aside"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_state_dir_serves_one_queue_root() {
        let d = std::env::temp_dir().join(format!(
            "sidespawn-owner-{}",
            crate::shared::record::new_id(0)
        ));
        let s = StateDir::new(&d);
        let (a, b) = (d.join("qa"), d.join("qb"));
        s.claim_owner(&a, false).unwrap();
        s.claim_owner(&b, false).unwrap();
        assert!(
            !d.join("owner.json").exists(),
            "a dry check records nothing"
        );
        s.claim_owner(&a, true).unwrap();
        s.claim_owner(&d.join("x/../qa"), true).unwrap();
        let e = s.claim_owner(&b, true).unwrap_err().to_string();
        assert!(
            e.contains("qa")
                && e.contains("qb")
                && e.contains("owner.json")
                && e.contains("must not share a state_dir"),
            "{e}"
        );
        assert!(s.claim_owner(&b, false).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_writes_and_killed_writers_leave_no_temporary_file() {
        let d = std::env::temp_dir().join(format!(
            "sidespawn-state-{}",
            crate::shared::record::new_id(0)
        ));
        let s = StateDir::new(&d);
        // Renaming a file over a directory fails after the write.
        std::fs::create_dir_all(d.join("status/radvd.json")).unwrap();
        assert!(s.store_status(Kind::Radvd, &KindStatus::default()).is_err());
        let names = |dir: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("status"), ["radvd.json"]);
        // A dead writer's file goes; a live one's (ours) stays.
        std::fs::create_dir_all(d.join("desired/radvd")).unwrap();
        std::fs::write(d.join("desired/radvd/.x.json.tmp-2147483646"), b"").unwrap();
        let live = format!(".y.json.tmp-{}", std::process::id());
        std::fs::write(d.join("desired/radvd").join(&live), b"").unwrap();
        assert_eq!(s.clean_stale_tmp(), 1);
        assert_eq!(names("desired/radvd"), [live]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
