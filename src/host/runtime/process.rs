//! The one process runner every engine's CLI goes through: an argv vector
//! (never a shell), a timeout, the scrubbed environment, stdin closed,
//! stdout and stderr drained by their own threads with caps, and the
//! process-group discipline described in [the runtime seam](super). Podman
//! and docker differ in their argv and in the words of their errors, never
//! in how their processes are run; both [`super::Podman`] and
//! [`super::Docker`] hold a [`Runner`].

use std::io::{BufRead, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use super::{ContainerEvent, RuntimeError, labels};

/// Environment variables an engine's CLI must never inherit from sidespawn.
///
/// `INVOCATION_ID` tells podman it runs under systemd; it then leaves conmon
/// in the calling unit's cgroup instead of giving it a scope of its own, and
/// when the oneshot sync exits `KillMode=control-group` kills every conmon
/// (and with it the sidecars' supervision). `NOTIFY_SOCKET` would let
/// podman's sd-notify support send `READY=1`/`MAINPID=<conmon>` to *our*
/// unit (e.g. a `Type=notify` watch service) as if conmon were its main
/// process. The docker CLI only talks to its daemon and needs neither; they
/// are removed all the same, so no engine sees the unit's identity.
const SCRUBBED_ENV: &[&str] = &["INVOCATION_ID", "NOTIFY_SOCKET"];

/// The most of podman's stderr kept in an error. Podman prints its
/// `Error: ...` line last, after any warnings, so the tail is what matters.
pub(super) const STDERR_SHOWN: usize = 4096;
/// The most of a command line kept in an error (see [`error_args`]).
pub(super) const ARGS_SHOWN: usize = 2048;
/// The most of stderr read into memory at all (the rest is drained).
const STDERR_READ_CAP: usize = 64 * 1024;
/// The most of stdout read into memory. The listing asks only for fields of
/// bounded size ([`PS_FORMAT`]: no command line), about 1 KiB per
/// container whatever its argv, so this is tens of thousands of sidecars
/// and only stops a runaway.
pub(super) const STDOUT_READ_CAP: usize = 64 * 1024 * 1024;

/// How long to wait for EOF on the pipes once podman itself has exited:
/// only a process podman left behind in its group could hold them open.
const PIPE_GRACE: Duration = Duration::from_millis(500);
/// The longest sleep between checks for podman's exit.
const POLL_MAX: Duration = Duration::from_millis(20);

/// Runs one engine's CLI: the program, the time limit of every call and
/// the extra environment.
#[derive(Debug, Clone)]
pub struct Runner {
    program: PathBuf,
    timeout: Duration,
    extra_env: Vec<(String, String)>,
    /// The engine's name, for messages ("podman is not installed").
    engine: &'static str,
}

/// What a finished engine process produced.
pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: Vec<u8>,
    pub(super) stdout_truncated: bool,
    pub(super) stderr: String,
}

impl Runner {
    /// `program` is the engine's CLI (a bare name is looked up in `PATH`);
    /// `timeout` bounds every call (a `stop` gets its grace time on top);
    /// `engine` names it in messages.
    pub fn new(engine: &'static str, program: impl Into<PathBuf>, timeout: Duration) -> Runner {
        Runner {
            program: program.into(),
            timeout,
            extra_env: Vec::new(),
            engine,
        }
    }

