//! Helpers shared by the integration tests (each `tests/*.rs` does `mod common;`).
//!
//! Everything a test creates on the host — network namespaces, veth pairs, containers,
//! temporary directories, tmpfs mounts — is owned by a guard whose `Drop` removes it, so the
//! host is left clean even when an assertion panics halfway through a test. Names are unique
//! per process and call, so concurrent runs (two work trees, two test threads) never collide.
//!
//! Tests that need root, podman and `ip` start with
//! `if !common::privileged("what it checks") { return; }`: they say loudly that they were
//! skipped, and `tests/run.sh` sets `SIDESPAWN_REQUIRE_PRIVILEGED=1` so that there a test that
//! cannot run fails instead. [`gate`] is that one decision for every test: [`privileged_root`]
//! for tests that need only root, [`skip`] for a need the test found missing itself (a user
//! manager, a tool).
//!
//! The host of the tests that run the real `sidespawn` against real podman (queue root, state
//! directory, configurations, run label) is [`podman_host::PodmanHost`]; the fake podman's host
//! is [`fake_host::FakeHost`].
//!
//! The only waiting allowed is awaiting a condition: [`wait_until`], and the deadlines that
//! [`output`] puts on every command it runs.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod docker_host;
pub mod fake_host;
pub mod podman_host;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Set to `1` by `tests/run.sh`: a privileged test that cannot run panics instead of skipping.
pub const REQUIRE_PRIVILEGED_ENV: &str = "SIDESPAWN_REQUIRE_PRIVILEGED";
/// Path of the statically linked wrapper, set by `tests/run.sh`.
pub const STATIC_WRAPPER_ENV: &str = "SIDESPAWN_STATIC_WRAPPER";
/// Where the wrapper looks for its configuration file.
pub const WRAPPER_CONFIG_ENV: &str = "SIDESPAWN_WRAPPER_CONFIG";
/// Where `ip netns add` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// How long [`run`] and [`output`] let a command take before killing it and failing the test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Building the release wrapper from scratch (LTO, one codegen unit) on a 2-core machine.
const STATIC_BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// Polling interval of [`wait_until`] and of the command deadlines.
const POLL: Duration = Duration::from_millis(10);

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when this test can use root, podman and `ip`. Otherwise: panics when
/// `SIDESPAWN_REQUIRE_PRIVILEGED=1`, else prints `SKIPPED (needs root + podman): WHAT` to stderr
/// and returns false.
pub fn privileged(what: &str) -> bool {
    gate(what, PRIVILEGES, &missing_privileges())
}

/// [`privileged`] for tests that need root but neither podman nor `ip`.
pub fn privileged_root(what: &str) -> bool {
    let missing: Vec<String> = missing_privileges()
        .into_iter()
        .filter(|m| m.starts_with("root"))
        .collect();
    gate(what, "root", &missing)
}

/// Reports that `what` cannot run here for want of `needs`, found out by the caller (a user
/// manager that did not start, a tool missing): the same skip or failure as [`privileged`].
pub fn skip(what: &str, needs: &str) {
    gate(what, needs, &[needs.to_owned()]);
}

/// The one privileged gate: true when nothing is `missing`; otherwise a failure under
/// `SIDESPAWN_REQUIRE_PRIVILEGED=1`, else a `SKIPPED (needs NEEDS): WHAT` line and false.
pub fn gate(what: &str, needs: &str, missing: &[String]) -> bool {
    let require = std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1");
    match verdict(what, needs, missing, require) {
        Verdict::Run => true,
        Verdict::Fail(message) => panic!("{message}"),
        Verdict::Skip(message) => {
            // Straight to the stderr handle, in one write: libtest captures `eprintln!` of
            // passing tests, and a skip must be seen without its own output splitting the line.
            let _ = std::io::stderr().write_all(format!("{message}\n").as_bytes());
            false
        }
    }
}

/// What [`privileged`] checks, as its skip line names it.
const PRIVILEGES: &str = "root + podman";

/// What [`gate`] does.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    Skip(String),
    Fail(String),
}

/// The decision behind [`privileged`], separate so that it can be tested without root.
pub fn privilege_verdict(what: &str, missing: &[String], require: bool) -> Verdict {
    verdict(what, PRIVILEGES, missing, require)
}

