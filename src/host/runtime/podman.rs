//! The real runtime: [`Podman`] runs every podman command through one
//! builder, with an argv vector, a timeout, the scrubbed environment and the
//! process-group discipline described in [the runtime seam](super); and
//! [`call_args`], the one mapping from a [`Call`] to podman's argv that both
//! execution and `describe` (dry runs) use.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use super::parse::{
    UNLABELLED_FORMAT, keep_managed, parse_event, parse_inspect, parse_ps, parse_unlabelled,
};
use super::*;

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

/// How long to wait for EOF on the pipes once podman itself has exited:
/// only a process podman left behind in its group could hold them open.
const PIPE_GRACE: Duration = Duration::from_millis(500);
/// The longest sleep between checks for podman's exit.
const POLL_MAX: Duration = Duration::from_millis(20);

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

    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        if pull {
            // A pull downloads layers: the call timeout of a run or a stop
            // is too short for a large image on a slow link.
            let args = image_args(&["pull", "--quiet"], image);
            return self
                .call(&args, self.timeout.max(PULL_TIMEOUT), |_| None)
                .map(drop);
        }
        // `podman image exists` answers with its exit status alone: 0
        // present, 1 absent (no stderr), anything else a failure.
        let args = image_args(&["image", "exists"], image);
        let f = self.exec(&args, self.timeout)?;
        match f.status.code() {
            Some(0) => Ok(()),
            Some(1) if f.stderr.trim().is_empty() => {
                Err(RuntimeError::NoSuchImage(image.to_owned()))
            }
            _ => Err(RuntimeError::Failed {
                args: error_args(&args),
                status: f.status.to_string(),
                stderr: summarise_stderr(&f.stderr),
            }),
        }
    }

    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let mut args = probe_args(image);
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            is_no_such_image(stderr).then(|| Err(RuntimeError::NoSuchImage(image.to_owned())))
        })
        .map(drop)
    }

    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        let args = events_args(instance);
        let mut cmd = self.command_for(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, as every call: dropping the stream kills
        // podman and whatever it started, and nothing else.
        cmd.process_group(0);
        // The stream lives as long as the thread that reads it; if this
        // process dies without dropping it, the kernel ends podman too
        // rather than leaving it following events for nobody.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is a single async-signal-safe
        // system call; the closure allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = spawn_retrying(&mut cmd).map_err(|e| RuntimeError::Spawn {
            program: self.program.display().to_string(),
            message: e.to_string(),
        })?;
        tracing::debug!(argv = %describe_argv(&self.program, &args), "following podman events");
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(|err| {
            std::thread::Builder::new()
                .name("podman-events-stderr".to_owned())
                .spawn(move || read_capped(err, STDERR_READ_CAP, Keep::Tail).0)
        });
        let (Some(stdout), Some(Ok(stderr))) = (stdout, stderr) else {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(RuntimeError::Spawn {
                program: self.program.display().to_string(),
                message: "cannot read the output of `podman events`".to_owned(),
            });
        };
        Ok(Box::new(EventStream {
            child: Some(child),
            lines: std::io::BufReader::new(stdout),
            stderr: Some(stderr),
            args: error_args(&args),
            instance: instance.to_owned(),
        }))
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

/// How far back a new subscription replays: podman needs some
/// milliseconds to open its event log after it starts, and an event in
/// that gap would otherwise be lost. Replayed events are only cues again.
const EVENTS_REPLAY: &str = "5s";
/// Longest event line read; our labels are bounded, so a longer line is
/// not one of ours.
const EVENT_LINE_CAP: u64 = 256 * 1024;

/// `podman events` for one configuration's containers, as JSON lines.
/// podman filters on the instance label; both labels are checked again on
/// each event, so the stream never carries another configuration's.
fn events_args(instance: &str) -> Vec<String> {
    [
        "events",
        "--since",
        EVENTS_REPLAY,
        "--format",
        "json",
        "--filter",
        "type=container",
        "--filter",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("label={}={instance}", labels::INSTANCE)])
    .collect()
}

/// A running `podman events`: yields each of the configuration's events;
/// ends when podman does (an error with its stderr when it failed).
/// Dropping it kills podman's process group before reaping it.
struct EventStream {
    child: Option<Child>,
    lines: std::io::BufReader<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    args: String,
    instance: String,
}

