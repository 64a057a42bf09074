//! All locking in sidespawn: an exclusive flock(2) on a queue's lock file.
//!
//! The lock file lives inside the queue directory that is bind-mounted into
//! the agent containers, so the wrapper and the host lock the same inode
//! (flock works across mount namespaces on one inode). The guard unlocks when
//! dropped. Waiting is bounded: the first attempt does not block; after that
//! the caller is told it is waiting, and the wait gives up at the timeout.
//! Blocking waiters sleep in the kernel's queue rather than polling, so a
//! steady stream of short holders cannot starve one that waits.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Locking failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "timed out after {waited:?} waiting for the lock on {path}; another process holds it (see `fuser -v {path}`)"
    )]
    Timeout { path: PathBuf, waited: Duration },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock held on a file; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    acquired: Instant,
}

impl LockGuard {
    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long the lock has been held so far.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file would release the lock too; unlocking explicitly
        // keeps the release at this point even if the file were shared.
        let _ = self.file.unlock();
    }
}

enum WaitState {
    Waiting,
    Acquired,
    Failed(std::io::Error),
    Abandoned,
}

/// Takes an exclusive lock on `file` (opened by the caller, who knows how to
/// open it safely), waiting at most `timeout`. `on_wait` runs once, before
/// blocking, so the caller can say that it waits and for what.
pub fn lock_exclusive(
    file: File,
    path: &Path,
    timeout: Duration,
    on_wait: impl FnOnce(),
) -> Result<LockGuard, LockError> {
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    let start = Instant::now();
    match file.try_lock() {
        Ok(()) => {
            return Ok(LockGuard {
                file,
                path: path.to_owned(),
                acquired: Instant::now(),
            });
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    on_wait();

    // flock(2) has no timeout. A helper thread blocks on a second descriptor
    // of the same open file description (so the lock it gets is ours); if we
    // give up first, it releases the lock as soon as it gets it.
    let waiter = file.try_clone().map_err(io)?;
    let state = Arc::new((Mutex::new(WaitState::Waiting), Condvar::new()));
    let thread_state = Arc::clone(&state);
    std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || {
            let result = waiter.lock();
            let (mutex, cond) = &*thread_state;
            let mut st = mutex.lock().unwrap_or_else(|p| p.into_inner());
            match (result, &*st) {
                (Ok(()), WaitState::Abandoned) => {
                    let _ = waiter.unlock();
                }
                (Ok(()), _) => *st = WaitState::Acquired,
                (Err(e), _) => *st = WaitState::Failed(e),
            }
            cond.notify_all();
        })
        .map_err(io)?;

    let (mutex, cond) = &*state;
    let mut st = mutex.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match &*st {
            WaitState::Acquired => {
                return Ok(LockGuard {
                    file,
                    path: path.to_owned(),
                    acquired: Instant::now(),
                });
            }
            WaitState::Failed(_) => {
                let WaitState::Failed(e) = std::mem::replace(&mut *st, WaitState::Abandoned) else {
                    unreachable!()
                };
                return Err(io(e));
            }
            WaitState::Waiting | WaitState::Abandoned => {}
        }
        let waited = start.elapsed();
        if waited >= timeout {
            *st = WaitState::Abandoned;
            return Err(LockError::Timeout {
                path: path.to_owned(),
                waited,
            });
        }
        st = cond
            .wait_timeout(st, timeout - waited)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_lock() -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!(
            "sidespawn-lock-{}-{}",
            std::process::id(),
            crate::shared::record::new_id(0)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let f = File::create(&path).unwrap();
        (path, f)
    }

    #[test]
    fn uncontended_lock_does_not_wait() {
        let (path, f) = temp_lock();
        let mut waited = false;
        let g = lock_exclusive(f, &path, Duration::from_secs(1), || waited = true).unwrap();
        assert!(!waited);
        assert_eq!(g.path(), path);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn times_out_then_releases_when_holder_goes() {
        let (path, f) = temp_lock();
        let held = lock_exclusive(f, &path, Duration::from_secs(1), || {}).unwrap();

        let mut waited = false;
        let err = lock_exclusive(
            File::open(&path).unwrap(),
            &path,
            Duration::from_millis(50),
            || waited = true,
        )
        .unwrap_err();
        assert!(waited);
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));

        // The abandoned waiter must not keep the lock once it gets it.
        drop(held);
        let again = lock_exclusive(
            File::open(&path).unwrap(),
            &path,
            Duration::from_secs(5),
            || {},
        );
        assert!(again.is_ok());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn waiter_gets_lock_when_released() {
        let (path, f) = temp_lock();
        let held = lock_exclusive(f, &path, Duration::from_secs(1), || {}).unwrap();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            lock_exclusive(
                File::open(&p2).unwrap(),
                &p2,
                Duration::from_secs(30),
                || {},
            )
            .is_ok()
        });
        // Let the other thread reach the kernel wait, then release.
        while !t.is_finished() && held.held_for() < Duration::from_millis(20) {
            std::thread::yield_now();
        }
        drop(held);
        assert!(t.join().unwrap());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