/// The decision behind [`gate`]: `needs` is what the test needs in general, `missing` what of
/// it this machine lacks (not repeated when it says no more than `needs`).
pub fn verdict(what: &str, needs: &str, missing: &[String], require: bool) -> Verdict {
    if missing.is_empty() {
        return Verdict::Run;
    }
    let missing = missing.join(", ");
    if require {
        Verdict::Fail(format!(
            "{what}: cannot run, missing {missing}; {REQUIRE_PRIVILEGED_ENV}=1 forbids skipping \
             (run tests/run.sh as root)"
        ))
    } else if missing == needs {
        Verdict::Skip(format!("SKIPPED (needs {needs}): {what}"))
    } else {
        Verdict::Skip(format!(
            "SKIPPED (needs {needs}): {what} (missing {missing})"
        ))
    }
}

/// What this process lacks to run the privileged tests (empty when nothing).
pub fn missing_privileges() -> Vec<String> {
    let mut missing = Vec::new();
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        missing.push(format!("root (running as uid {euid})"));
    }
    for tool in ["podman", "ip"] {
        if find_in_path(tool).is_none() {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    missing
}

/// The first executable called `name` in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
        })
}

/// A name unique to this process and call: `PREFIX-PID-COUNTER-TIME`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    // The low 32 bits of the time tell apart runs that reuse a pid.
    format!(
        "{prefix}-{}-{n}-{:08x}",
        std::process::id(),
        micros & 0xffff_ffff
    )
}

/// `N` bytes from `/dev/urandom`.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    bytes
}

/// A random lowercase UUID in the version-4 layout, like Neutron's network ids.
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Runs `cmd` (stdin closed) and returns its output; panics if it cannot be started, or if it
/// has not exited and closed its stdout and stderr within [`COMMAND_TIMEOUT`].
#[track_caller]
pub fn output(cmd: &mut Command) -> Output {
    output_within(cmd, COMMAND_TIMEOUT)
}

/// [`output`] with an explicit deadline. A child that exits while something it started still
/// holds its stdout or stderr fails too: Neutron's agent would hang on exactly that.
#[track_caller]
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)));
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let overdue = |what: &str, stdout: &Capture, stderr: &Capture| -> ! {
        panic!(
            "command {what} after {timeout:?}: {}\nstdout so far:\n{}\nstderr so far:\n{}",
            describe(cmd),
            String::from_utf8_lossy(&stdout.snapshot()),
            String::from_utf8_lossy(&stderr.snapshot()),
        )
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("waiting for {}: {e}", describe(cmd)),
        }
        if Instant::now() >= deadline {
            // Best effort: the test fails either way.
            let _ = child.kill();
            let _ = child.wait();
            overdue("did not exit (killed)", &stdout, &stderr);
        }
        std::thread::sleep(POLL);
    };
    while !(stdout.done() && stderr.done()) {
        if Instant::now() >= deadline {
            overdue(
                "exited but something still holds its stdout/stderr",
                &stdout,
                &stderr,
            );
        }
        std::thread::sleep(POLL);
    }
    Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// Reads one pipe to EOF on its own thread, into a buffer that stays readable meanwhile.
struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Capture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let buffer = Arc::clone(&buffer);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                // A read error ends the capture like EOF; the exit status still decides.
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    lock(&buffer).extend_from_slice(&chunk[..n]);
                }
            })
        });
        Capture { buffer, reader }
    }

    fn done(&self) -> bool {
        self.reader.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn snapshot(&self) -> Vec<u8> {
        lock(&self.buffer).clone()
    }

    fn finish(mut self) -> Vec<u8> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.snapshot()
    }
}

/// Locks a mutex, ignoring poisoning: the data are plain bytes or names, never half-updated.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `cmd`; panics with the command line, exit status, stdout and stderr unless it succeeds.
/// Returns its stdout.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed: {}", explain(cmd, &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command line (with the environment it sets), for messages.
pub fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}