impl EventStream {
    /// The stream ended: reaps podman and says how it ended.
    fn finish(&mut self) -> Option<Result<ContainerEvent, RuntimeError>> {
        let mut child = self.child.take()?;
        let status = child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some(Err(RuntimeError::Failed {
                args: self.args.clone(),
                status: s.to_string(),
                stderr: summarise_stderr(&String::from_utf8_lossy(&stderr)),
            })),
            Err(e) => Some(Err(RuntimeError::Failed {
                args: self.args.clone(),
                status: format!("cannot collect exit status: {e}"),
                stderr: String::new(),
            })),
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<ContainerEvent, RuntimeError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        self.child.as_ref()?;
        loop {
            let mut line = Vec::new();
            let read = (&mut self.lines)
                .take(EVENT_LINE_CAP)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) | Err(_) => return self.finish(),
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") && line.len() as u64 >= EVENT_LINE_CAP {
                // Skip the rest of the over-long line, then say so.
                let mut rest = Vec::new();
                let _ = self.lines.read_until(b'\n', &mut rest);
                return Some(Err(RuntimeError::Parse {
                    args: self.args.clone(),
                    message: format!("an event line is over {EVENT_LINE_CAP} bytes"),
                }));
            }
            let text = String::from_utf8_lossy(&line);
            match parse_event(&text) {
                Ok(None) => continue,
                Ok(Some(ev)) => {
                    let l = &ev.labels;
                    let ours = l.get(labels::INSTANCE) == Some(&self.instance)
                        && l.get(labels::MANAGED_BY).map(String::as_str)
                            == Some(labels::MANAGED_BY_VALUE);
                    if ours {
                        return Some(Ok(ev));
                    }
                }
                Err(message) => {
                    return Some(Err(RuntimeError::Parse {
                        args: self.args.clone(),
                        message,
                    }));
                }
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Not reaped yet, so the group id cannot have been reused.
            kill_group(&mut child);
            let _ = child.wait();
        }
        // The stderr reader ends with podman's group.
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
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

/// Podman 4.3 without a local image and `--pull=never`: `Error:
/// localhost/x:1: image not known`.
fn is_no_such_image(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("image not known")
}

/// The longest a `podman pull` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// `podman WORDS -- IMAGE`.
fn image_args(words: &[&str], image: &str) -> Vec<String> {
    let mut a: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
    a.push("--".to_owned());
    a.push(image.to_owned());
    a
}

/// `podman run` of a throwaway probe container of `image`, up to the
/// image: removed on exit, never pulled, no network, no capabilities.
/// Its program and arguments follow.
fn probe_args(image: &str) -> Vec<String> {
    image_args(
        &[
            "run",
            "--rm",
            "--pull=never",
            "--network=none",
            "--cap-drop=all",
        ],
        image,
    )
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
pub(super) fn error_args(args: &[String]) -> String {
    crate::shared::ack::bounded(&quote_args(args), ARGS_SHOWN).into_owned()
}

pub(super) fn describe_argv(program: &Path, args: &[String]) -> String {
    let program = program.to_string_lossy();
    let mut s = shell_quote(&program).into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::test_util::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

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

    const RUN_NAME_IN_USE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/run-name-in-use.stderr"
    ));

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
    fn ensure_image_verifies_or_pulls_and_says_why_not() {
        let tmp = Scratch::new();
        // `image exists` of an absent image: exit 1, nothing on stderr.
        let podman = tmp.script(
            "podman",
            "printf '%s\\0' \"$@\" >> \"$ARGS\"\nif [ \"$1\" = image ]; then [ \"$4\" = here ] && exit 0; exit 1; fi\nexit 0",
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        p.ensure_image("here", false).unwrap();
        let err = p.ensure_image("-gone", false).unwrap_err();
        assert_eq!(err, RuntimeError::NoSuchImage("-gone".into()));
        assert!(err.to_string().contains("--pull"), "{err}");
        p.ensure_image("far", true).unwrap();
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"image\0exists\0--\0here\0image\0exists\0--\0-gone\0pull\0--quiet\0--\0far\0"
        );
        // Any other failure of `image exists` is not "absent".
        let broken = Podman::new(
            tmp.script("broken", "echo 'Error: database is locked' >&2\nexit 125"),
            Duration::from_secs(10),
        );
        let err = broken.ensure_image("x", false).unwrap_err();
        assert!(err.to_string().contains("database is locked"), "{err}");
    }

    #[test]
    fn probe_image_runs_a_throwaway_container_without_network() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "printf '%s\\0' \"$@\" > \"$ARGS\"\necho 'Error: x:1: image not known' >&2\nexit 125",
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        let err = p
            .probe_image(
                "x:1",
                &strings(&["dnsmasq", "--version"]),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(err, RuntimeError::NoSuchImage("x:1".into()));
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"run\0--rm\0--pull=never\0--network=none\0--cap-drop=all\0--\0x:1\0dnsmasq\0--version\0"
        );
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
}