    /// Adds a variable to the engine's environment. The scrubbed variables
    /// stay removed even if named here.
    pub fn push_env(&mut self, key: String, value: String) {
        self.extra_env.push((key, value));
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `ENGINE ARGS` as every engine process this process starts is made:
    /// argv only, stdin closed, the extra environment, and never the
    /// scrubbed variables ([`SCRUBBED_ENV`]).
    pub(super) fn command_for(&self, args: &[String]) -> Command {
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

    /// Runs `ENGINE ARGS` and waits at most `timeout`. This is the only
    /// place sidespawn starts an engine's CLI (but for `logs` and the event
    /// stream, which last as long as their reader wants). Errors only for what prevents a
    /// result (spawn failure, timeout); a non-zero exit is returned as a
    /// [`Finished`] for the caller to classify.
    pub(super) fn exec(
        &self,
        args: &[String],
        timeout: Duration,
    ) -> Result<Finished, RuntimeError> {
        let started = Instant::now();
        let shown_args = || self.error_args(args);
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
                format!(
                    "{e} is not installed or not in PATH (no such file); install {e} or set \"{key}\" in the host configuration{also}",
                    e = self.engine,
                    // A podman configuration most likely names its program with
                    // the older key.
                    key = if self.engine == "podman" { "podman" } else { "engine_program" },
                    also = if self.engine == "podman" { " (or \"engine_program\")" } else { "" },
                )
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
                    .name(format!("{}-stdout", self.engine))
                    .spawn(move || {
                        let (data, truncated) = read_capped(out, STDOUT_READ_CAP, Keep::Head);
                        let _ = tx.send((true, data, truncated));
                    })
            }),
            child.stderr.take().map(|err| {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(format!("{}-stderr", self.engine))
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
                        "engine call timed out, killed"
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
                        "the engine exited but a process it started keeps its output open; killing its process group"
                    );
                    kill_group(&mut child);
                    killed_leftovers = true;
                    continue;
                }
                let status = child.wait();
                return Err(RuntimeError::Failed {
                    args: shown_args(),
                    status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    stderr: format!(
                        "{} exited, but a process outside its process group kept its output open",
                        self.engine
                    ),
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
            "engine call finished"
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
    pub(super) fn call(
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
                args: self.error_args(args),
                status: f.status.to_string(),
                stderr: summarise_stderr(&f.stderr),
            });
        }
        if f.stdout_truncated {
            return Err(RuntimeError::Parse {
                args: self.error_args(args),
                message: format!("more than {STDOUT_READ_CAP} bytes of output"),
            });
        }
        Ok(f.stdout)
    }
}

/// Spawns, retrying briefly on ETXTBSY: an executable that is being
/// replaced (a package upgrade) or was just written while another thread
/// forked cannot be executed for a moment.
pub(super) fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
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
pub(super) fn has_exited(child: &Child) -> bool {
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

pub(super) fn kill_group(child: &mut Child) {
    let killed = i32::try_from(child.id())
        .ok()
        .is_some_and(|raw| killpg(Pid::from_raw(raw), NixSignal::SIGKILL).is_ok());
    if !killed {
        let _ = child.kill();
    }
}

/// Which end of an over-long stream to keep.
#[derive(Clone, Copy)]
pub(super) enum Keep {
    /// stdout: anything cut makes it unusable anyway, so keep the start.
    Head,
    /// stderr: podman's `Error:` line comes last, after any warnings.
    Tail,
}

/// Reads to EOF, keeping at most `cap` bytes but draining the rest so the
/// writer never blocks on a full pipe. Returns whether anything was dropped.
pub(super) fn read_capped(mut r: impl Read, cap: usize, keep: Keep) -> (Vec<u8>, bool) {
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
pub(super) fn summarise_stderr(stderr: &str) -> String {
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

use crate::host::shell::{quote_words as quote_args, shell_quote};

/// The command line as errors show it: quoted, and cut after
/// [`ARGS_SHOWN`] bytes. A request's argv can be as long as the queue allows
/// and every message that names the command ends up in an acknowledgement,
/// the reject log or the state; the start (options, name, image) is what
/// identifies the call.
pub(super) fn error_args(engine: &str, args: &[String]) -> String {
    let mut line = String::with_capacity(engine.len() + 1);
    line.push_str(engine);
    line.push(' ');
    line.push_str(&quote_args(args));
    crate::shared::ack::bounded(&line, ARGS_SHOWN).into_owned()
}

impl Runner {
    /// [`error_args`] of this engine.
    pub(super) fn error_args(&self, args: &[String]) -> String {
        error_args(self.engine, args)
    }

    /// The command line `describe` prints.
    pub(super) fn describe(&self, args: &[String]) -> String {
        describe_argv(&self.program, args)
    }

    /// A spawn error of this engine's program.
    pub(super) fn spawn_error(&self, e: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            program: self.program.display().to_string(),
            message: e.to_string(),
        }
    }
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

/// A followed engine process (an event stream), read line by line. Its own
/// process group, like every engine call; dropping it kills that group
/// before reaping it, so the subscription ends with its reader.
pub(super) struct Stream {
    child: Child,
    lines: std::io::BufReader<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    args: String,
    done: bool,
}

/// Longest line read from a stream; an engine's event about one of our
/// containers is a few KiB (our labels are bounded), so a longer line is
/// not one of ours and is skipped with an error.
pub(super) const STREAM_LINE_CAP: u64 = 256 * 1024;

impl Runner {
    /// Starts `ENGINE ARGS` without a time limit, its stdout to be read
    /// line by line with [`Stream::next_line`].
    pub(super) fn stream(&self, args: &[String]) -> Result<Stream, RuntimeError> {
        let mut cmd = self.command_for(args);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // The stream lives as long as the thread that reads it; if this
        // process dies without dropping it, the kernel ends the engine's
        // process too rather than leaving it following events for nobody.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is a single async-signal-safe
        // system call; the closure allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = spawn_retrying(&mut cmd).map_err(|e| self.spawn_error(e))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(RuntimeError::Spawn {
                program: self.program.display().to_string(),
                message: "its output could not be captured".to_owned(),
            });
        };
        let stderr = std::thread::Builder::new()
            .name(format!("{}-events-stderr", self.engine))
            .spawn(move || read_capped(err, STDERR_READ_CAP, Keep::Tail).0)
            .ok();
        tracing::debug!(argv = %describe_argv(&self.program, args), "engine stream started");
        Ok(Stream {
            child,
            lines: std::io::BufReader::new(out),
            stderr,
            args: self.error_args(args),
            done: false,
        })
    }
}

