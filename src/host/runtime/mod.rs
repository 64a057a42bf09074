//! The container runtime seam: everything sidespawn asks of podman.
//!
//! [`Podman`] is the real implementation: one helper runs every podman
//! command with an argv vector (never a shell), a timeout, `INVOCATION_ID`
//! removed from the environment (so podman moves conmon out of the calling
//! service's cgroup and sidecars outlive the oneshot sync), stderr captured
//! into the error and the argv logged at debug level. [`FakeRuntime`] records
//! calls for unit tests. A call is also a value ([`Call`]): [`call_args`]
//! turns it into podman's argv for both execution and `describe`, and
//! [`perform`] dispatches it, so a dry run prints what runs.
//! [`SidecarLabels`] is the one typed view of the labels sidespawn puts on
//! a sidecar.
//!
//! Invariants: nothing from a request ever lands before the image in
//! `podman run` (values are attached with `=`, the image follows `--`);
//! every podman process is made by one builder that removes the scrubbed
//! variables; every podman call but `logs` runs in its own process group,
//! which a timeout kills before the process is reaped, so no call outlives
//! its limit and no unrelated process can be hit (`logs` streams for as
//! long as the operator wants and stays in the terminal's group, so that
//! Ctrl-C reaches it); `describe` prints exactly the argv that would run.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::shared::kind::Kind;
use crate::shared::record::Signal;

/// Label keys put on every sidecar.
pub mod labels {
    pub const MANAGED_BY: &str = "io.sidespawn.managed-by";
    pub const MANAGED_BY_VALUE: &str = "sidespawn";
    /// The configuration that owns the sidecar (`HostConfig::instance`).
    /// Every listing filters on it, so a configuration sees, names,
    /// signals and removes only its own sidecars.
    pub const INSTANCE: &str = "io.sidespawn.instance";
    pub const KIND: &str = "io.sidespawn.kind";
    pub const KEY: &str = "io.sidespawn.key";
    pub const NETNS: &str = "io.sidespawn.netns";
    pub const NETNS_INO: &str = "io.sidespawn.netns-ino";
    pub const TAG: &str = "io.sidespawn.tag";
    pub const ARGV_HASH: &str = "io.sidespawn.argv-hash";
    pub const REQUEST_ID: &str = "io.sidespawn.request-id";
    pub const GENERATION: &str = "io.sidespawn.generation";
}

/// The typed view of a sidecar's labels: every label sidespawn puts on a
/// sidecar, read in one place instead of by key across the modules. A
/// missing or malformed label reads as `None` (or `false`): a container
/// whose labels say nothing is nobody's sidecar.
#[derive(Debug, Clone, Copy)]
pub struct SidecarLabels<'a>(&'a BTreeMap<String, String>);

impl<'a> SidecarLabels<'a> {
    /// The labels of a listed or inspected container.
    pub fn of(c: &'a ContainerInfo) -> SidecarLabels<'a> {
        SidecarLabels(&c.labels)
    }

    /// The labels a sidecar is about to be started with.
    pub fn of_spec(spec: &'a RunSpec) -> SidecarLabels<'a> {
        SidecarLabels(&spec.labels)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(String::as_str)
    }

    /// Carries our managed-by label.
    pub fn is_managed(&self) -> bool {
        self.get(labels::MANAGED_BY) == Some(labels::MANAGED_BY_VALUE)
    }
    pub fn instance(&self) -> Option<&'a str> {
        self.get(labels::INSTANCE)
    }
    pub fn kind(&self) -> Option<&'a str> {
        self.get(labels::KIND)
    }
    pub fn is_kind(&self, kind: Kind) -> bool {
        self.kind() == Some(kind.as_str())
    }
    pub fn key(&self) -> Option<&'a str> {
        self.get(labels::KEY)
    }
    pub fn netns(&self) -> Option<&'a str> {
        self.get(labels::NETNS)
    }
    /// The namespace's inode when the sidecar started, as written (compared
    /// as text with the inode now).
    pub fn netns_ino(&self) -> Option<&'a str> {
        self.get(labels::NETNS_INO)
    }
    pub fn tag(&self) -> Option<&'a str> {
        self.get(labels::TAG)
    }
    pub fn argv_hash(&self) -> Option<&'a str> {
        self.get(labels::ARGV_HASH)
    }
    pub fn request_id(&self) -> Option<&'a str> {
        self.get(labels::REQUEST_ID)
    }
    pub fn generation(&self) -> Option<u64> {
        self.get(labels::GENERATION)?.parse().ok()
    }
    /// The generation label as written (`"?"` when there is none), for
    /// messages.
    pub fn generation_text(&self) -> &'a str {
        self.get(labels::GENERATION).unwrap_or("?")
    }
    /// Carries every label of `wanted` with its value (a profile's labels).
    pub fn has_all(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }
    /// A sidecar of `kind` under a profile with `profile_labels`: this
    /// configuration's sidecar of that kind, as gc, limits, recovery and
    /// the generation counter count them.
    pub fn is_profiles(&self, kind: Kind, profile_labels: &BTreeMap<String, String>) -> bool {
        self.is_kind(kind) && self.has_all(profile_labels)
    }
}

/// Container state as podman reports it (lowercase in `podman ps` JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Created,
    Exited,
    Other(String),
}

impl State {
    pub fn parse(s: &str) -> State {
        match s.to_ascii_lowercase().as_str() {
            "running" => State::Running,
            "created" | "configured" | "initialized" => State::Created,
            "exited" | "stopped" => State::Exited,
            other => State::Other(other.to_owned()),
        }
    }
}

/// One container from `podman ps -a` (the fields of [`PS_FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub state: State,
    /// Host pid of the container's main process (0 when not running).
    pub pid: u32,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds when it started (0 when unknown).
    pub started_at: i64,
    pub exit_code: i32,
}

/// Everything needed to `podman run -d` one sidecar. `podman_args` come from
/// the host profile only; `daemon_argv` (from the request) goes after the
/// image and command, where podman passes it to the daemon untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Host-chosen options: network, pid, cgroupns, volumes, capabilities...
    pub podman_args: Vec<String>,
    /// The program inside the image, e.g. `["dnsmasq", "-k"]`.
    pub command: Vec<String>,
    /// The requested arguments, byte-exact.
    pub daemon_argv: Vec<String>,
}

impl RunSpec {
    /// The arguments after `podman`. The image is the last podman-side
    /// word; everything after it belongs to the container's command.
    ///
    /// Values are attached with `=` (`--name=NAME`, `--label=K=V`) and a
    /// `--` precedes the image, so no value, not even one starting with
    /// `-`, can be read by podman as an option of its own.
    pub fn argv(&self) -> Vec<String> {
        let mut a = vec![
            "run".to_owned(),
            "-d".to_owned(),
            format!("--name={}", self.name),
        ];
        for (k, v) in &self.labels {
            a.push(format!("--label={k}={v}"));
        }
        a.extend(self.podman_args.iter().cloned());
        a.push("--".to_owned());
        a.push(self.image.clone());
        a.extend(self.command.iter().cloned());
        a.extend(self.daemon_argv.iter().cloned());
        a
    }
}

/// A podman call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot run {program}: {message} (install podman or set \"podman\" in the host configuration)"
    )]
    Spawn { program: String, message: String },
    #[error("`podman {args}` timed out after {timeout:?} and was killed")]
    Timeout { args: String, timeout: Duration },
    #[error("`podman {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse the output of `podman {args}`: {message}")]
    Parse { args: String, message: String },
    #[error("no such container {0}")]
    NoSuchContainer(String),
    /// A signal was sent to a container that exists but does not run
    /// (exited or only created): podman refuses with "container state
    /// improper". Callers treat it like "No such process".
    #[error("container {0} is not running")]
    NotRunning(String),
    /// `podman run` found the name taken: a container of that name exists
    /// in some state (often created by an earlier, interrupted sync whose
    /// `podman run` outlived it). The caller looks at it and decides.
    #[error("the container name {0} is already in use")]
    NameInUse(String),
}

