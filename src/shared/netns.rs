//! Network namespace identity.
//!
//! The wrapper finds the name of the namespace it runs in exactly like
//! `ip netns identify`: it compares (device, inode) of `/proc/self/ns/net`
//! with entries of the netns directory. It never guesses: no match is an
//! error. A busy node has thousands of entries, and stat-ing each one made a
//! start request cost twice an exec; so the names Neutron would give the
//! namespace of this request (its `PROCESS_TAG` is `<service>-<id>`, the
//! namespace `qdhcp-<id>`, `qrouter-<id>`, ...) are compared first, by the
//! same (device, inode) test, and only when none matches is every entry
//! compared. A candidate is a name the kernel confirms, never a guess, so the
//! record (name and inode) and what the host verifies are unchanged. The host re-checks a recorded namespace right before it starts a
//! sidecar: the name must still be a namespace mount with the recorded inode,
//! so a namespace deleted and recreated under the same name is refused, and
//! the namespace must be a network namespace (the kernel says which type an
//! nsfs file is), so a bind mount of a UTS or mount namespace is refused
//! before podman could leave a half-created container behind.
//!
//! The host's seam over these checks, which the planner and the executor
//! see, is [`crate::host::namespaces`].

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::shared::record::{MAX_NETNS_LEN, NetnsRef, is_safe_name};

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// `NS_GET_NSTYPE` from linux/nsfs.h, `_IO(0xb7, 0x3)`: asks an nsfs file
/// descriptor which type of namespace it refers to (Linux 4.11+).
const NS_GET_NSTYPE: nix::libc::Ioctl = 0xb703;

/// Why a namespace could not be identified or verified.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot stat {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot read the netns directory {path}: {source} (mount the host's /run/netns into the container with `-v /run/netns:/run/netns:shared`)"
    )]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {name:?} does not exist under {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("{path} is not a network namespace mount")]
    NotNamespace { path: PathBuf },
    #[error(
        "network namespace {name:?} was replaced since the request (inode {found}, request had {expected})"
    )]
    InodeMismatch {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{path} is a {found} namespace, not a network namespace (mount a network namespace there, e.g. with `ip netns add`)"
    )]
    NotNetwork { path: PathBuf, found: String },
    #[error("invalid network namespace name {0:?}")]
    BadName(String),
}

/// The name of a namespace type as `/proc/PID/ns/` spells it.
fn nstype_name(t: i32) -> String {
    use nix::libc::{
        CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
        CLONE_NEWUTS,
    };
    // CLONE_NEWTIME, not in every libc crate version.
    const CLONE_NEWTIME: i32 = 0x80;
    match t {
        CLONE_NEWNET => "net".into(),
        CLONE_NEWUTS => "uts".into(),
        CLONE_NEWNS => "mnt".into(),
        CLONE_NEWIPC => "ipc".into(),
        CLONE_NEWPID => "pid".into(),
        CLONE_NEWUSER => "user".into(),
        CLONE_NEWCGROUP => "cgroup".into(),
        CLONE_NEWTIME => "time".into(),
        other => format!("unknown (type {other:#x})"),
    }
}