impl Stream {
    /// The next line of output; at its end, an error if the engine failed
    /// (with its stderr), then `None`.
    pub(super) fn next_line(&mut self) -> Option<Result<String, RuntimeError>> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let read = (&mut self.lines)
            .take(STREAM_LINE_CAP)
            .read_until(b'\n', &mut line);
        let end: Option<std::io::Result<()>> = match read {
            Ok(0) => None,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= STREAM_LINE_CAP => {
                // Skip the rest of the over-long line, then say so.
                let mut rest = Vec::new();
                let _ = self.lines.read_until(b'\n', &mut rest);
                return Some(Err(RuntimeError::Parse {
                    args: self.args.clone(),
                    message: format!("a line is over {STREAM_LINE_CAP} bytes"),
                }));
            }
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                }
                return Some(Ok(String::from_utf8_lossy(&line).into_owned()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return self.next_line(),
            Err(e) => Some(Err(e)),
        };
        self.done = true;
        let status = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match (end, status) {
            (_, Ok(s)) if s.success() => None,
            (Some(Err(e)), _) => Some(Err(RuntimeError::Failed {
                args: self.args.clone(),
                status: format!("reading its output: {e}"),
                stderr: summarise_stderr(&String::from_utf8_lossy(&stderr)),
            })),
            (_, s) => Some(Err(RuntimeError::Failed {
                args: self.args.clone(),
                status: s.map_or_else(|e| e.to_string(), |s| s.to_string()),
                stderr: summarise_stderr(&String::from_utf8_lossy(&stderr)),
            })),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.done {
            // Not reaped yet (next_line reaps only at the end), so the
            // group id still belongs to this child.
            kill_group(&mut self.child);
            let _ = self.child.wait();
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

/// A followed engine event stream as [`ContainerEvent`]s: each line parsed
/// by the engine's own `parse` (`None` for what is not a container event),
/// and only the configuration's own sidecars passed on. The engine filters
/// on the labels already; both are checked again here, so the stream never
/// carries another configuration's containers.
pub(super) struct EventIter {
    stream: Stream,
    instance: String,
    parse: fn(&str) -> Result<Option<ContainerEvent>, String>,
}

impl EventIter {
    pub(super) fn new(
        stream: Stream,
        instance: &str,
        parse: fn(&str) -> Result<Option<ContainerEvent>, String>,
    ) -> EventIter {
        EventIter {
            stream,
            instance: instance.to_owned(),
            parse,
        }
    }
}

impl Iterator for EventIter {
    type Item = Result<ContainerEvent, RuntimeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.stream.next_line()? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if line.trim().is_empty() {
                continue;
            }
            match (self.parse)(&line) {
                Ok(Some(ev)) => {
                    let l = &ev.labels;
                    let ours = l.get(labels::INSTANCE) == Some(&self.instance)
                        && l.get(labels::MANAGED_BY).map(String::as_str)
                            == Some(labels::MANAGED_BY_VALUE);
                    if ours {
                        return Some(Ok(ev));
                    }
                }
                Ok(None) => {}
                Err(message) => {
                    return Some(Err(RuntimeError::Parse {
                        args: self.stream.args.clone(),
                        message,
                    }));
                }
            }
        }
    }
}
