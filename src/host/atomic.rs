//! The one atomic file writer: a file is replaced by writing a fresh
//! temporary file beside it and renaming it into place, so readers see the
//! old contents or the new, never a part.
//!
//! [`write_at`] works relative to an open directory descriptor, with the
//! defences the shared queue directory needs (containers can write there):
//! the temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so it
//! is never an existing file and never reached through a link; its mode is
//! set with `fchmod`, whatever the umask; and it is removed on any error, so
//! a full filesystem leaves nothing behind. [`write_file`] is the path-based
//! writer built on it (host state, generated units), adding the directory
//! fsync that makes the rename durable. Callers choose the temporary name
//! (hidden, and never the final name's pattern) and map [`WriteError`] into
//! their own error, which names the operation and path.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat, renameat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// What failed, on which path.
#[derive(Debug)]
pub struct WriteError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::errno::Errno) -> WriteError + 'a {
    move |e| WriteError {
        op,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Replaces `name` in the directory `dir` (whose path, for messages, is
/// `dir_path`) with `bytes`, through the temporary file `tmp` in the same
/// directory, with permissions `mode`; fsyncs the file first when `fsync`.
/// Does not fsync the directory (see [`sync_dir`]).
pub fn write_at(
    dir: &impl AsFd,
    dir_path: &Path,
    name: &str,
    tmp: &str,
    bytes: &[u8],
    mode: u32,
    fsync: bool,
) -> Result<(), WriteError> {
    let tmp_path = dir_path.join(tmp);
    let mode = Mode::from_bits_truncate(mode);
    let fd = openat(
        dir,
        tmp,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        mode,
    )
    .map_err(err("cannot create", &tmp_path))?;
    let written = (|| {
        // The umask may have taken bits away from the mode asked for.
        fchmod(&fd, mode).map_err(err("cannot chmod", &tmp_path))?;
        let mut f = File::from(fd);
        f.write_all(bytes).map_err(|source| WriteError {
            op: "cannot write",
            path: tmp_path.clone(),
            source,
        })?;
        if fsync {
            f.sync_all().map_err(|source| WriteError {
                op: "cannot fsync",
                path: tmp_path.clone(),
                source,
            })?;
        }
        renameat(dir, tmp, dir, name).map_err(err("cannot rename into place", &dir_path.join(name)))
    })();
    if written.is_err() {
        // On a full filesystem every write would otherwise leave one behind.
        let _ = unlinkat(dir, tmp, UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Opens a directory for [`write_at`] and [`sync_dir`].
pub fn open_dir(path: &Path) -> Result<OwnedFd, WriteError> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("cannot open", path))
}

/// Makes renames in the directory durable.
pub fn sync_dir(dir: OwnedFd, path: &Path) -> Result<(), WriteError> {
    File::from(dir).sync_all().map_err(|source| WriteError {
        op: "cannot fsync directory",
        path: path.to_owned(),
        source,
    })
}

/// Replaces the file at `path` with `bytes` through the temporary file
/// `tmp` beside it, with permissions `mode`; when `durable`, fsyncs the
/// file and then its directory, so the new contents survive a crash.
pub fn write_file(
    path: &Path,
    tmp: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> Result<(), WriteError> {
    let (dir_path, name) = split(path)?;
    let dir = open_dir(dir_path)?;
    write_at(&dir, dir_path, &name, tmp, bytes, mode, durable)?;
    if durable {
        sync_dir(dir, dir_path)?;
    }
    Ok(())
}

/// The directory and file name of `path`.
pub fn split(path: &Path) -> Result<(&Path, String), WriteError> {
    let name = path.file_name().ok_or_else(|| WriteError {
        op: "cannot write",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    Ok((
        dir.unwrap_or(Path::new(".")),
        name.to_string_lossy().into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sidespawn-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_the_file_with_the_mode_asked_for() {
        let d = scratch("replace");
        let p = d.join("f.json");
        std::fs::write(&p, b"old").unwrap();
        write_file(&p, ".f.json.tmp", b"new", 0o640, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn never_writes_through_a_planted_temporary_name() {
        let d = scratch("planted");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        symlink(&victim, d.join(".tmp")).unwrap();
        let dir = open_dir(&d).unwrap();
        let e = write_at(&dir, &d, "f", ".tmp", b"x", 0o600, false).unwrap_err();
        assert_eq!(e.op, "cannot create");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!d.join("f").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