/// What sidespawn needs from a container engine.
pub trait Runtime: Send + Sync {
    /// The containers of configuration `instance`: carrying our managed-by
    /// label and `io.sidespawn.instance=<instance>`, in any state. Never
    /// another configuration's, nor one from before the instance label.
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// Names of sidespawn's containers that carry no `io.sidespawn.instance`
    /// label: made before the label existed, so no configuration can prove
    /// they are its own and none touches them. Only `status` asks, to tell
    /// the operator they need removing by hand (README, "Upgrading").
    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Creates and starts a sidecar; returns the container id.
    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError>;
    /// Sends a signal to the container's main process.
    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError>;
    /// Stops (SIGTERM, then SIGKILL after `timeout`).
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes the container, stopping it at once if it still runs.
    fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// One container by name, in any state (`podman container inspect`,
    /// [`RuntimeError::NoSuchContainer`] when there is none): what `ps`
    /// gives of it (`started_at` is 0) and the arguments it runs after its
    /// image. The one inspection: taking over a container name and
    /// rebuilding a lost desired entry both use it.
    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError>;
    /// [`Runtime::inspect`] without the command.
    fn inspect_container(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        self.inspect(name).map(|i| i.container)
    }
    /// The argv a call would run, for `--dry-run`.
    fn describe(&self, call: &Call) -> String;
    /// Streams a container's logs to this process's stdout and stderr
    /// (`podman logs [--follow] -- NAME`), without a time limit: `--follow`
    /// lasts until the operator stops it. Returns podman's exit status,
    /// which is the `logs` command's. Runtimes without it say so.
    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        let _ = follow;
        Err(RuntimeError::Spawn {
            program: format!("logs of {name}"),
            message: "this runtime cannot show logs".to_owned(),
        })
    }
    /// Runs a host-configured health command inside a running container
    /// (`podman exec NAME ARGV...`) within `timeout`; `Ok` when it exits 0.
    /// Runtimes without it report every check as failed to run.
    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let _ = (argv, timeout);
        Err(RuntimeError::Spawn {
            program: format!("exec in {name}"),
            message: "this runtime cannot run health checks".to_owned(),
        })
    }
}

/// Carries out one call on `runtime`: the single dispatch from a [`Call`]
/// value to the engine, so whatever is described is what runs.
pub fn perform(runtime: &dyn Runtime, call: &Call) -> Result<(), RuntimeError> {
    match call {
        Call::List(instance) => runtime.list(instance).map(drop),
        Call::Run(spec) => runtime.run(spec).map(drop),
        Call::Kill(name, signal) => runtime.kill(name, *signal),
        Call::Stop(name, timeout) => runtime.stop(name, *timeout),
        Call::Remove(name) => runtime.remove(name),
        Call::Inspect(name) => runtime.inspect(name).map(drop),
        Call::Logs { name, follow } => runtime.logs(name, *follow).map(drop),
    }
}

/// One container as `podman container inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The fields `ps` also gives (`started_at` is 0).
    pub container: ContainerInfo,
    /// The arguments it runs after its image (`Config.Cmd`): the profile's
    /// command arguments, then the daemon argv.
    pub command: Vec<String>,
}

/// One runtime call, as a value (recorded by the fake, printed by dry runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// List one configuration's containers (its instance).
    List(String),
    Run(RunSpec),
    Kill(String, Signal),
    Stop(String, Duration),
    Remove(String),
    Inspect(String),
    /// Stream a container's logs to this process's stdout (`--follow`: until
    /// the container stops or the operator interrupts).
    Logs {
        name: String,
        follow: bool,
    },
}

/// Environment variables podman must never inherit from sidespawn.
///
/// `INVOCATION_ID` tells podman it runs under systemd; it then leaves conmon
/// in the calling unit's cgroup instead of giving it a scope of its own, and
/// when the oneshot sync exits `KillMode=control-group` kills every conmon
/// (and with it the sidecars' supervision). `NOTIFY_SOCKET` would let
/// podman's sd-notify support send `READY=1`/`MAINPID=<conmon>` to *our*
/// unit (e.g. a `Type=notify` watch service) as if conmon were its main
/// process.
const SCRUBBED_ENV: &[&str] = &["INVOCATION_ID", "NOTIFY_SOCKET"];

/// The most of podman's stderr kept in an error. Podman prints its
/// `Error: ...` line last, after any warnings, so the tail is what matters.
const STDERR_SHOWN: usize = 4096;
/// The most of a command line kept in an error (see [`error_args`]).
const ARGS_SHOWN: usize = 2048;
/// The most of stderr read into memory at all (the rest is drained).
const STDERR_READ_CAP: usize = 64 * 1024;
/// The most of stdout read into memory. The listing asks only for fields of
/// bounded size ([`PS_FORMAT`]: no command line), about 1 KiB per
/// container whatever its argv, so this is tens of thousands of sidecars
/// and only stops a runaway.
const STDOUT_READ_CAP: usize = 64 * 1024 * 1024;

/// The Go template of the listing: one JSON object per container and line,
/// with only the fields the plan uses. `--format json` would print every
/// field, among them the whole command line (twice), so the listing grew
/// with the sidecars' argv and ~70 sidecars with 1 MiB of arguments pushed
/// it past [`STDOUT_READ_CAP`], failing every sync of every kind. Every
/// field here has a size the host bounds (labels: ours and the profile's).
/// `.ListContainer.State`/`.Names` are the raw fields (`.State` alone is
/// the human "Up 2 seconds ago"); checked against podman 4.3.1, output
/// saved in `tests/fixtures/podman/ps-fields-*.jsonl`.
pub const PS_FORMAT: &str = concat!(
    r#"{"Id":{{json .ID}},"Names":{{json .ListContainer.Names}},"#,
    r#""State":{{json .ListContainer.State}},"Pid":{{json .Pid}},"#,
    r#""Image":{{json .Image}},"Labels":{{json .Labels}},"#,
    r#""StartedAt":{{json .StartedAt}},"ExitCode":{{json .ExitCode}}}"#
);
/// How long to wait for EOF on the pipes once podman itself has exited:
/// only a process podman left behind in its group could hold them open.
const PIPE_GRACE: Duration = Duration::from_millis(500);
/// The longest sleep between checks for podman's exit.
const POLL_MAX: Duration = Duration::from_millis(20);

/// The template of [`Runtime::list_unlabelled`]: a container's names and
/// its instance label (`""` when it has none; `index` of a missing key is
/// the empty string), one JSON object per line.
const UNLABELLED_FORMAT: &str = r#"{"Names":{{json .ListContainer.Names}},"Instance":{{json (index .Labels "io.sidespawn.instance")}}}"#;

/// The names of [`UNLABELLED_FORMAT`]'s lines whose instance is empty.
fn parse_unlabelled(out: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Line {
        #[serde(default)]
        names: PsNames,
        #[serde(default)]
        instance: Option<String>,
    }
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut names = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: Line = serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.instance.as_deref().unwrap_or("").is_empty() {
            names.push(match line.names {
                PsNames::Many(n) => n.into_iter().next().unwrap_or_default(),
                PsNames::One(n) => n,
            });
        }
    }
    names.sort();
    Ok(names)
}

/// The real runtime: the `podman` command line.
#[derive(Debug, Clone)]
pub struct Podman {
    program: PathBuf,
    timeout: Duration,
    extra_env: Vec<(String, String)>,
}

/// What a finished podman process produced.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stdout_truncated: bool,
    stderr: String,
}

impl Podman {
    /// `program` is the podman binary (a bare name is looked up in `PATH`);
    /// `timeout` bounds every call (a `stop` gets its grace time on top).
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Podman {
        Podman {
            program: program.into(),
            timeout,
            extra_env: Vec::new(),
        }
    }

