//! `sidespawn-netns-exec NSFILE --drop=CAPS -- PROGRAM [ARGS...]`: joins the
//! network namespace `NSFILE` (a bind mount of `/run/netns/<name>`), drops
//! the capabilities `CAPS` (those the engine granted only so this could
//! happen) from every set, checks they are gone, and execs `PROGRAM` with
//! `ARGS` byte for byte. The daemon therefore runs as the container's main
//! process (same pid), in the namespace, with exactly the profile's
//! capabilities.
//!
//! Step by step:
//! 1. open `NSFILE` read-only, `O_CLOEXEC`, and `setns(fd, CLONE_NEWNET)`
//!    (the kernel refuses a file that is not a network namespace);
//! 2. for each capability to drop: lower it in the ambient set, drop it
//!    from the bounding set (`PR_CAPBSET_DROP`, which needs `CAP_SETPCAP`,
//!    so `SETPCAP` is dropped last when it is in the list), then clear it
//!    from the permitted, effective and inheritable sets (`capset`);
//! 3. read every set back (`capget`, `PR_CAPBSET_READ`,
//!    `PR_CAP_AMBIENT_IS_SET`) and refuse to go on if one still holds it:
//!    for root, exec gives back the bounding set's capabilities, so a drop
//!    that did not take would hand the daemon `CAP_SYS_ADMIN`;
//! 4. `execvp(PROGRAM)`.
//!
//! Any failure prints one line naming the step and exits 127 before the
//! daemon runs; the engine records the container as exited with it.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use nix::libc;

/// The `argv[0]` the static wrapper answers to as this helper.
pub const NAME: &str = "sidespawn-netns-exec";

/// Exit code of a failure before the daemon runs (as a shell's "cannot
/// execute").
const EXIT_FAILED: i32 = 127;

/// The capabilities the helper knows how to drop: those an engine adds so
/// that it can run. Anything else on `--drop=` is a usage error.
const KNOWN: [(&str, u32); 2] = [("SYS_ADMIN", 21), ("SETPCAP", 8)];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs the helper; returns only on failure (the exit code).
pub fn run(argv: Vec<OsString>) -> i32 {
    match run_inner(argv) {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("{NAME}: {message}");
            EXIT_FAILED
        }
    }
}

enum Never {}

fn run_inner(argv: Vec<OsString>) -> Result<Never, String> {
    let usage =
        || format!("usage: {NAME} NSFILE --drop=[SYS_ADMIN][,SETPCAP] -- PROGRAM [ARGS...]");
    let nsfile = argv.get(1).ok_or_else(usage)?;
    let drop_list = argv
        .get(2)
        .and_then(|a| a.to_str())
        .and_then(|a| a.strip_prefix("--drop="))
        .ok_or_else(usage)?;
    if argv.get(3).and_then(|a| a.to_str()) != Some("--") {
        return Err(usage());
    }
    let program = argv.get(4).ok_or_else(usage)?;
    let caps = parse_caps(drop_list)?;

    let ns = std::fs::File::open(nsfile).map_err(|e| {
        format!(
            "cannot open the namespace {}: {e}",
            nsfile.to_string_lossy()
        )
    })?;
    // SAFETY: setns takes a file descriptor this function owns for the whole
    // call and a constant flag; it changes only this thread's namespace (the
    // process has one thread here: the wrapper starts none).
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "cannot join the network namespace {}: {e} (the container needs CAP_SYS_ADMIN for this, and the file must be a network namespace)",
            nsfile.to_string_lossy()
        ));
    }
    drop_caps(&caps)?;
    verify_dropped(&caps)?;
    drop(ns);

    let e = std::process::Command::new(program)
        .arg0(program)
        .args(&argv[5..])
        .exec();
    Err(format!("cannot run {}: {e}", program.to_string_lossy()))
}

/// `SYS_ADMIN,SETPCAP` → their numbers, `SETPCAP` last (it is needed to
/// drop the others from the bounding set). Empty: nothing to drop.
fn parse_caps(list: &str) -> Result<Vec<u32>, String> {
    let mut caps = Vec::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        let n = KNOWN
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, n)| *n)
            .ok_or_else(|| {
                format!("--drop: unknown capability {name:?} (known: SYS_ADMIN, SETPCAP)")
            })?;
        if !caps.contains(&n) {
            caps.push(n);
        }
    }
    caps.sort_by_key(|c| *c == 8);
    Ok(caps)
}

fn capget() -> Result<[CapData; 2], String> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (the version-3 layout, matching the
    // header's version) into `d`, which is exactly that size, and reads `h`.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    Ok(d)
}

fn drop_caps(caps: &[u32]) -> Result<(), String> {
    for &c in caps {
        let c = libc::c_ulong::from(c);
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_LOWER, c, 0, 0) };
        // EINVAL: a kernel without ambient capabilities, nothing to lower.
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(format!(
                "lowering capability {c} from the ambient set: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c, 0, 0, 0) } != 0 {
            return Err(format!(
                "dropping capability {c} from the bounding set: {} (the container needs CAP_SETPCAP until the helper has dropped it)",
                std::io::Error::last_os_error()
            ));
        }
    }
    let mut d = capget()?;
    for &c in caps {
        let (i, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        d[i].effective &= !bit;
        d[i].permitted &= !bit;
        d[i].inheritable &= !bit;
    }
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData of the version-3
    // layout, both alive and correctly sized for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn verify_dropped(caps: &[u32]) -> Result<(), String> {
    let d = capget()?;
    for &c in caps {
        let (i, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        let cu = libc::c_ulong::from(c);
        // SAFETY: prctl with integer arguments only.
        let bounding = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cu, 0, 0, 0) };
        // SAFETY: as above.
        let ambient =
            unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, cu, 0, 0) };
        let held = d[i].effective & bit != 0
            || d[i].permitted & bit != 0
            || d[i].inheritable & bit != 0
            || bounding != 0
            || ambient == 1;
        if held {
            return Err(format!(
                "capability {c} is still held after dropping it (bounding {bounding}, ambient {ambient}); not starting the daemon with it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_with_setpcap_last() {
        assert_eq!(parse_caps("SETPCAP,SYS_ADMIN").unwrap(), [21, 8]);
        assert_eq!(parse_caps("").unwrap(), Vec::<u32>::new());
        assert!(parse_caps("NET_ADMIN").is_err());
    }

    #[test]
    fn bad_usage_fails_before_anything() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(run(a(&[NAME])), EXIT_FAILED);
        assert_eq!(run(a(&[NAME, "/x", "--keep", "--", "p"])), EXIT_FAILED);
        assert_eq!(run(a(&[NAME, "/x", "--drop=", "p"])), EXIT_FAILED);
        // A file that is not a namespace: setns refuses, nothing runs.
        assert_eq!(
            run(a(&[NAME, "/dev/null", "--drop=", "--", "true"])),
            EXIT_FAILED
        );
    }
}