/// Asks the kernel which namespace type the nsfs file at `path` is, through
/// a descriptor of the file itself: `O_PATH` descriptors refuse ioctls, so
/// it is opened for reading, never following a link, and non-blocking (the
/// caller has checked it is an nsfs file; this only guards the race with an
/// entry swapped for a FIFO). Returns the descriptor's (dev, ino) too, so
/// the caller can check it opened the entry it examined.
fn namespace_type(path: &Path) -> Result<(i32, u64, u64), NetnsError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Stat {
            path: path.to_owned(),
            source,
        })?;
    let md = file.metadata().map_err(|source| NetnsError::Stat {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns an int; the
    // descriptor is owned by `file`, open for the whole call.
    let t = unsafe { nix::libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if t < 0 {
        return Err(NetnsError::Stat {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((t, md.dev(), md.ino()))
}

/// The prefixes Neutron's agents name their namespaces with, followed by the
/// id that also ends the `PROCESS_TAG` of the processes they run there
/// (`qdhcp-<network>` for `dnsmasq-<network>` and `haproxy-<network>`,
/// `qrouter-<router>` for `haproxy-`, `keepalived-` and `radvd-<router>`,
/// `ovnmeta-<network>`, `snat-<router>`). Only an order of comparison: any
/// other name is still found, by the scan.
pub const CANDIDATE_PREFIXES: &[&str] = &["qdhcp-", "qrouter-", "ovnmeta-", "snat-"];

/// The names to compare before scanning, from a `PROCESS_TAG` of the form
/// `<service>-<id>`: each of [`CANDIDATE_PREFIXES`] followed by `<id>`. A tag
/// of another form gives none.
pub fn candidates_from_tag(tag: &str) -> Vec<String> {
    let Some((_, id)) = tag.split_once('-') else {
        return Vec::new();
    };
    if id.is_empty() {
        return Vec::new();
    }
    CANDIDATE_PREFIXES
        .iter()
        .map(|p| format!("{p}{id}"))
        .filter(|n| is_safe_name(n, MAX_NETNS_LEN))
        .collect()
}

/// Finds the named namespace that `/proc/self/ns/net` belongs to, comparing
/// `candidates` first (see the module's notes). `Ok(None)` means the process
/// is in no named namespace (for example the host network).
pub fn identify(netns_dir: &Path, candidates: &[String]) -> Result<Option<NetnsRef>, NetnsError> {
    identify_ns(Path::new("/proc/self/ns/net"), netns_dir, candidates)
}

/// [`identify`] for a given namespace file.
pub fn identify_ns(
    ns_file: &Path,
    netns_dir: &Path,
    candidates: &[String],
) -> Result<Option<NetnsRef>, NetnsError> {
    let me = std::fs::metadata(ns_file).map_err(|source| NetnsError::Stat {
        path: ns_file.to_owned(),
        source,
    })?;
    // One stat per candidate, each absent name a failed lookup: O(1) in the
    // size of the directory.
    for name in candidates {
        if !is_safe_name(name, MAX_NETNS_LEN) {
            continue;
        }
        if let Ok(md) = std::fs::metadata(netns_dir.join(name))
            && md.dev() == me.dev()
            && md.ino() == me.ino()
        {
            return Ok(Some(NetnsRef {
                name: name.clone(),
                dev: md.dev(),
                ino: md.ino(),
            }));
        }
    }
    let entries = match std::fs::read_dir(netns_dir) {
        Ok(e) => e,
        // No netns directory at all: certainly not in a named namespace.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetnsError::ReadDir {
                path: netns_dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    // Deterministic when two names are mounts of the same namespace.
    names.sort();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if !is_safe_name(name, MAX_NETNS_LEN) {
            continue;
        }
        // Like `ip netns identify`, follow the entry: it is a bind mount of
        // an nsfs file, and stat reports the namespace behind it.
        let Ok(md) = std::fs::metadata(netns_dir.join(name)) else {
            continue;
        };
        if md.dev() == me.dev() && md.ino() == me.ino() {
            return Ok(Some(NetnsRef {
                name: name.to_owned(),
                dev: md.dev(),
                ino: md.ino(),
            }));
        }
    }
    Ok(None)
}

/// Checks, right before use, that `ns` still names a namespace mount under
/// `netns_dir` with the recorded inode. Returns the path to hand to podman.
pub fn verify(netns_dir: &Path, ns: &NetnsRef) -> Result<PathBuf, NetnsError> {
    if !is_safe_name(&ns.name, MAX_NETNS_LEN) {
        return Err(NetnsError::BadName(ns.name.clone()));
    }
    let path = netns_dir.join(OsStr::new(&ns.name));
    // lstat: the entry itself must be the mount, not a link a container made.
    let md = match std::fs::symlink_metadata(&path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetnsError::Missing {
                name: ns.name.clone(),
                dir: netns_dir.to_owned(),
            });
        }
        Err(source) => return Err(NetnsError::Stat { path, source }),
    };
    let fs = nix::sys::statfs::statfs(&path).map_err(|e| NetnsError::Stat {
        path: path.clone(),
        source: e.into(),
    })?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC || !md.file_type().is_file() {
        return Err(NetnsError::NotNamespace { path });
    }
    if md.ino() != ns.ino {
        return Err(NetnsError::InodeMismatch {
            name: ns.name.clone(),
            expected: ns.ino,
            found: md.ino(),
        });
    }
    // Any namespace can be bind-mounted here, and podman would only find
    // out after creating the container.
    let (t, dev, ino) = namespace_type(&path)?;
    if (dev, ino) != (md.dev(), md.ino()) {
        // Swapped between the lstat and the open.
        return Err(NetnsError::InodeMismatch {
            name: ns.name.clone(),
            expected: ns.ino,
            found: ino,
        });
    }
    if t != nix::libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetwork {
            path,
            found: nstype_name(t),
        });
    }
    Ok(path)
}

/// Whether `name` is currently a namespace mount under `netns_dir`, and its
/// inode. Used to find sidecars whose namespace went away.
pub fn current_inode(netns_dir: &Path, name: &str) -> Option<u64> {
    if !is_safe_name(name, MAX_NETNS_LEN) {
        return None;
    }
    let path = netns_dir.join(name);
    let md = std::fs::symlink_metadata(&path).ok()?;
    let fs = nix::sys::statfs::statfs(&path).ok()?;
    (fs.filesystem_type().0 as i64 == NSFS_MAGIC && md.file_type().is_file()).then(|| md.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_types_are_named_as_proc_names_them() {
        assert_eq!(nstype_name(nix::libc::CLONE_NEWNET), "net");
        assert_eq!(nstype_name(nix::libc::CLONE_NEWUTS), "uts");
        assert_eq!(nstype_name(nix::libc::CLONE_NEWNS), "mnt");
        assert_eq!(nstype_name(0x4), "unknown (type 0x4)");
    }

    #[test]
    fn identify_without_netns_dir_is_none() {
        let r = identify(Path::new("/nonexistent/sidespawn-netns"), &[]).unwrap();
        assert_eq!(r, None);
    }

    #[test]
    fn identify_matches_by_dev_and_ino() {
        // A directory with a hard link to... not possible across fs; instead
        // point the "namespace file" at a plain file and list a dir that
        // holds it: the comparison is (dev, ino), whatever the file is.
        let dir = std::env::temp_dir().join(format!("sidespawn-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("qdhcp-a"), b"").unwrap();
        std::fs::write(dir.join("other"), b"").unwrap();
        let found = identify_ns(&dir.join("qdhcp-a"), &dir, &[])
            .unwrap()
            .unwrap();
        assert_eq!(found.name, "qdhcp-a");
        let none = identify_ns(Path::new("/proc/self/ns/net"), &dir, &[]).unwrap();
        assert_eq!(none, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn candidates_come_from_the_tag_and_only_confirmed_ones_are_taken() {
        assert_eq!(
            candidates_from_tag("dnsmasq-3f6a"),
            ["qdhcp-3f6a", "qrouter-3f6a", "ovnmeta-3f6a", "snat-3f6a"]
        );
        assert!(candidates_from_tag("dnsmasq").is_empty());
        assert!(candidates_from_tag("dnsmasq-").is_empty());
        // A tag cannot steer the name out of the directory.
        assert!(candidates_from_tag("x-../../etc").is_empty());

        let dir = std::env::temp_dir().join(format!("sidespawn-netnsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("qdhcp-a"), b"").unwrap();
        std::fs::write(dir.join("qrouter-a"), b"").unwrap();
        let me = dir.join("qrouter-a");
        // A candidate that exists but is another namespace is passed over.
        let found = identify_ns(&me, &dir, &candidates_from_tag("haproxy-a"))
            .unwrap()
            .unwrap();
        assert_eq!(found.name, "qrouter-a");
        // No candidate matches: the scan still finds the namespace.
        let found = identify_ns(&me, &dir, &candidates_from_tag("haproxy-b"))
            .unwrap()
            .unwrap();
        assert_eq!(found.name, "qrouter-a");
        // A name outside the directory is never a candidate, even when it
        // is the namespace file itself.
        let outside = dir.with_extension("outside");
        std::fs::write(&outside, b"").unwrap();
        let escape = format!("../{}", outside.file_name().unwrap().to_str().unwrap());
        let none = identify_ns(&outside, &dir, &[escape]).unwrap();
        assert_eq!(none, None);
        std::fs::remove_file(&outside).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_refuses_plain_files_and_bad_names() {
        let dir = std::env::temp_dir().join(format!("sidespawn-netnsv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("qdhcp-a"), b"").unwrap();
        let ino = std::fs::metadata(dir.join("qdhcp-a")).unwrap().ino();
        let r = NetnsRef {
            name: "qdhcp-a".into(),
            dev: 0,
            ino,
        };
        assert!(matches!(
            verify(&dir, &r),
            Err(NetnsError::NotNamespace { .. })
        ));
        let missing = NetnsRef {
            name: "qdhcp-b".into(),
            dev: 0,
            ino,
        };
        assert!(matches!(
            verify(&dir, &missing),
            Err(NetnsError::Missing { .. })
        ));
        let bad = NetnsRef {
            name: "../etc".into(),
            dev: 0,
            ino,
        };
        assert!(matches!(verify(&dir, &bad), Err(NetnsError::BadName(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