    /// Adds a variable to podman's environment (tests point
    /// `CONTAINERS_CONF` at a test configuration this way, without touching
    /// the process environment). The scrubbed variables stay removed even
    /// if named here.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Podman {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `podman ARGS` as every podman this process starts is made: argv
    /// only, stdin closed, the extra environment, and never the scrubbed
    /// variables ([`SCRUBBED_ENV`]).
    fn command_for(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        // After extra_env, so nothing can put them back.
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Runs `podman ARGS` and waits at most `timeout`. This is the only
    /// place sidespawn starts podman. Errors only for what prevents a
    /// result (spawn failure, timeout); a non-zero exit is returned as a
    /// [`Finished`] for the caller to classify.
    fn exec(&self, args: &[String], timeout: Duration) -> Result<Finished, RuntimeError> {
        let started = Instant::now();
        let shown_args = || error_args(args);
        let mut cmd = self.command_for(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so a timeout can kill podman together with
        // any helper it started (runc, a hook) that would otherwise keep
        // running or keep our pipes open. conmon calls setsid() and so is
        // never in this group: killing the group cannot hit a sidecar.
        cmd.process_group(0);

        let mut child = spawn_retrying(&mut cmd).map_err(|e| RuntimeError::Spawn {
            program: self.program.display().to_string(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "podman is not installed or not in PATH (no such file)".to_owned()
            } else {
                e.to_string()
            },
        })?;

        // Each pipe is drained by its own thread so podman never blocks on
        // a full pipe while we wait for it; a thread left blocked on a pipe
        // that something keeps open ends when that process goes.
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>, bool)>();
        let readers = [
            child.stdout.take().map(|out| {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name("podman-stdout".to_owned())
                    .spawn(move || {
                        let (data, truncated) = read_capped(out, STDOUT_READ_CAP, Keep::Head);
                        let _ = tx.send((true, data, truncated));
                    })
            }),
            child.stderr.take().map(|err| {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name("podman-stderr".to_owned())
                    .spawn(move || {
                        let (data, truncated) = read_capped(err, STDERR_READ_CAP, Keep::Tail);
                        let _ = tx.send((false, data, truncated));
                    })
            }),
        ];
        drop(tx);
        if let Some(Err(e)) = readers.into_iter().flatten().find(Result::is_err) {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(RuntimeError::Spawn {
                program: self.program.display().to_string(),
                message: format!("cannot start a thread to read its output: {e}"),
            });
        }

        let deadline = started + timeout;
        let mut stdout: Option<(Vec<u8>, bool)> = None;
        let mut stderr: Option<Vec<u8>> = None;
        let mut exited_at: Option<Instant> = None;
        let mut killed_leftovers = false;
        let mut poll = Duration::from_millis(1);
        loop {
            if exited_at.is_none() && has_exited(&child) {
                exited_at = Some(Instant::now());
            }
            if exited_at.is_some() && stdout.is_some() && stderr.is_some() {
                break;
            }
            let now = Instant::now();
            let limit = match exited_at {
                None => deadline,
                Some(t) if !killed_leftovers => deadline.min(t + PIPE_GRACE),
                Some(t) => t + 2 * PIPE_GRACE,
            };
            if now >= limit {
                // Every kill_group here happens before the child is reaped
                // (has_exited uses WNOWAIT): its zombie keeps the pid, and so
                // the group id, from being reused by an unrelated process.
                if exited_at.is_none() {
                    kill_group(&mut child);
                    let _ = child.wait();
                    tracing::debug!(
                        argv = %describe_argv(&self.program, args),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "podman timed out, killed"
                    );
                    return Err(RuntimeError::Timeout {
                        args: shown_args(),
                        timeout,
                    });
                }
                if !killed_leftovers {
                    // Podman is done but a process it left in its group
                    // holds our pipes: kill it and take the output.
                    tracing::warn!(
                        argv = %describe_argv(&self.program, args),
                        "podman exited but a process it started keeps its output open; killing its process group"
                    );
                    kill_group(&mut child);
                    killed_leftovers = true;
                    continue;
                }
                let status = child.wait();
                return Err(RuntimeError::Failed {
                    args: shown_args(),
                    status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    stderr: "podman exited, but a process outside its process group kept its output open"
                        .to_owned(),
                });
            }
            match rx.recv_timeout(poll.min(limit - now)) {
                Ok((true, data, truncated)) => stdout = Some((data, truncated)),
                Ok((false, data, _)) => stderr = Some(data),
                Err(mpsc::RecvTimeoutError::Timeout) => poll = (poll * 2).min(POLL_MAX),
                // Both readers are done; only the exit is left to wait for.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stdout.get_or_insert_with(|| (Vec::new(), false));
                    stderr.get_or_insert_with(Vec::new);
                    std::thread::sleep(poll.min(limit - now));
                    poll = (poll * 2).min(POLL_MAX);
                }
            }
        }

        let status = child.wait().map_err(|e| RuntimeError::Failed {
            args: shown_args(),
            status: format!("cannot collect exit status: {e}"),
            stderr: String::new(),
        })?;
        let (stdout, stdout_truncated) = stdout.unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned();
        tracing::debug!(
            argv = %describe_argv(&self.program, args),
            elapsed_ms = started.elapsed().as_millis() as u64,
            %status,
            "podman finished"
        );
        Ok(Finished {
            status,
            stdout,
            stdout_truncated,
            stderr,
        })
    }

    /// Runs a call with the configured timeout and turns a non-zero exit
    /// into [`RuntimeError::Failed`], keeping the full stderr available to
    /// `classify` first (the capped copy in the error might cut it).
    fn call(
        &self,
        args: &[String],
        timeout: Duration,
        classify: impl FnOnce(&str) -> Option<Result<(), RuntimeError>>,
    ) -> Result<Vec<u8>, RuntimeError> {
        let f = self.exec(args, timeout)?;
        if !f.status.success() {
            if let Some(r) = classify(&f.stderr) {
                return r.map(|()| Vec::new());
            }
            return Err(RuntimeError::Failed {
                args: error_args(args),
                status: f.status.to_string(),
                stderr: summarise_stderr(&f.stderr),
            });
        }
        if f.stdout_truncated {
            return Err(RuntimeError::Parse {
                args: error_args(args),
                message: format!("more than {STDOUT_READ_CAP} bytes of output"),
            });
        }
        Ok(f.stdout)
    }
}

impl Runtime for Podman {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let args = call_args(&Call::List(instance.to_owned()));
        let out = self.call(&args, self.timeout, |_| None)?;
        let all = parse_ps(&out).map_err(|message| RuntimeError::Parse {
            args: error_args(&args),
            message,
        })?;
        Ok(keep_managed(all, instance))
    }

    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        let args: Vec<String> = [
            "ps",
            "-a",
            "--filter",
            &format!("label={}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            "--format",
            UNLABELLED_FORMAT,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let out = self.call(&args, self.timeout, |_| None)?;
        parse_unlabelled(&out).map_err(|message| RuntimeError::Parse {
            args: quote_args(&args),
            message,
        })
    }

    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        let args = call_args(&Call::Run(spec.clone()));
        let out = self.call(&args, self.timeout, |stderr| {
            is_name_in_use(stderr).then(|| Err(RuntimeError::NameInUse(spec.name.clone())))
        })?;
        // `podman run -d` prints the id alone; take the last line in case a
        // future version prints notices before it.
        let text = String::from_utf8_lossy(&out);
        match text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(RuntimeError::Parse {
                args: error_args(&args),
                message: "podman printed no container id".to_owned(),
            }),
        }
    }

    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Kill(name.to_owned(), signal));
        self.call(&args, self.timeout, |stderr| {
            if is_no_such_container(stderr) {
                Some(Err(RuntimeError::NoSuchContainer(name.to_owned())))
            } else if is_not_running(stderr) {
                Some(Err(RuntimeError::NotRunning(name.to_owned())))
            } else {
                None
            }
        })
        .map(drop)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Stop(name.to_owned(), timeout));
        // podman itself waits up to `timeout` before SIGKILL: that wait must
        // not count against the call's own time limit.
        let limit = self.timeout + Duration::from_secs(stop_secs(timeout));
        self.call(&args, limit, |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })
        .map(drop)
    }

    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Remove(name.to_owned()));
        // Podman 4.3 already exits 0 for `rm -f` of a missing container;
        // other versions say "no such container": removal is idempotent
        // either way, so a sync killed half-way can simply run again.
        self.call(&args, self.timeout, |stderr| {
            is_no_such_container(stderr).then_some(Ok(()))
        })
        .map(drop)
    }

    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        let args = call_args(&Call::Inspect(name.to_owned()));
        let out = self.call(&args, self.timeout, |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })?;
        parse_inspect(&out)
            .map_err(|message| RuntimeError::Parse {
                args: error_args(&args),
                message,
            })?
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))
    }

    fn describe(&self, call: &Call) -> String {
        describe_argv(&self.program, &call_args(call))
    }

    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        let args = call_args(&Call::Logs {
            name: name.to_owned(),
            follow,
        });
        // Output goes straight to ours, as it comes: `--follow` streams.
        self.command_for(&args)
            .status()
            .map_err(|e| RuntimeError::Spawn {
                program: self.program.display().to_string(),
                message: e.to_string(),
            })
    }

    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        // podman stops reading its own options at the container name, so
        // the command's arguments stay the command's.
        let mut args = vec!["exec".to_owned(), name.to_owned()];
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            if is_no_such_container(stderr) {
                Some(Err(RuntimeError::NoSuchContainer(name.to_owned())))
            } else if is_not_running(stderr) {
                Some(Err(RuntimeError::NotRunning(name.to_owned())))
            } else {
                None
            }
        })
        .map(drop)
    }
}

/// Spawns, retrying briefly on ETXTBSY: an executable that is being
/// replaced (a package upgrade) or was just written while another thread
/// forked cannot be executed for a moment.
fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..5 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            other => return other,
        }
    }
    cmd.spawn()
}

/// Whether the child has exited, without reaping it: while it is an
/// unreaped zombie its pid, and so its process group id, cannot be reused,
/// which makes a later `killpg` safe.
fn has_exited(child: &Child) -> bool {
    let Ok(raw) = i32::try_from(child.id()) else {
        return true;
    };
    match waitid(
        Id::Pid(Pid::from_raw(raw)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    ) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(nix::errno::Errno::EINTR) => false,
        // ECHILD and the like: nothing left to wait for.
        Err(_) => true,
    }
}

fn kill_group(child: &mut Child) {
    let killed = i32::try_from(child.id())
        .ok()
        .is_some_and(|raw| killpg(Pid::from_raw(raw), NixSignal::SIGKILL).is_ok());
    if !killed {
        let _ = child.kill();
    }
}

/// Which end of an over-long stream to keep.
#[derive(Clone, Copy)]
enum Keep {
    /// stdout: anything cut makes it unusable anyway, so keep the start.
    Head,
    /// stderr: podman's `Error:` line comes last, after any warnings.
    Tail,
}

