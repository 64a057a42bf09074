//! What the benchmark creates on the host — temporary directories, network
//! namespaces, containers — and how it is always removed again.
//!
//! Namespaces, container labels and directories that outlive their
//! creator's scope are entered in a process-wide registry before they are
//! created. The guards' `Drop` and a panic hook drain that
//! registry, so the host is left clean after a normal end and after a panic
//! (whatever the panic strategy: the hook runs before unwinding or
//! aborting). On SIGINT/SIGTERM/SIGHUP a thread marks the run interrupted:
//! every helper that starts a process then fails, so the main thread stops
//! at its next step and cleans up on its way out — cleaning up from the
//! signal thread at once would race with a `podman run` still being
//! started. A second signal, or a main thread that does not finish within
//! [`INTERRUPT_GRACE`], makes the signal thread clean up and exit itself.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Namespaces still to delete.
static NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Labels (`key=value`) whose containers are still to remove.
static LABELS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Directories kept across child processes, still to remove.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set by the first SIGINT/SIGTERM/SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// How long the main thread gets to stop and clean up after a signal.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Fails once the run was interrupted; called before starting any process.
pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".to_owned());
    }
    Ok(())
}

pub fn was_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Cleanup runs from a panic hook too: a poisoned list is still a list.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs the panic hook and the signal thread. Call first in `main`,
/// before any other thread exists, so that every thread inherits the
/// blocked signal mask and only the cleanup thread receives them. Children
/// are unaffected: std resets the signal mask of every process it spawns.
pub fn install_cleanup_handlers() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        cleanup_everything();
    }));
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        eprintln!("warning: cannot block SIGINT/SIGTERM; an interrupted run may leave namespaces");
        return;
    }
    std::thread::spawn(move || {
        loop {
            let Ok(sig) = set.wait() else { continue };
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsync bench: caught {sig:?} again; removing what it created now");
                cleanup_everything();
                std::process::exit(130);
            }
            eprintln!(
                "\nsync bench: caught {sig:?}; stopping after the current step and removing what it created"
            );
            std::thread::spawn(|| {
                std::thread::sleep(INTERRUPT_GRACE);
                eprintln!(
                    "sync bench: still running {INTERRUPT_GRACE:?} after the signal; cleaning up"
                );
                cleanup_everything();
                std::process::exit(130);
            });
        }
    });
}

/// Removes every registered container and namespace. Idempotent.
pub fn cleanup_everything() {
    let labels: Vec<String> = lock(&LABELS).drain(..).collect();
    for label in labels {
        if let Err(e) = remove_containers(&label) {
            eprintln!("warning: {e}");
        }
    }
    remove_adopted_dirs();
    let names: Vec<String> = lock(&NETNS).drain(..).collect();
    delete_netns(&names);
}

/// Registers a directory for [`remove_adopted_dirs`] (or the cleanup after a
/// panic or signal) to remove.
pub fn adopt_dir(path: PathBuf) {
    lock(&DIRS).push(path);
}

/// Removes every adopted directory.
pub fn remove_adopted_dirs() {
    let dirs: Vec<PathBuf> = lock(&DIRS).drain(..).collect();
    for d in dirs {
        remove_dir(&d);
    }
}

/// Removes one adopted directory now (and forgets it).
pub fn remove_adopted_dir(path: &Path) {
    lock(&DIRS).retain(|d| d != path);
    remove_dir(path);
}

/// Unmounts whatever is mounted below `d` (a podman storage's overlay
/// mounts), deepest first, then removes the tree.
fn remove_dir(d: &Path) {
    let mut mounts: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(d))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Err(e) = fs::remove_dir_all(d)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: could not remove {}: {e}", d.display());
    }
}

/// Runs a cleanup command, discarding its output; true when it succeeded.
fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "{prefix}-{}-{n}-{:08x}",
        std::process::id(),
        t & 0xffff_ffff
    )
}

/// A fresh directory under /tmp (the same disk as /var/lib, where the real queues and state
/// live, so fsyncs cost what they cost there), removed with its contents on drop: the tests'
/// own.
pub use crate::common::TempDir;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first executable `name` on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| fs::metadata(c).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// The crate root (benches run with it as their working directory, but say
/// so explicitly).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The podman configuration for this VM: `$CONTAINERS_CONF`, else the
/// test-only one in `tests/scripts/` (runc, ulimits this VM can grant).
pub fn containers_conf() -> PathBuf {
    std::env::var_os("CONTAINERS_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/scripts/containers.conf"))
}