/// Command line, status, stdout and stderr, for a failure message.
pub fn explain(cmd: &Command, out: &Output) -> String {
    format!(
        "{}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `out` ended with exit code `code`, showing everything about it otherwise.
#[track_caller]
pub fn assert_exit(cmd: &Command, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code} from {}",
        explain(cmd, out)
    );
}

/// The pid a daemon wrote to `path`, once it has written one (within 30 s).
pub fn read_pid(path: &Path) -> u32 {
    wait_until(Duration::from_secs(30), "the pid file is written", || {
        std::fs::read_to_string(path).is_ok_and(|s| !s.trim().is_empty())
    });
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Polls `condition` every few milliseconds until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// The podman configuration the tests use: `$CONTAINERS_CONF`, else the test-only one in
/// `tests/scripts/`.
pub fn containers_conf() -> PathBuf {
    std::env::var_os("CONTAINERS_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/scripts/containers.conf"))
}

/// A `podman` command using [`containers_conf`].
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
}

/// The statically linked wrapper: `$SIDESPAWN_STATIC_WRAPPER`, else built once per process
/// into `target/static` (a target dir of its own, so the outer cargo's lock is not in the way).
pub fn static_wrapper() -> PathBuf {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(STATIC_WRAPPER_ENV) {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "{STATIC_WRAPPER_ENV}={} is not a file",
                    path.display()
                );
                return path;
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!("building the statically linked sidespawn-wrapper into target/static");
            let mut build = Command::new(cargo);
            build.current_dir(repo_root()).args([
                "rustc",
                "--release",
                "--bin",
                "sidespawn-wrapper",
                "--target-dir",
                "target/static",
                "--",
                "-C",
                "target-feature=+crt-static",
            ]);
            let out = output_within(&mut build, STATIC_BUILD_TIMEOUT);
            assert!(out.status.success(), "{}", explain(&build, &out));
            repo_root().join("target/static/release/sidespawn-wrapper")
        })
        .clone()
}

/// References of the local test images (see `tests/scripts/build-images.sh`).
#[derive(Debug)]
pub struct Images {
    /// ip, busybox and placeholders to bind-mount the wrapper over.
    pub agent: String,
    /// Debian's dnsmasq.
    pub dnsmasq: String,
    /// Debian's haproxy.
    pub haproxy: String,
    /// Only the static wrapper, at `/usr/sbin/dnsmasq`.
    pub wrapperonly: String,
}

/// Builds the test images once per test process (a no-op when they are up to date).
pub fn ensure_images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let wrapper = static_wrapper();
        let stdout = run(
            Command::new(repo_root().join("tests/scripts/build-images.sh"))
                .arg("--wrapper")
                .arg(&wrapper)
                .env("CONTAINERS_CONF", containers_conf()),
        );
        let refs: HashMap<&str, &str> = stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |key: &str| {
            refs.get(key)
                .unwrap_or_else(|| panic!("build-images.sh printed no {key}=: {stdout}"))
                .to_string()
        };
        Images {
            agent: get("agent"),
            dnsmasq: get("dnsmasq"),
            haproxy: get("haproxy"),
            wrapperonly: get("wrapperonly"),
        }
    })
}