/// Reads to EOF, keeping at most `cap` bytes but draining the rest so the
/// writer never blocks on a full pipe. Returns whether anything was dropped.
fn read_capped(mut r: impl Read, cap: usize, keep: Keep) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match keep {
                Keep::Head => {
                    let room = cap.saturating_sub(data.len());
                    truncated |= n > room;
                    data.extend_from_slice(&buf[..n.min(room)]);
                }
                Keep::Tail => {
                    data.extend_from_slice(&buf[..n]);
                    // Trim only once twice the cap is buffered, so the
                    // front is not shifted on every read.
                    if data.len() > 2 * cap {
                        data.drain(..data.len() - cap);
                        truncated = true;
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if data.len() > cap {
        data.drain(..data.len() - cap);
        truncated = true;
    }
    (data, truncated)
}

/// The trimmed stderr, cut to its last [`STDERR_SHOWN`] bytes.
fn summarise_stderr(stderr: &str) -> String {
    let s = stderr.trim();
    if s.len() <= STDERR_SHOWN {
        return s.to_owned();
    }
    let mut cut = s.len() - STDERR_SHOWN;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[...] {}", &s[cut..])
}

fn is_no_such_container(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("no such container")
}

/// Podman 4.3: `Error: creating container storage: the container name "X"
/// is already in use by ID. You have to remove that container to be able to
/// reuse that name: that name is already in use` (docker says `Conflict. The
/// container name "/X" is already in use by container ...`).
fn is_name_in_use(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("name") && s.contains("is already in use")
}

fn is_not_running(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("container state improper")
}

/// `podman stop -t` takes whole seconds; round up so a sub-second grace
/// time is not turned into an immediate SIGKILL.
fn stop_secs(t: Duration) -> u64 {
    t.as_secs() + u64::from(t.subsec_nanos() > 0)
}

/// The arguments after `podman` for a call. Execution and `describe` both
/// use this, so a dry run prints exactly what a real run executes. Names go
/// after `--` so that none can be taken for an option.
pub fn call_args(call: &Call) -> Vec<String> {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match call {
        Call::List(instance) => {
            // Podman ANDs several `label=` filters (checked with 4.3.1);
            // `keep_managed` checks both labels again anyway.
            let mut a = v(&["ps", "-a", "--no-trunc", "--filter"]);
            a.push(format!(
                "label={}={}",
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            ));
            a.push("--filter".to_owned());
            a.push(format!("label={}={instance}", labels::INSTANCE));
            a.push("--format".to_owned());
            a.push(PS_FORMAT.to_owned());
            a
        }
        Call::Run(spec) => spec.argv(),
        Call::Kill(name, sig) => {
            let mut a = v(&["kill"]);
            a.push(format!("--signal={}", sig.as_str()));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        Call::Stop(name, t) => {
            let mut a = v(&["stop"]);
            a.push(format!("--time={}", stop_secs(*t)));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        Call::Remove(name) => {
            let mut a = v(&["rm", "--force", "--time=0", "--"]);
            a.push(name.clone());
            a
        }
        Call::Inspect(name) => {
            let mut a = v(&["container", "inspect", "--format", "json", "--"]);
            a.push(name.clone());
            a
        }
        Call::Logs { name, follow } => {
            let mut a = v(&["logs"]);
            if *follow {
                a.push("--follow".to_owned());
            }
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
    }
}

pub use crate::host::shell::{quote_words as quote_args, shell_quote};

/// The command line as errors show it: quoted, and cut after
/// [`ARGS_SHOWN`] bytes. A request's argv can be as long as the queue allows
/// and every message that names the command ends up in an acknowledgement,
/// the reject log or the state; the start (options, name, image) is what
/// identifies the call.
fn error_args(args: &[String]) -> String {
    crate::shared::ack::bounded(&quote_args(args), ARGS_SHOWN).into_owned()
}

fn describe_argv(program: &Path, args: &[String]) -> String {
    let program = program.to_string_lossy();
    let mut s = shell_quote(&program).into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

/// One container of the listing: a line of [`PS_FORMAT`]'s output, or an
/// entry of `podman ps --format json` (podman 4.x), which parses the same.
/// Only the fields we use; anything else is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    id: String,
    #[serde(default)]
    names: PsNames,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    image: String,
    /// `null` for a container created without labels.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Unix seconds; a container that never started has Go's zero time,
    /// -62135596800.
    #[serde(default)]
    started_at: i64,
    #[serde(default)]
    exit_code: i32,
}

/// An array in podman 4.x; a plain string in some older versions.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PsNames {
    Many(Vec<String>),
    One(String),
}

impl Default for PsNames {
    fn default() -> PsNames {
        PsNames::Many(Vec::new())
    }
}

/// Parses the listing: one JSON object per line ([`PS_FORMAT`]; no
/// containers prints nothing), or, from `--format json`, one array (`[]`
/// or `null` for none).
fn parse_ps(out: &[u8]) -> Result<Vec<ContainerInfo>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<PsEntry> = if trimmed.starts_with('[') || trimmed == "null" {
        let all: Option<Vec<PsEntry>> = serde_json::from_str(trimmed).map_err(|e| e.to_string())?;
        all.unwrap_or_default()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<PsEntry>(l).map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(entries
        .into_iter()
        .map(|e| {
            let name = match e.names {
                PsNames::Many(n) => n.into_iter().next().unwrap_or_default(),
                PsNames::One(n) => n,
            };
            ContainerInfo {
                id: e.id,
                name,
                state: State::parse(&e.state),
                // Podman reports 0 for a container that is not running;
                // anything outside u32 is not a pid either.
                pid: u32::try_from(e.pid).unwrap_or(0),
                image: e.image,
                labels: e.labels.unwrap_or_default(),
                started_at: e.started_at.max(0),
                exit_code: e.exit_code,
            }
        })
        .collect())
}

/// One entry of `podman container inspect --format json` (podman 4.x),
/// only what [`Runtime::inspect`] returns.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectEntry {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: InspectState,
    #[serde(default)]
    image_name: String,
    #[serde(default)]
    config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    exit_code: i32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

/// Parses `podman container inspect --format json` output of one name: an
/// array of one entry, or empty when there is no such container.
fn parse_inspect(out: &[u8]) -> Result<Option<Inspected>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let entries: Option<Vec<InspectEntry>> =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(entries
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|e| Inspected {
            container: ContainerInfo {
                id: e.id,
                name: e.name,
                state: State::parse(&e.state.status),
                pid: u32::try_from(e.state.pid).unwrap_or(0),
                image: e.image_name,
                labels: e.config.labels.unwrap_or_default(),
                started_at: 0,
                exit_code: e.state.exit_code,
            },
            command: e.config.cmd.unwrap_or_default(),
        }))
}

/// Keeps only containers carrying our managed-by label and `instance`.
/// `ps --filter` already does this; checking again means a podman that
/// ignored or ORed the filters could never get another configuration's
/// container (or anyone else's) signalled or garbage-collected.
fn keep_managed(all: Vec<ContainerInfo>, instance: &str) -> Vec<ContainerInfo> {
    let total = all.len();
    let kept: Vec<ContainerInfo> = all
        .into_iter()
        .filter(|c| is_managed(c, instance))
        .collect();
    if kept.len() != total {
        tracing::warn!(
            ignored = total - kept.len(),
            "podman listed containers without the {} label or with another {} despite the filter; ignoring them",
            labels::MANAGED_BY,
            labels::INSTANCE
        );
    }
    kept
}

/// Whether `c` is a sidecar of configuration `instance`.
pub fn is_managed(c: &ContainerInfo, instance: &str) -> bool {
    let l = SidecarLabels::of(c);
    l.is_managed() && l.instance() == Some(instance)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide the state
    // from the assertions that follow.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An in-memory runtime for tests: a list of "existing containers" that
/// the calls act on, a record of every call, and injectable failures.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    containers: Mutex<Vec<ContainerInfo>>,
    /// What each container runs after its image, by name (for `command`).
    commands: Mutex<BTreeMap<String, Vec<String>>>,
    calls: Mutex<Vec<Call>>,
    failures: Mutex<BTreeMap<String, Injected>>,
    list_failure: Mutex<Option<Injected>>,
    serial: AtomicU32,
    /// Containers whose health check fails.
    unhealthy: Mutex<std::collections::BTreeSet<String>>,
    /// Containers `list` leaves out, as a `ps` taken before an interrupted
    /// sync's `podman run` created them would.
    hidden: Mutex<std::collections::BTreeSet<String>>,
}

/// A failure injected into [`FakeRuntime`].
#[derive(Debug, Clone)]
enum Injected {
    /// Fails like podman exiting 125 with this stderr.
    Stderr(String),
    Error(RuntimeError),
}

impl Injected {
    fn to_error(&self, call: &Call) -> RuntimeError {
        match self {
            Injected::Stderr(message) => RuntimeError::Failed {
                args: error_args(&call_args(call)),
                status: "exit status: 125".to_owned(),
                stderr: message.clone(),
            },
            Injected::Error(e) => e.clone(),
        }
    }
}

/// First pid the fake hands out, far from the test process's own.
const FAKE_FIRST_PID: u32 = 10000;

impl FakeRuntime {
    pub fn new(existing: Vec<ContainerInfo>) -> FakeRuntime {
        FakeRuntime {
            containers: Mutex::new(existing),
            ..FakeRuntime::default()
        }
    }

    /// A container carrying our managed-by label, the instance of
    /// [`crate::host::config::Profile::defaults`] and `labels` (which may name
    /// another instance), for seeding [`FakeRuntime::new`]. Running ones
    /// get a pid.
    pub fn container(name: &str, state: State, labels: &[(&str, &str)]) -> ContainerInfo {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.insert(
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        );
        l.entry(labels::INSTANCE.to_owned()).or_insert_with(|| {
            crate::host::config::instance_id(std::path::Path::new(
                crate::host::config::DEFAULT_STATE_DIR,
            ))
        });
        let running = state == State::Running;
        ContainerInfo {
            // FNV-1a of the name: stable and distinct per name.
            id: format!(
                "{:064x}",
                name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                })
            ),
            name: name.to_owned(),
            state,
            pid: if running { 9000 } else { 0 },
            image: "localhost/fake:latest".to_owned(),
            labels: l,
            started_at: if running { 1_700_000_000 } else { 0 },
            exit_code: 0,
        }
    }

    /// Every call made so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// The containers as they are now, in every state.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        lock(&self.containers).clone()
    }

    /// From now on every run/kill/stop/remove of `name` fails like a
    /// podman that exits 125 with `message` on stderr.
    pub fn fail_on(&self, name: &str, message: &str) {
        lock(&self.failures).insert(name.to_owned(), Injected::Stderr(message.to_owned()));
    }

    /// Like [`FakeRuntime::fail_on`] with any error (e.g. a timeout).
    pub fn fail_on_with(&self, name: &str, err: RuntimeError) {
        lock(&self.failures).insert(name.to_owned(), Injected::Error(err));
    }

    /// From now on `list` fails like podman exiting 125 with `message`.
    pub fn fail_list(&self, message: &str) {
        *lock(&self.list_failure) = Some(Injected::Stderr(message.to_owned()));
    }

    pub fn fail_list_with(&self, err: RuntimeError) {
        *lock(&self.list_failure) = Some(Injected::Error(err));
    }

    /// From now on the health check of `name` fails (or passes again).
    pub fn set_unhealthy(&self, name: &str, unhealthy: bool) {
        let mut u = lock(&self.unhealthy);
        if unhealthy {
            u.insert(name.to_owned());
        } else {
            u.remove(name);
        }
    }

    /// Leaves `name` out of every `list` until it is removed: the container
    /// a killed sync's `podman run` created after the next sync listed.
    pub fn hide_from_list(&self, name: &str) {
        lock(&self.hidden).insert(name.to_owned());
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        lock(&self.failures).clear();
        *lock(&self.list_failure) = None;
    }

    /// Records the call, then fails it if a failure was injected for
    /// `name`.
    fn record(&self, call: Call, name: Option<&str>) -> Result<(), RuntimeError> {
        let injected = match name {
            Some(n) => lock(&self.failures).get(n).cloned(),
            None => lock(&self.list_failure).clone(),
        };
        let result = injected.map_or(Ok(()), |i| Err(i.to_error(&call)));
        lock(&self.calls).push(call);
        result
    }

    fn exit(c: &mut ContainerInfo, code: i32) {
        if c.state == State::Running {
            c.exit_code = code;
        }
        c.state = State::Exited;
        c.pid = 0;
    }
}