/// `podman` with [`containers_conf`].
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

/// Runs `cmd`, failing with its stderr unless it exits 0; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    check_interrupted()?;
    run_always(cmd)
}

/// [`run`], even after an interruption: for the cleanup itself.
fn run_always(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the containers carrying `label`, in the given `podman ps`
/// status (`None`: any).
pub fn containers_with(label: &str, status: Option<&str>) -> Result<Vec<String>, String> {
    let mut cmd = podman();
    cmd.args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label={label}"));
    if let Some(s) = status {
        cmd.args(["--filter", &format!("status={s}")]);
    }
    Ok(run_always(&mut cmd)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Removes every container carrying `label` (one `podman rm` for all).
pub fn remove_containers(label: &str) -> Result<usize, String> {
    let names = containers_with(label, None)?;
    if names.is_empty() {
        return Ok(0);
    }
    run_always(podman().args(["rm", "-f", "-t", "0"]).args(&names))?;
    let left = containers_with(label, None)?;
    if !left.is_empty() {
        return Err(format!(
            "containers with {label} still exist after podman rm: {left:?}"
        ));
    }
    Ok(names.len())
}

/// Owns the containers of one label: removes them on drop.
pub struct LabelGuard {
    label: String,
}

impl LabelGuard {
    pub fn new(label: String) -> LabelGuard {
        lock(&LABELS).push(label.clone());
        LabelGuard { label }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        let mine = {
            let mut l = lock(&LABELS);
            let before = l.len();
            l.retain(|x| x != &self.label);
            before != l.len()
        };
        if mine && let Err(e) = remove_containers(&self.label) {
            eprintln!("warning: {e}");
        }
    }
}

/// A set of named network namespaces, all deleted on drop.
pub struct NetnsSet {
    pub names: Vec<String>,
}

impl NetnsSet {
    /// Creates each name. Each name is registered for cleanup before it is
    /// created, so a half-made set is removed too. Thousands of names go
    /// through `ip -batch` (one process per [`NETNS_BATCH`] names).
    pub fn create(names: Vec<String>) -> Result<NetnsSet, String> {
        let mut set = NetnsSet { names: Vec::new() };
        for chunk in names.chunks(NETNS_BATCH) {
            check_interrupted()?;
            lock(&NETNS).extend(chunk.iter().cloned());
            set.names.extend(chunk.iter().cloned());
            if chunk.len() == 1 {
                run(Command::new("ip").args(["netns", "add", &chunk[0]]))?;
            } else {
                ip_batch("add", chunk)?;
            }
        }
        Ok(set)
    }
}

/// Names per `ip -batch` process.
const NETNS_BATCH: usize = 500;

/// `ip -batch` of `netns VERB NAME` for each name; `-force` goes on past a
/// failing line (a name already gone), so one batch deletes all the rest.
fn ip_batch(verb: &str, names: &[String]) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip -batch: {e}"))?;
    let mut input = String::new();
    for n in names {
        input.push_str(&format!("netns {verb} {n}\n"));
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("ip -batch: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch netns {verb} ({} names): {}",
            names.len(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the names, in batches; says which could not be deleted.
fn delete_netns(names: &[String]) {
    for chunk in names.chunks(NETNS_BATCH) {
        if chunk.len() > 1 && ip_batch("delete", chunk).is_ok() {
            continue;
        }
        for name in chunk {
            if Path::new("/run/netns").join(name).exists()
                && !quiet(Command::new("ip").args(["netns", "delete", name]))
            {
                eprintln!("warning: could not delete network namespace {name}");
            }
        }
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        let mine: Vec<String> = {
            let mut registered = lock(&NETNS);
            let set: std::collections::HashSet<&String> = self.names.iter().collect();
            let before: Vec<String> = registered.drain(..).collect();
            let (mine, others): (Vec<String>, Vec<String>) =
                before.into_iter().partition(|n| set.contains(n));
            *registered = others;
            mine
        };
        delete_netns(&mine);
    }
}

/// `/proc/loadavg`'s first three fields, to show how busy the machine was.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