/// A named network namespace (`ip netns add`), deleted on drop with the veths made for it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    veths: Mutex<Vec<String>>,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        run(Command::new("ip").args(["netns", "add", name]));
        Netns {
            name: name.to_owned(),
            veths: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// True while `/run/netns/NAME` is there (not after [`Netns::delete`]).
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(self.path()).is_ok()
    }

    /// The namespace's inode, as `stat /run/netns/NAME` gives it.
    pub fn inode(&self) -> u64 {
        self.metadata().ino()
    }

    /// The device of the namespace file system, as `stat /run/netns/NAME` gives it.
    pub fn dev(&self) -> u64 {
        self.metadata().dev()
    }

    fn metadata(&self) -> fs::Metadata {
        fs::metadata(self.path()).unwrap_or_else(|e| panic!("stat {}: {e}", self.path().display()))
    }

    /// `ip netns exec NAME PROGRAM`; add the program's arguments to it.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip -n NAME ARGS...`, panicking if it fails.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// `ip netns delete NAME` (what Neutron does when a network or router goes away). A
    /// process still in the namespace keeps it alive, but the name is gone.
    pub fn delete(&self) {
        run(Command::new("ip").args(["netns", "delete", &self.name]));
    }

    /// `ip netns add NAME` again after [`Netns::delete`]: a new namespace under the old name.
    pub fn recreate(&self) {
        run(Command::new("ip").args(["netns", "add", &self.name]));
    }

    /// A veth pair with one end in this namespace and the other in `peer`, both down and
    /// without addresses. Returns (this end, peer's end). Removed when `self` drops.
    pub fn veth_pair(&self, peer: &Netns) -> (String, String) {
        // Interface names have at most 15 bytes: random, not derived from the netns name.
        let id: String = random_bytes::<4>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (ours, theirs) = (format!("vs{id}a"), format!("vs{id}b"));
        // Recorded before creation, so that a half-made pair is removed too.
        lock(&self.veths).push(ours.clone());
        run(Command::new("ip").args([
            "link", "add", &ours, "netns", &self.name, "type", "veth", "peer", "name", &theirs,
            "netns", &peer.name,
        ]));
        (ours, theirs)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes its peer, wherever that is.
        for veth in lock(&self.veths).drain(..) {
            let in_ns = quiet(Command::new("ip").args(["-n", &self.name, "link", "del", &veth]));
            if !in_ns {
                quiet(Command::new("ip").args(["link", "del", &veth]));
            }
        }
        // A test may have deleted it already (as Neutron does).
        if self.exists() && !quiet(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Runs a cleanup command, ignoring its output; true when it succeeded. Never panics: it runs
/// from `Drop`, possibly while a failed test unwinds.
pub fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A podman container, removed (`podman rm -f -t 0`) on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// A guard for a container called `name`, which may not exist yet.
    pub fn new(name: &str) -> Container {
        Container {
            name: name.to_owned(),
        }
    }

    /// `podman run -d --name NAME ARGS...` (ARGS: options, image, command). The guard exists
    /// before podman runs, so that a half-created container is removed too.
    pub fn run<I, S>(name: &str, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let container = Container::new(name);
        run(podman().args(["run", "-d", "--name", name]).args(args));
        container
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman exec NAME`; add the command to it.
    pub fn exec(&self) -> Command {
        let mut cmd = podman();
        cmd.args(["exec", &self.name]);
        cmd
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let mut rm = podman();
        rm.args(["rm", "-f", "-i", "-t", "0", &self.name]);
        if !quiet(&mut rm) {
            eprintln!("warning: could not remove container {}", self.name);
        }
    }
}

/// A fresh directory under /tmp, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        TempDir::with_suffix(prefix, "")
    }

    /// `/tmp/PREFIX-…SUFFIX` (mode 0755): `suffix` lets a test put awkward characters (spaces,
    /// `%`) into the path itself.
    pub fn with_suffix(prefix: &str, suffix: &str) -> TempDir {
        let path = Path::new("/tmp").join(format!("{}{suffix}", unique(prefix)));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }

    /// Gives up ownership: the directory stays, and its path is returned for someone else to
    /// remove.
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("warning: could not remove {}: {e}", self.path.display());
            }
            _ => {}
        }
    }
}

/// A tmpfs of a given size (`"64k"`, `"1m"`) mounted on a fresh temporary directory, for
/// "disk full" tests. Unmounted, and the directory removed, on drop.
#[derive(Debug)]
pub struct TmpfsMount {
    // Dropped after `Drop::drop` has unmounted it.
    dir: TempDir,
}

impl TmpfsMount {
    pub fn new(size: &str) -> TmpfsMount {
        use nix::mount::{MsFlags, mount};
        let dir = TempDir::new("sidespawn-tmpfs");
        let options = format!("size={size},mode=0755");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount -t tmpfs -o {options} {}: {e}", dir.path().display()));
        TmpfsMount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free for files.
    pub fn available(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path())
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.path().display()));
        stat.blocks_available() * stat.fragment_size()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        use nix::mount::{MntFlags, umount2};
        // Lazily if something (a stray process's cwd) still uses it: it must not outlive the test.
        if umount2(self.path(), MntFlags::empty()).is_err()
            && let Err(e) = umount2(self.path(), MntFlags::MNT_DETACH)
        {
            eprintln!("warning: could not unmount {}: {e}", self.path().display());
        }
    }
}

/// Names of the containers labelled `test.sidespawn.run=RUN_LABEL` (the label a test's host profile
/// puts on its sidecars, so that each test finds and removes its own), sorted; with `all`,
/// stopped and created ones too.
pub fn run_containers(run_label: &str, all: bool) -> Vec<String> {
    let mut cmd = podman();
    cmd.arg("ps");
    if all {
        cmd.arg("-a");
    }
    cmd.args([
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=test.sidespawn.run={run_label}"),
    ]);
    let mut names: Vec<String> = run(&mut cmd).lines().map(String::from).collect();
    names.sort();
    names
}

/// podman's state of a container (`running`, `exited`, `created`...); empty when there is none.
pub fn container_status(name: &str) -> String {
    let out = output(podman().args(["inspect", "--format", "{{.State.Status}}", name]));
    if !out.status.success() {
        return String::new();
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `QUEUE_ROOT/KIND/queue.jsonl`.
pub fn queue_file(queue_root: &Path, kind: &str) -> PathBuf {
    queue_root.join(kind).join("queue.jsonl")
}

/// The records queued for `kind`, one JSON value per line (none when there is no queue file).
/// Panics on a line that is not JSON.
pub fn queue_records(queue_root: &Path, kind: &str) -> Vec<serde_json::Value> {
    let path = queue_file(queue_root, kind);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: line is not JSON ({e}): {line:?}", path.display()))
        })
        .collect()
}

/// Milliseconds since the Unix epoch, like the records' `ts`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When set, the hostile-input and fault tests append one JSON line per case to the file it
/// names; `tests/scripts/reliability-table.sh` renders them into `docs/RELIABILITY.md`, so the
/// table says what a real run observed rather than what someone wrote down.
pub const RELIABILITY_LOG_ENV: &str = "SIDESPAWN_RELIABILITY_LOG";

/// Records one case of the reliability table: what the test expected and what it observed.
/// Call it after the assertions, so that a failing test leaves no row claiming success. Paths,
/// ids and other per-run values in `observed` should be replaced by placeholders (see
/// [`Redact`]) so that the generated table only changes when behaviour does.
pub fn reliability(case: &str, expected: &str, observed: &str) {
    let Some(path) = std::env::var_os(RELIABILITY_LOG_ENV) else {
        return;
    };
    let line = serde_json::json!({
        "suite": env!("CARGO_CRATE_NAME"),
        // libtest names each test's thread after the test.
        "test": std::thread::current().name().unwrap_or("?"),
        "case": case,
        "expected": expected,
        "observed": observed,
    });
    let mut text = line.to_string();
    text.push('\n');
    // O_APPEND and one write per line: tests running in parallel never interleave lines.
    let written = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to {}: {e}", Path::new(&path).display());
    }
}

/// Replaces per-run values (temporary paths, uuids, request ids, inode numbers) in observed
/// messages by stable placeholders.
#[derive(Debug, Default)]
pub struct Redact {
    pairs: Vec<(String, String)>,
}

impl Redact {
    pub fn new() -> Redact {
        Redact::default()
    }

    /// Replace `value` by `placeholder` (longer values are replaced first).
    pub fn add(mut self, value: impl ToString, placeholder: &str) -> Redact {
        let value = value.to_string();
        if !value.is_empty() {
            self.pairs.push((value, placeholder.to_owned()));
            self.pairs.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        }
        self
    }

    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (value, placeholder) in &self.pairs {
            out = out.replace(value.as_str(), placeholder);
        }
        // One line per table cell.
        out.replace('\n', " ")
    }
}

/// The name the host whose state directory is `state_dir` (and whose configuration sets no
/// `instance`) gives the sidecar of a tagged request of `kind`.
pub fn sidecar_name(state_dir: &Path, kind: &str, tag: &str) -> String {
    let kind: sidespawn::shared::kind::Kind = kind.parse().expect("a kind");
    sidespawn::host::plan::container_name(
        &sidespawn::host::config::instance_id(state_dir),
        kind,
        Some(tag),
        None,
    )
}