impl Runtime for FakeRuntime {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.record(Call::List(instance.to_owned()), None)?;
        let hidden = lock(&self.hidden).clone();
        Ok(lock(&self.containers)
            .iter()
            .filter(|c| is_managed(c, instance) && !hidden.contains(&c.name))
            .cloned()
            .collect())
    }

    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        let mut names: Vec<String> = lock(&self.containers)
            .iter()
            .filter(|c| {
                SidecarLabels::of(c).is_managed()
                    && SidecarLabels::of(c).instance().is_none_or(str::is_empty)
            })
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        self.record(Call::Run(spec.clone()), Some(&spec.name))?;
        let mut cs = lock(&self.containers);
        if cs.iter().any(|c| c.name == spec.name) {
            // What podman does: a name held by any container, even an
            // exited or created one, blocks a new one.
            return Err(RuntimeError::NameInUse(spec.name.clone()));
        }
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:064x}", 0xfa4e_0000_u64 + u64::from(n));
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        lock(&self.commands).insert(
            spec.name.clone(),
            spec.command
                .iter()
                .chain(&spec.daemon_argv)
                .cloned()
                .collect(),
        );
        cs.push(ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            state: State::Running,
            pid: FAKE_FIRST_PID + n,
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            started_at,
            exit_code: 0,
        });
        Ok(id)
    }

    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.record(Call::Kill(name.to_owned(), signal), Some(name))?;
        let mut cs = lock(&self.containers);
        let c = cs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        if c.state != State::Running {
            return Err(RuntimeError::NotRunning(name.to_owned()));
        }
        match signal {
            // A daemon reloads on HUP and keeps running.
            Signal::Hup => {}
            Signal::Term => FakeRuntime::exit(c, 128 + 15),
            Signal::Kill => FakeRuntime::exit(c, 128 + 9),
        }
        Ok(())
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.record(Call::Stop(name.to_owned(), timeout), Some(name))?;
        let mut cs = lock(&self.containers);
        let c = cs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        FakeRuntime::exit(c, 128 + 15);
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(Call::Remove(name.to_owned()), Some(name))?;
        lock(&self.containers).retain(|c| c.name != name);
        lock(&self.hidden).remove(name);
        Ok(())
    }

    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        lock(&self.calls).push(Call::Inspect(name.to_owned()));
        let container = lock(&self.containers)
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        // A seeded container was never run here: podman would report no command.
        let command = lock(&self.commands).get(name).cloned().unwrap_or_default();
        Ok(Inspected { container, command })
    }

    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let running = lock(&self.containers)
            .iter()
            .any(|c| c.name == name && c.state == State::Running);
        if !running {
            return Err(RuntimeError::NotRunning(name.to_owned()));
        }
        if lock(&self.unhealthy).contains(name) {
            return Err(RuntimeError::Failed {
                args: error_args(&[&["exec".to_owned(), name.to_owned()][..], argv].concat()),
                status: "exit status: 1".to_owned(),
                stderr: "unhealthy".to_owned(),
            });
        }
        Ok(())
    }

    fn describe(&self, call: &Call) -> String {
        describe_argv(Path::new("podman"), &call_args(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    const PS_EMPTY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-empty.json"
    ));
    const PS_MIXED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-mixed.json"
    ));
    const PS_FIELDS_MIXED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-fields-mixed.jsonl"
    ));
    const PS_FIELDS_SCOPED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-fields-scoped.jsonl"
    ));
    const INSPECT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/inspect-dnsmasq.json"
    ));

    #[test]
    fn inspect_gives_the_arguments_after_the_image() {
        assert_eq!(
            parse_inspect(INSPECT.as_bytes()).unwrap().unwrap().command,
            ["-k", "", "--a=b c"]
        );
    }

    /// A scratch directory removed on drop, for fake podman scripts.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "sidespawn-rt-{}-{}",
                std::process::id(),
                crate::shared::record::new_id(0)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Writes an executable `/bin/sh` script standing in for podman.
        fn script(&self, name: &str, body: &str) -> PathBuf {
            let path = self.0.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&path)
                .unwrap();
            writeln!(f, "#!/bin/sh\n{body}").unwrap();
            path
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn by_name<'a>(cs: &'a [ContainerInfo], name: &str) -> &'a ContainerInfo {
        cs.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} in {cs:#?}"))
    }

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn spec(name: &str, daemon_argv: &[&str]) -> RunSpec {
        RunSpec {
            name: name.to_owned(),
            image: "localhost/dnsmasq:1".to_owned(),
            labels: [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                (labels::KIND, "dnsmasq"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            podman_args: strings(&["--network=ns:/run/netns/qdhcp-1", "--pid=host"]),
            command: strings(&["dnsmasq", "-k"]),
            daemon_argv: strings(daemon_argv),
        }
    }

    /// Whether a pid is gone or only a zombie waiting for its reaper.
    fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    fn wait_dead(pid: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if is_dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    // ---- podman inspect JSON and run errors, from real podman 4.3 ----

    const INSPECT_RUNNING: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/inspect-running.json"
    ));
    const RUN_NAME_IN_USE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/run-name-in-use.stderr"
    ));

    #[test]
    fn inspect_fixture_gives_state_pid_and_labels() {
        let c = parse_inspect(INSPECT_RUNNING.as_bytes())
            .unwrap()
            .unwrap()
            .container;
        assert_eq!(c.name, "ssfx-inuse");
        assert_eq!(c.id.len(), 64);
        assert_eq!(c.state, State::Running);
        assert!(c.pid > 0);
        assert_eq!(c.image, "localhost/sidespawn-test-agent:latest");
        assert_eq!(c.labels[labels::KEY], "dnsmasq/tag/x");
        assert_eq!(c.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        // A missing container: podman prints `[]` (and fails).
        assert_eq!(parse_inspect(b"[]\n").unwrap(), None);
        assert_eq!(parse_inspect(b"").unwrap(), None);
    }

    #[test]
    fn name_in_use_is_recognised_in_podmans_own_words() {
        assert!(is_name_in_use(RUN_NAME_IN_USE), "{RUN_NAME_IN_USE}");
        assert!(is_name_in_use(
            "docker: Error response from daemon: Conflict. The container name \"/x\" is already in use by container \"abc\"."
        ));
        assert!(!is_name_in_use("Error: localhost/x:1: image not known"));
        assert!(!is_name_in_use("Error: address already in use"));
    }

    #[test]
    fn error_args_are_cut_but_keep_the_start() {
        let mut args = vec!["run".to_owned(), "--name=sidespawn-x".to_owned()];
        args.extend((0..1000).map(|i| format!("--arg-{i:0>90}")));
        let shown = error_args(&args);
        assert!(shown.len() <= ARGS_SHOWN, "{}", shown.len());
        assert!(
            shown.starts_with("run --name=sidespawn-x --arg-"),
            "{shown}"
        );
        assert!(shown.ends_with("more bytes)"), "{shown}");
        let e = RuntimeError::Failed {
            args: shown,
            status: "exit status: 125".into(),
            stderr: "Error: image not known".into(),
        };
        assert!(e.to_string().ends_with("Error: image not known"));
    }

    // ---- podman ps JSON, from real podman 4.3 output ----

    #[test]
    fn empty_ps_output_in_every_spelling_is_no_containers() {
        assert_eq!(PS_EMPTY.trim(), "[]", "fixture is what podman 4.3 prints");
        for out in [PS_EMPTY, "", " \n", "null"] {
            assert_eq!(parse_ps(out.as_bytes()).unwrap(), vec![], "{out:?}");
        }
    }

    #[test]
    fn mixed_ps_fixture_parses_every_state() {
        let cs = parse_ps(PS_MIXED.as_bytes()).unwrap();
        assert_eq!(cs.len(), 4);

        let running = by_name(&cs, "ssfx-running");
        assert_eq!(running.state, State::Running);
        assert!(running.pid > 0);
        assert_eq!(running.id.len(), 64, "--no-trunc gives full ids");
        assert_eq!(running.image, "localhost/sidespawn-fixture:pmx");
        assert_eq!(running.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        assert_eq!(running.labels[labels::KEY], "dnsmasq-running");
        assert_eq!(running.labels[labels::NETNS], "qdhcp-1111");
        assert!(running.started_at > 1_600_000_000);
        assert_eq!(running.exit_code, 0);

        let exited = by_name(&cs, "ssfx-exited");
        assert_eq!(exited.state, State::Exited);
        assert_eq!(exited.pid, 0);
        assert_eq!(exited.exit_code, 7);
        assert!(exited.started_at > 0);

        // Never started: podman prints Go's zero time (-62135596800).
        let created = by_name(&cs, "ssfx-created");
        assert_eq!(created.state, State::Created);
        assert_eq!(created.pid, 0);
        assert_eq!(created.started_at, 0);
        assert_eq!(created.labels[labels::KEY], "haproxy-created");

        let bare = by_name(&cs, "ssfx-nolabels");
        assert_eq!(bare.state, State::Running);
        assert!(bare.pid > 0);
        assert!(bare.labels.is_empty(), "\"Labels\": null");
    }

    #[test]
    fn containers_without_our_label_are_never_listed() {
        // Containers from before the instance label: never this
        // configuration's, whatever their other labels say.
        assert!(keep_managed(parse_ps(PS_MIXED.as_bytes()).unwrap(), "x").is_empty());
        let mut bare = parse_ps(PS_MIXED.as_bytes()).unwrap();
        for c in &mut bare {
            c.labels.insert(labels::INSTANCE.into(), "x".into());
        }
        let kept = keep_managed(bare, "x");
        let mut names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ssfx-created", "ssfx-exited", "ssfx-running"]);
    }

    #[test]
    fn field_template_fixture_parses_every_state() {
        let cs = parse_ps(PS_FIELDS_MIXED.as_bytes()).unwrap();
        assert_eq!(cs.len(), 5);
        let running = by_name(&cs, "isoexp-run");
        assert_eq!(running.state, State::Running);
        assert!(running.pid > 0);
        assert_eq!(running.id.len(), 64, "--no-trunc gives full ids");
        assert_eq!(running.image, "localhost/sidespawn-test-agent:latest");
        assert_eq!(running.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        assert_eq!(running.labels[labels::INSTANCE], "isoexp");
        assert_eq!(running.labels[labels::KIND], "dnsmasq");
        assert!(running.started_at > 1_600_000_000);
        let exited = by_name(&cs, "isoexp-exited");
        assert_eq!((exited.state.clone(), exited.pid), (State::Exited, 0));
        assert_eq!(exited.exit_code, 7);
        assert!(exited.started_at > 0);
        let created = by_name(&cs, "isoexp-created");
        assert_eq!(created.state, State::Created);
        assert_eq!((created.pid, created.started_at), (0, 0));
        assert_eq!(
            by_name(&cs, "isoexp-other").labels[labels::INSTANCE],
            "other"
        );
        assert!(
            !by_name(&cs, "isoexp-nolabel")
                .labels
                .contains_key(labels::MANAGED_BY)
        );
        // Another instance and an unlabelled container are never kept.
        let kept = keep_managed(cs, "isoexp");
        let mut names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["isoexp-created", "isoexp-exited", "isoexp-run"]);
        // What podman's two ANDed label filters printed: the same three.
        let scoped = parse_ps(PS_FIELDS_SCOPED.as_bytes()).unwrap();
        let mut names: Vec<&str> = scoped.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["isoexp-created", "isoexp-exited", "isoexp-run"]);
    }

    #[test]
    fn unlabelled_containers_are_named_from_their_listing() {
        // What podman 4.3.1 printed for UNLABELLED_FORMAT: an old sidecar, one of ours.
        let out = br#"{"Names":["sidespawn-dnsmasq-t-old"],"Instance":""}
{"Names":["sidespawn-0123456789ab-dnsmasq-t-new"],"Instance":"0123456789ab"}
"#;
        assert_eq!(parse_unlabelled(out).unwrap(), ["sidespawn-dnsmasq-t-old"]);
        assert!(parse_unlabelled(b"").unwrap().is_empty());
        assert!(parse_unlabelled(b"{").is_err());
        let mut old = FakeRuntime::container("old", State::Running, &[]);
        old.labels.remove(labels::INSTANCE);
        let new = FakeRuntime::container("new", State::Running, &[]);
        let fake = FakeRuntime::new(vec![old, new]);
        assert_eq!(fake.list_unlabelled().unwrap(), ["old"]);
    }

    #[test]
    fn a_bad_line_of_the_field_listing_is_an_error_naming_it() {
        let e = parse_ps(b"{\"Id\":\"a\"}\n{\"Names\":[\"x\"]}\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert_eq!(parse_ps(b"{\"Id\":\"a\"}\n\n").unwrap().len(), 1);
    }

    #[test]
    fn older_podman_spellings_parse() {
        let out =
            br#"[{"Id":"abc","Names":"one","State":"Stopped","Pid":-1,"Labels":{},"Extra":[1]}]"#;
        let cs = parse_ps(out).unwrap();
        assert_eq!(cs[0].name, "one");
        assert_eq!(cs[0].state, State::Exited);
        assert_eq!(cs[0].pid, 0);
        assert_eq!(cs[0].image, "");
    }

    #[test]
    fn malformed_ps_output_is_an_error() {
        // One object is a valid line of the field listing; a cut one is not.
        assert_eq!(parse_ps(br#"{"Id":"abc"}"#).unwrap().len(), 1);
        assert!(parse_ps(br#"{"Id":"abc""#).is_err());
        assert!(parse_ps(br#""abc""#).is_err());
        assert!(
            parse_ps(br#"[{"Names":["x"]}]"#).is_err(),
            "an entry needs an Id"
        );
        assert!(parse_ps(b"[\xff]").is_err());
    }

    #[test]
    fn list_runs_the_filtered_ps_and_parses_it() {
        let tmp = Scratch::new();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/podman/ps-fields-mixed.jsonl"
        );
        let podman = tmp.script(
            "podman",
            &format!("printf '%s\\0' \"$@\" > \"$ARGS\"\ncat '{fixture}'"),
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        // The fixture is unfiltered: the code drops the other instance and
        // the unlabelled container even when podman does not.
        let cs = p.list("isoexp").unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(by_name(&cs, "isoexp-run").state, State::Running);

        let args = std::fs::read(&args_file).unwrap();
        let args: Vec<String> = args
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            args,
            strings(&[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                "label=io.sidespawn.managed-by=sidespawn",
                "--filter",
                "label=io.sidespawn.instance=isoexp",
                "--format",
                PS_FORMAT,
            ])
        );
    }

    #[test]
    fn unparsable_list_output_is_a_parse_error() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "echo 'WARN[0000] not json'");
        let err = Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Parse { .. }), "{err}");
    }

    // ---- argv building and quoting ----

    #[test]
    fn request_argv_always_lands_after_the_image() {
        let hostile = ["--privileged", "-v", "/:/host", "--net=host", ""];
        let s = spec("sidespawn-dnsmasq-x", &hostile);
        let a = s.argv();
        let img = a.iter().position(|w| w == "localhost/dnsmasq:1").unwrap();
        assert_eq!(a[img - 1], "--", "options end before the image");
        assert_eq!(
            a[..img - 1],
            strings(&[
                "run",
                "-d",
                "--name=sidespawn-dnsmasq-x",
                "--label=io.sidespawn.kind=dnsmasq",
                "--label=io.sidespawn.managed-by=sidespawn",
                "--network=ns:/run/netns/qdhcp-1",
                "--pid=host",
            ])
        );
        assert_eq!(
            a[img + 1..],
            strings(&[
                "dnsmasq",
                "-k",
                "--privileged",
                "-v",
                "/:/host",
                "--net=host",
                ""
            ])
        );
    }

    #[test]
    fn values_that_look_like_options_stay_values() {
        let mut s = spec("-v", &[]);
        s.labels
            .insert("io.sidespawn.tag".to_owned(), "--privileged".to_owned());
        s.image = "--privileged".to_owned();
        let a = s.argv();
        let end = a.iter().position(|w| w == "--").unwrap();
        assert!(a[..end].contains(&"--name=-v".to_owned()));
        assert!(a[..end].contains(&"--label=io.sidespawn.tag=--privileged".to_owned()));
        assert!(!a[..end].iter().any(|w| w == "--privileged" || w == "-v"));
        assert_eq!(a[end + 1], "--privileged", "the image, after --");
    }

    #[test]
    fn describe_prints_the_exact_command_line() {
        let p = Podman::new("/usr/bin/podman", Duration::from_secs(1));
        assert_eq!(
            p.describe(&Call::List("abc".into())),
            format!(
                "/usr/bin/podman ps -a --no-trunc --filter label=io.sidespawn.managed-by=sidespawn --filter label=io.sidespawn.instance=abc --format '{PS_FORMAT}'"
            )
        );
        assert_eq!(
            p.describe(&Call::Kill("sidespawn-a".into(), Signal::Hup)),
            "/usr/bin/podman kill --signal=HUP -- sidespawn-a"
        );
        assert_eq!(
            p.describe(&Call::Stop("a b".into(), Duration::from_millis(1500))),
            "/usr/bin/podman stop --time=2 -- 'a b'"
        );
        assert_eq!(
            p.describe(&Call::Remove("x".into())),
            "/usr/bin/podman rm --force --time=0 -- x"
        );
        let run = p.describe(&Call::Run(spec("n", &["--conf-file=", "it's"])));
        assert!(
            run.ends_with(" -- localhost/dnsmasq:1 dnsmasq -k --conf-file= 'it'\\''s'"),
            "{run}"
        );
        assert_eq!(
            Podman::new("/opt/my podman", Duration::from_secs(1)).describe(&Call::List("i".into()))
                [..16],
            *"'/opt/my podman'"
        );
        let fake = FakeRuntime::default();
        assert_eq!(
            fake.describe(&Call::Kill("a".into(), Signal::Kill)),
            "podman kill --signal=KILL -- a"
        );
    }

    #[test]
    fn stop_rounds_sub_second_grace_up() {
        assert_eq!(stop_secs(Duration::ZERO), 0);
        assert_eq!(stop_secs(Duration::from_millis(1)), 1);
        assert_eq!(stop_secs(Duration::from_secs(10)), 10);
    }

    // ---- the command helper, with fake podman programs ----

    #[test]
    fn arguments_reach_podman_byte_exact() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "printf '%s\\0' \"$@\" > \"$ARGS\"");
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        p.kill("-x odd name", Signal::Term).unwrap();
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"kill\0--signal=TERM\0--\0-x odd name\0"
        );
    }

    #[test]
    fn run_returns_the_printed_id() {
        let tmp = Scratch::new();
        let p = Podman::new(
            tmp.script("podman", "echo '  4e9c4f2bb866  '"),
            Duration::from_secs(10),
        );
        assert_eq!(p.run(&spec("n", &[])).unwrap(), "4e9c4f2bb866");
        let silent = Podman::new(tmp.script("silent", "exit 0"), Duration::from_secs(10));
        let err = silent.run(&spec("n", &[])).unwrap_err();
        assert!(matches!(err, RuntimeError::Parse { .. }), "{err}");
    }

    #[test]
    fn non_zero_exit_is_failed_with_stderr() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "echo 'WARN[0000] a warning' >&2\necho 'Error: something broke' >&2\nexit 3",
        );
        let err = Podman::new(podman, Duration::from_secs(10))
            .kill("n", Signal::Hup)
            .unwrap_err();
        match &err {
            RuntimeError::Failed {
                args,
                status,
                stderr,
            } => {
                assert_eq!(args, "kill --signal=HUP -- n");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "WARN[0000] a warning\nError: something broke");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(err.to_string().contains("something broke"));
    }

    #[test]
    fn long_stderr_keeps_its_last_4_kib() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "i=0\nwhile [ $i -lt 3000 ]; do echo \"WARN[0000] noise line $i\" >&2; i=$((i+1)); done\n\
             echo 'Error: the real reason' >&2\nexit 125",
        );
        let err = Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap_err();
        let RuntimeError::Failed { stderr, .. } = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(stderr.len() <= STDERR_SHOWN + 6, "{}", stderr.len());
        assert!(stderr.starts_with("[...] "));
        assert!(stderr.ends_with("Error: the real reason"));
    }

    #[test]
    fn capped_reads_keep_the_chosen_end() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (head, cut) = read_capped(&input[..], 1000, Keep::Head);
        assert!(cut);
        assert_eq!(head, input[..1000]);
        let (tail, cut) = read_capped(&input[..], 1000, Keep::Tail);
        assert!(cut);
        assert_eq!(tail, input[input.len() - 1000..]);
        let (all, cut) = read_capped(&input[..10], 1000, Keep::Tail);
        assert!(!cut);
        assert_eq!(all, input[..10]);
    }

    #[test]
    fn missing_container_errors_are_classified() {
        let tmp = Scratch::new();
        let gone = tmp.script(
            "gone",
            "echo 'Error: no container with name or ID \"x\" found: no such container' >&2\nexit 125",
        );
        let p = Podman::new(gone, Duration::from_secs(10));
        assert!(matches!(
            p.kill("x", Signal::Hup),
            Err(RuntimeError::NoSuchContainer(n)) if n == "x"
        ));
        assert!(matches!(
            p.stop("x", Duration::from_secs(1)),
            Err(RuntimeError::NoSuchContainer(n)) if n == "x"
        ));
        p.remove("x")
            .expect("removing a missing container succeeds");

        let exited = tmp.script(
            "exited",
            "echo 'Error: can only kill running containers. 4e9c is in state exited: container state improper' >&2\nexit 125",
        );
        let p = Podman::new(exited, Duration::from_secs(10));
        assert!(matches!(
            p.kill("x", Signal::Hup),
            Err(RuntimeError::NotRunning(n)) if n == "x"
        ));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Podman::new("/nonexistent/sidespawn/podman", Duration::from_secs(1))
            .list("i")
            .unwrap_err();
        match &err {
            RuntimeError::Spawn { program, message } => {
                assert_eq!(program, "/nonexistent/sidespawn/podman");
                assert!(message.contains("not installed"), "{message}");
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
        assert!(err.to_string().contains("install podman"));
    }

    #[test]
    fn hanging_podman_is_killed_with_its_children() {
        let tmp = Scratch::new();
        // The helper `sleep` stands for a stuck runc: not podman itself, but
        // in its process group.
        let podman = tmp.script("podman", "sleep 30 &\necho $! > \"$PIDFILE\"\nwait");
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_millis(300))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        let err = p.list("i").unwrap_err();
        let took = t.elapsed();
        assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(err.to_string().contains("timed out"));
        let helper = std::fs::read_to_string(&pidfile).unwrap();
        assert!(wait_dead(helper.trim()), "helper {helper} still alive");
    }

    #[test]
    fn output_held_open_after_exit_is_freed_by_killing_the_group() {
        let tmp = Scratch::new();
        // Prints its answer and exits, but leaves a process in its group
        // holding stdout and stderr.
        let podman = tmp.script(
            "podman",
            "echo abc123\nsleep 30 &\necho $! > \"$PIDFILE\"\nexit 0",
        );
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_secs(20))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        assert_eq!(p.run(&spec("n", &[])).unwrap(), "abc123");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let leftover = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            wait_dead(leftover.trim()),
            "leftover {leftover} still alive"
        );
    }

    #[test]
    fn output_held_open_outside_the_group_fails_without_hanging() {
        let tmp = Scratch::new();
        // setsid puts the leftover out of reach of the group kill.
        let podman = tmp.script(
            "podman",
            "setsid sleep 30 &\necho $! > \"$PIDFILE\"\nexit 0",
        );
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_secs(20))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        let err = p.list("i").unwrap_err();
        let took = t.elapsed();
        let leftover = std::fs::read_to_string(&pidfile).unwrap();
        if let Ok(pid) = leftover.trim().parse() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), NixSignal::SIGKILL);
        }
        assert!(
            matches!(&err, RuntimeError::Failed { stderr, .. } if stderr.contains("kept its output open")),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn stop_gets_its_grace_time_on_top_of_the_call_timeout() {
        let tmp = Scratch::new();
        let slow = tmp.script("podman", "sleep 1");
        let p = Podman::new(slow, Duration::from_millis(300));
        p.stop("n", Duration::from_secs(2))
            .expect("a 1 s stop is within 300 ms + 2 s");
        assert!(matches!(
            p.kill("n", Signal::Hup),
            Err(RuntimeError::Timeout { .. })
        ));
    }

    #[test]
    fn scrubbed_variables_cannot_be_added_back() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "env > \"$OUT\"");
        let out = tmp.file("env");
        Podman::new(podman, Duration::from_secs(10))
            .with_env("OUT", out.to_string_lossy())
            .with_env("INVOCATION_ID", "0123")
            .with_env("NOTIFY_SOCKET", "/run/systemd/notify")
            .with_env("SIDESPAWN_MARK", "extra")
            .list("i")
            .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.lines().any(|l| l == "SIDESPAWN_MARK=extra"), "{env}");
        assert!(!env.contains("INVOCATION_ID="), "{env}");
        assert!(!env.contains("NOTIFY_SOCKET="), "{env}");
    }

    /// Run by `invocation_id_of_the_service_never_reaches_podman` in a child
    /// process whose environment has `INVOCATION_ID` set, as under systemd
    /// (setting it in this process would leak into tests running alongside).
    #[test]
    #[ignore = "helper: run in a child process by invocation_id_of_the_service_never_reaches_podman"]
    fn child_dumps_podman_env() {
        assert!(
            std::env::var_os("SIDESPAWN_ENV_DUMP").is_some(),
            "run by the parent test"
        );
        assert_eq!(
            std::env::var("INVOCATION_ID").as_deref(),
            Ok("5e1f"),
            "the parent sets it"
        );
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "env > \"$SIDESPAWN_ENV_DUMP\"");
        Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap();
    }

    #[test]
    fn invocation_id_of_the_service_never_reaches_podman() {
        let tmp = Scratch::new();
        let dump = tmp.file("env");
        // libtest names a test by its module path without the crate name.
        let (_crate, module) = module_path!().split_once("::").unwrap();
        let child = format!("{module}::child_dumps_podman_env");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &child,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("INVOCATION_ID", "5e1f")
            .env("SIDESPAWN_ENV_DUMP", &dump)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test failed or did not run:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(&dump).unwrap();
        // Inherited variables do reach podman...
        assert!(env.contains("SIDESPAWN_ENV_DUMP="), "{env}");
        // ...but not this one.
        assert!(!env.contains("INVOCATION_ID"), "{env}");
    }

    // ---- the fake ----

    #[test]
    fn fake_acts_like_podman_and_records_every_call() {
        let exited = FakeRuntime::container("old", State::Exited, &[(labels::KIND, "dnsmasq")]);
        let mut foreign = FakeRuntime::container("foreign", State::Running, &[]);
        foreign.labels.clear();
        let other = FakeRuntime::container(
            "other",
            State::Running,
            &[(labels::KIND, "dnsmasq"), (labels::INSTANCE, "b")],
        );
        let fake = FakeRuntime::new(vec![exited.clone(), foreign, other]);
        let own =
            crate::host::config::Profile::defaults(crate::shared::kind::Kind::Dnsmasq).instance;

        let listed = fake.list(&own).unwrap();
        assert_eq!(
            listed,
            vec![exited.clone()],
            "only our label and instance are listed"
        );
        assert_eq!(fake.list("b").unwrap().len(), 1);
        fake.clear_calls();
        let listed = fake.list(&own).unwrap();
        assert_eq!(listed, vec![exited.clone()]);

        let a = spec("a", &["x"]);
        let id_a = fake.run(&a).unwrap();
        let id_b = fake.run(&spec("b", &[])).unwrap();
        assert_ne!(id_a, id_b);
        let cs = fake.containers();
        let ca = by_name(&cs, "a");
        assert_eq!((ca.state.clone(), ca.pid), (State::Running, 10000));
        assert_eq!(ca.id, id_a);
        assert_eq!(ca.labels, a.labels);
        assert_eq!(ca.image, a.image);
        assert_eq!(by_name(&cs, "b").pid, 10001);

        let clash = fake.run(&a).unwrap_err();
        assert!(clash.to_string().contains("already in use"), "{clash}");

        fake.kill("a", Signal::Hup).unwrap();
        assert_eq!(by_name(&fake.containers(), "a").state, State::Running);
        fake.kill("a", Signal::Kill).unwrap();
        let ca = by_name(&fake.containers(), "a").clone();
        assert_eq!((ca.state, ca.pid, ca.exit_code), (State::Exited, 0, 137));
        assert!(matches!(
            fake.kill("a", Signal::Hup),
            Err(RuntimeError::NotRunning(_))
        ));
        assert!(matches!(
            fake.kill("nope", Signal::Hup),
            Err(RuntimeError::NoSuchContainer(_))
        ));

        fake.stop("b", Duration::from_secs(3)).unwrap();
        assert_eq!(by_name(&fake.containers(), "b").state, State::Exited);
        assert!(matches!(
            fake.stop("nope", Duration::ZERO),
            Err(RuntimeError::NoSuchContainer(_))
        ));

        fake.remove("a").unwrap();
        fake.remove("a").unwrap();
        assert!(fake.containers().iter().all(|c| c.name != "a"));

        assert_eq!(
            fake.calls(),
            vec![
                Call::List(own),
                Call::Run(a.clone()),
                Call::Run(spec("b", &[])),
                Call::Run(a),
                Call::Kill("a".into(), Signal::Hup),
                Call::Kill("a".into(), Signal::Kill),
                Call::Kill("a".into(), Signal::Hup),
                Call::Kill("nope".into(), Signal::Hup),
                Call::Stop("b".into(), Duration::from_secs(3)),
                Call::Stop("nope".into(), Duration::ZERO),
                Call::Remove("a".into()),
                Call::Remove("a".into()),
            ]
        );
        fake.clear_calls();
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn fake_failures_hit_only_their_target_until_cleared() {
        let fake = FakeRuntime::default();
        fake.fail_on("bad", "Error: runc: boom");
        let err = fake.run(&spec("bad", &[])).unwrap_err();
        match &err {
            RuntimeError::Failed { args, stderr, .. } => {
                assert!(args.starts_with("run -d --name=bad"), "{args}");
                assert_eq!(stderr, "Error: runc: boom");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(fake.containers().is_empty(), "a failed run creates nothing");
        fake.run(&spec("good", &[])).unwrap();
        assert!(fake.remove("bad").is_err());
        assert_eq!(fake.calls().len(), 3, "failed calls are recorded too");

        fake.fail_on_with(
            "good",
            RuntimeError::Timeout {
                args: "stop".into(),
                timeout: Duration::from_secs(1),
            },
        );
        assert!(matches!(
            fake.stop("good", Duration::ZERO),
            Err(RuntimeError::Timeout { .. })
        ));

        fake.fail_list("Error: database is locked");
        let own =
            crate::host::config::Profile::defaults(crate::shared::kind::Kind::Dnsmasq).instance;
        let err = fake.list(&own).unwrap_err();
        assert!(err.to_string().contains("database is locked"), "{err}");

        fake.clear_failures();
        assert_eq!(
            fake.list(&own).unwrap().len(),
            0,
            "spec() has no instance label"
        );
        assert_eq!(fake.containers().len(), 1);
        fake.remove("bad").unwrap();
    }
}
