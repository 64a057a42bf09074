//! Descriptor-relative, no-follow file helpers: every entry of a directory a
//! container can write is reached with `*at` calls relative to a directory
//! descriptor opened without following links, checked with `fstat` (type,
//! link count, owner) before any I/O, so no symlink, FIFO or device a
//! container places is ever followed or opened.

use super::*;

/// Opens `<state_dir>/<sub>`, creating both (0700) if needed, after checking
/// that neither is a link, both are directories owned by root, and neither is
/// group- or world-writable.
pub(super) fn open_state_subdir(
    state_dir: &Path,
    sub: &str,
) -> Result<(OwnedFd, PathBuf), ClaimError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| io_err("cannot create state directory", state_dir, e))?;
    let top = open_private_dir(AT_FDCWD, state_dir, state_dir)?;
    let path = state_dir.join(sub);
    match mkdirat(&top, sub, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(io_err("cannot create", &path, e)),
    }
    let fd = open_private_dir(top.as_fd(), Path::new(sub), &path)?;
    Ok((fd, path))
}

/// Opens a directory of the host's state, refusing what anyone but root
/// could have placed or changed.
pub(super) fn open_private_dir(
    at: BorrowedFd<'_>,
    name: &Path,
    path: &Path,
) -> Result<OwnedFd, ClaimError> {
    let unsafe_dir = |problem: String| ClaimError::UnsafeStateDir {
        path: path.to_owned(),
        problem,
    };
    let fd = open_dir_nofollow(at, name).map_err(|e| match e {
        NotDir::Found(st) => unsafe_dir(format!("is a {}", type_name(st.st_mode & libc::S_IFMT))),
        NotDir::Errno(e) => io_err("cannot open", path, e),
    })?;
    let st = fstat(&fd).map_err(|e| io_err("cannot stat", path, e))?;
    if st.st_uid != 0 {
        return Err(unsafe_dir(format!("is owned by uid {}", st.st_uid)));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is group- or world-writable (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// Why [`open_dir_nofollow`] failed.
pub(super) enum NotDir {
    /// Something other than a directory is there (a link, a file...).
    Found(Box<FileStat>),
    Errno(Errno),
}

/// Opens a directory without following a link in its last component.
/// Opens an absolute directory path one component at a time, never
/// following a link; with `create`, missing components are made (0755).
pub(super) fn open_root_nofollow(root: &Path, create: bool) -> Result<OwnedFd, ClaimError> {
    use std::path::Component;
    if !root.is_absolute() {
        return Err(io_err(
            "queue_root must be an absolute path:",
            root,
            Errno::EINVAL,
        ));
    }
    let mut cur = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("cannot open", Path::new("/"), e))?;
    let mut so_far = PathBuf::from("/");
    for comp in root.components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => Path::new(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io_err(
                    "queue_root must not contain `..`:",
                    root,
                    Errno::EINVAL,
                ));
            }
        };
        so_far.push(name);
        if create {
            match nix::sys::stat::mkdirat(&cur, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err("cannot create queue root", &so_far, e)),
            }
        }
        cur = match open_dir_nofollow(cur.as_fd(), name) {
            Ok(fd) => fd,
            Err(NotDir::Found(st)) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                return Err(ClaimError::Symlink { path: so_far });
            }
            Err(NotDir::Found(_)) => {
                return Err(ClaimError::WrongType {
                    path: so_far,
                    found: "file",
                    expected: "directory",
                });
            }
            Err(NotDir::Errno(Errno::ENOENT)) => return Err(ClaimError::NoQueueDir(so_far)),
            Err(NotDir::Errno(e)) => return Err(io_err("cannot open queue root", &so_far, e)),
        };
    }
    Ok(cur)
}

pub(super) fn open_dir_nofollow(at: BorrowedFd<'_>, name: &Path) -> Result<OwnedFd, NotDir> {
    openat(
        at,
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // Linux answers ENOTDIR, not ELOOP, for a link opened O_DIRECTORY;
        // look at what is there to say which.
        Errno::ELOOP | Errno::ENOTDIR => match fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => NotDir::Found(Box::new(st)),
            _ => NotDir::Errno(e),
        },
        e => NotDir::Errno(e),
    })
}

/// What an entry of the queue directory must be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    File,
    Dir,
}

/// Refuses an entry of the shared directory that is a link, of the wrong
/// type, hard-linked (files) or owned by anyone but `owner`.
pub(super) fn check_entry(
    st: &FileStat,
    path: &Path,
    expect: Expect,
    owner: u32,
) -> Result<(), ClaimError> {
    let found = st.st_mode & libc::S_IFMT;
    let (want, expected) = match expect {
        Expect::File => (libc::S_IFREG, "regular file"),
        Expect::Dir => (libc::S_IFDIR, "directory"),
    };
    if found == libc::S_IFLNK {
        return Err(ClaimError::Symlink {
            path: path.to_owned(),
        });
    }
    if found != want {
        return Err(ClaimError::WrongType {
            path: path.to_owned(),
            found: type_name(found),
            expected,
        });
    }
    // A directory's link count is its subdirectories, not aliases.
    if expect == Expect::File && st.st_nlink != 1 {
        return Err(ClaimError::HardLinked {
            path: path.to_owned(),
            links: st.st_nlink,
        });
    }
    if st.st_uid != owner {
        return Err(ClaimError::WrongOwner {
            path: path.to_owned(),
            uid: st.st_uid,
            expected: owner,
        });
    }
    Ok(())
}

pub(super) fn type_name(fmt: libc::mode_t) -> &'static str {
    match fmt {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

/// Opens a subdirectory of the shared directory without following a link,
/// naming what is there instead when it is not a directory.
pub(super) fn open_dir_at(dir: &OwnedFd, name: &str, path: &Path) -> Result<OwnedFd, ClaimError> {
    open_dir_nofollow(dir.as_fd(), Path::new(name)).map_err(|e| match e {
        // Its type is in question, not its owner: pass its own uid.
        NotDir::Found(st) => check_entry(&st, path, Expect::Dir, st.st_uid)
            .err()
            .unwrap_or_else(|| io_err("cannot open", path, Errno::ENOTDIR)),
        NotDir::Errno(e) => io_err("cannot open", path, e),
    })
}

/// Makes a directory if missing, given to `owner` with mode 0755 exactly:
/// mkdirat's mode goes through the umask, and the agents' wrappers must be
/// able to use it.
pub(super) fn make_dir_at(
    dir: &OwnedFd,
    name: &str,
    path: &Path,
    owner: u32,
) -> Result<(), ClaimError> {
    match mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(io_err("cannot create", path, e)),
    }
    let fd = open_dir_at(dir, name, path)?;
    fchown(&fd, Some(Uid::from_raw(owner)), None).map_err(|e| io_err("cannot chown", path, e))?;
    fchmod(&fd, Mode::from_bits_truncate(0o755)).map_err(|e| io_err("cannot chmod", path, e))
}

pub(super) fn file_size(file: &File, path: &Path) -> Result<u64, ClaimError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| io_err("cannot stat", path, e))
}

pub(super) fn mtime(st: &FileStat) -> SystemTime {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_file_types() {
        assert_eq!(type_name(libc::S_IFIFO), "FIFO");
        assert_eq!(type_name(libc::S_IFCHR), "character device");
        assert_eq!(type_name(libc::S_IFLNK), "symlink");
    }
}
