//! The in-container wrapper: turns Neutron's invocation of `dnsmasq`,
//! `haproxy`, ... or `<kind>-kill` into a queued request record.
//!
//! It never starts the daemon itself and never talks to podman. It never
//! reads stdin, never forks a child that could outlive it (probes replace the
//! process by exec), prints nothing on stdout when it succeeds, and exits 0
//! only once the whole record is in the queue. Exit codes: 0 done, 1 failed,
//! 2 usage or an argument it refuses.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::config::{KindConfig, WrapperConfig};
use crate::shared::ack::{Ack, MAX_ACK_BYTES, Outcome};
use crate::shared::kind::Kind;
use crate::shared::queue::{QueueDir, QueueError};
use crate::shared::record::{Action, MAX_LINE_BYTES, Record, Signal, VERSION, new_id, now_ms};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

const USAGE: &str = "\
usage: dnsmasq|haproxy|keepalived|radvd ARGS...      (queue a start request)
       dnsmasq-kill|haproxy-kill|... SIGNAL PID      (SIGNAL: HUP, 15, 9, TERM, KILL)
       sidespawn-wrapper --kind KIND -- ARGS...      (explicit start request)
       sidespawn-wrapper --kill KIND SIGNAL PID      (explicit signal request)

Bind-mount this binary over the program names inside the agent container.
Configuration: $SIDESPAWN_WRAPPER_CONFIG or /etc/sidespawn/wrapper.json.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Start { kind: Kind, args: Vec<OsString> },
    Signal { kind: Kind, args: Vec<OsString> },
    Help,
    Version,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: format!("{}\n{USAGE}", message.into()),
    }
}

fn failure(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        message: message.to_string(),
    }
}

fn parse_invocation(argv: &[OsString]) -> Result<Invocation, Failure> {
    let name = argv
        .first()
        .map(|a| Path::new(a).file_name().unwrap_or(a.as_os_str()))
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let rest = argv.get(1..).unwrap_or(&[]).to_vec();
    if let Ok(kind) = name.parse::<Kind>() {
        return Ok(Invocation::Start { kind, args: rest });
    }
    if let Some(k) = name.strip_suffix("-kill")
        && let Ok(kind) = k.parse::<Kind>()
    {
        return Ok(Invocation::Signal { kind, args: rest });
    }
    let first = rest.first().and_then(|a| a.to_str());
    match first {
        Some("--help" | "-h") => Ok(Invocation::Help),
        Some("--version" | "-V") => Ok(Invocation::Version),
        Some("--kind") => {
            let kind = parse_kind_arg(rest.get(1))?;
            let args = match rest.get(2).and_then(|a| a.to_str()) {
                Some("--") => rest[3..].to_vec(),
                None => Vec::new(),
                Some(_) => return Err(usage("expected `--` after `--kind KIND`")),
            };
            Ok(Invocation::Start { kind, args })
        }
        Some("--kill") => {
            let kind = parse_kind_arg(rest.get(1))?;
            Ok(Invocation::Signal {
                kind,
                args: rest[2..].to_vec(),
            })
        }
        _ => Err(usage(format!(
            "called as {name:?}, which names no kind; expected dnsmasq, haproxy, keepalived, radvd or <kind>-kill"
        ))),
    }
}

fn parse_kind_arg(arg: Option<&OsString>) -> Result<Kind, Failure> {
    let s = arg
        .and_then(|a| a.to_str())
        .ok_or_else(|| usage("missing KIND"))?;
    s.parse::<Kind>().map_err(|e| usage(e.to_string()))
}

/// Every argument must be UTF-8 to be recorded losslessly in JSON; refuse
/// rather than mangle. Positions count from 1, as in `$1`.
fn utf8_args(args: Vec<OsString>) -> Result<Vec<String>, Failure> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| Failure {
                code: EXIT_USAGE,
                message: format!(
                    "argument {} ({:?}) is not valid UTF-8; refusing to queue it rather than change it",
                    i + 1,
                    a
                ),
            })
        })
        .collect()
}

/// Runs the wrapper for `argv` and returns the process exit code.
pub fn run(argv: Vec<OsString>) -> i32 {
    let name = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or(a.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| "sidespawn-wrapper".into());
    match run_inner(argv) {
        Ok(()) => EXIT_OK,
        Err(f) => {
            eprintln!("sidespawn-wrapper ({name}): {}", f.message);
            f.code
        }
    }
}

fn run_inner(argv: Vec<OsString>) -> Result<(), Failure> {
    let inv = parse_invocation(&argv)?;
    let (kind, args, action) = match inv {
        Invocation::Help => {
            // Help was asked for explicitly: stdout is the right place.
            println!("{USAGE}");
            return Ok(());
        }
        Invocation::Version => {
            println!("sidespawn-wrapper {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Invocation::Start { kind, args } => (kind, utf8_args(args)?, Action::Start),
        Invocation::Signal { kind, args } => (kind, utf8_args(args)?, Action::Signal),
    };
    let config = WrapperConfig::load().map_err(failure)?;
    let kconf = config.kind(kind);

    if action == Action::Start && kconf.is_probe(kind, &args) {
        return Err(passthrough(kind, &kconf, &args));
    }

    let (signal, pid, argv) = match action {
        Action::Start => (None, None, args),
        Action::Signal => {
            let [sig, pid] = args.as_slice() else {
                return Err(usage(format!(
                    "{kind}-kill takes exactly two arguments, SIGNAL and PID; got {}",
                    args.len()
                )));
            };
            let signal = Signal::from_arg(sig).ok_or_else(|| {
                usage(format!(
                    "unsupported signal {sig:?}; Neutron sends HUP, 15 or 9 (TERM and KILL are accepted too)"
                ))
            })?;
            let pid = pid
                .parse::<u32>()
                .ok()
                .filter(|p| (2..=crate::shared::record::MAX_PID).contains(p))
                .ok_or_else(|| usage(format!("invalid pid {pid:?}")))?;
            (Some(signal), Some(pid), Vec::new())
        }
    };

    let tag = match std::env::var_os("PROCESS_TAG") {
        None => None,
        Some(t) if t.is_empty() => None,
        Some(t) => Some(t.into_string().map_err(|t| Failure {
            code: EXIT_USAGE,
            message: format!("PROCESS_TAG {t:?} is not valid UTF-8"),
        })?),
    };

    // Neutron's tag names the namespace's id: compare those names first.
    let candidates = tag
        .as_deref()
        .map(crate::shared::netns::candidates_from_tag)
        .unwrap_or_default();
    let netns = crate::shared::netns::identify(&config.netns_dir, &candidates).map_err(failure)?;
    // Kill scripts run in the host network on Neutron before 2025.1; the host
    // finds the sidecar by pid, so a signal request needs no namespace.
    if netns.is_none() && action == Action::Start && !kconf.allow_host_network {
        return Err(failure(format!(
            "not running in a named network namespace (no entry of {} is this process's /proc/self/ns/net); \
             Neutron runs `ip netns exec <ns> {kind} ...`. To allow {kind} on the host network, set \
             kinds.{kind}.allow_host_network in the wrapper configuration",
            config.netns_dir.display()
        )));
    }

    let ts = now_ms();
    let record = Record {
        v: VERSION,
        id: new_id(ts),
        kind,
        action,
        argv,
        netns,
        tag,
        signal,
        pid,
        ts,
    };
    // The host would reject it; say why now, to the caller who can fix it.
    record.validate().map_err(|e| Failure {
        code: EXIT_USAGE,
        message: e.to_string(),
    })?;
    // So would it a line over its limit, without an id to answer: a start request, not waited
    // for, would vanish without a word.
    let line_len = record.to_line().len() - 1;
    if line_len > MAX_LINE_BYTES {
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!(
                "the request is {line_len} bytes as a queue line, over the host's limit of {MAX_LINE_BYTES} bytes; refusing to queue it"
            ),
        });
    }

    let queue = QueueDir::new(&config.queue_root, kind);
    let lock_timeout = Duration::from_millis(config.lock_timeout_ms);
    queue
        .append(&record, lock_timeout, || {
            eprintln!(
                "sidespawn-wrapper: waiting for lock on {} (up to {:?})",
                queue.lock_path().display(),
                lock_timeout
            )
        })
        .map_err(|e: QueueError| failure(e))?;

    let wait = match action {
        Action::Start => kconf.start_wait,
        Action::Signal => kconf.kill_wait,
    };
    if wait {
        let ack = wait_for_ack(
            &queue,
            &record.id,
            Duration::from_millis(kconf.wait_timeout_ms),
        )?;
        if ack.result != Outcome::Ok {
            return Err(failure(format!(
                "request {} {}: {}",
                record.id,
                match ack.result {
                    Outcome::Failed => "failed",
                    _ => "was rejected",
                },
                ack.message
            )));
        }
    }
    Ok(())
}

/// Replaces this process with the real program, for probes. Returns only on
/// failure.
fn passthrough(kind: Kind, kconf: &KindConfig, args: &[String]) -> Failure {
    let Some(real) = &kconf.passthrough else {
        return failure(format!(
            "`{kind} {}` is a probe, answered by the real program, and none is configured; \
             set kinds.{kind}.passthrough to its path (e.g. /usr/sbin/{kind}.real) in the wrapper configuration",
            args.join(" ")
        ));
    };
    let err = std::process::Command::new(real)
        .arg0(kind.as_str())
        .args(args)
        .exec();
    failure(format!(
        "cannot run probe program {} (kinds.{kind}.passthrough): {err}",
        real.display()
    ))
}

/// Waits for the host's acknowledgement of `id`, watching the acks directory
/// with inotify rather than polling. Removes the ack once read.
fn wait_for_ack(queue: &QueueDir, id: &str, timeout: Duration) -> Result<Ack, Failure> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    let dir = queue.acks();
    let path = queue.ack(id);
    let deadline = Instant::now() + timeout;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| failure(format!("cannot watch {}: {e}", dir.display())))?;
    // The acks directory may not exist before the host's first answer.
    let _ = std::fs::create_dir(&dir);
    inotify
        .add_watch(
            &dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .map_err(|e| failure(format!("cannot watch {}: {e}", dir.display())))?;
    loop {
        // Checked after the watch is armed, so an ack written in between is
        // seen here rather than missed.
        if let Some(ack) = read_ack(&path, id)? {
            let _ = std::fs::remove_file(&path);
            return Ok(ack);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failure(format!(
                "request {id} was queued in {} but the host did not acknowledge it within {timeout:?}; \
                 check `systemctl status sidespawn@{}.path` and `sidespawn status` on the host",
                queue.dir().display(),
                queue
                    .dir()
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
            )));
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(failure(format!("waiting on {}: {e}", dir.display()))),
        }
        // Drain; the events are only a cue to look again.
        let _ = inotify.read_events();
    }
}

fn read_ack(path: &Path, id: &str) -> Result<Option<Ack>, Failure> {
    use std::io::Read;
    let file =
        match crate::shared::queue::open_nofollow(path, std::fs::OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failure(format!("cannot read {}: {e}", path.display()))),
        };
    let mut text = Vec::new();
    file.take(MAX_ACK_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| failure(format!("cannot read {}: {e}", path.display())))?;
    let ack: Ack = serde_json::from_slice(&text)
        .map_err(|e| failure(format!("invalid acknowledgement {}: {e}", path.display())))?;
    if ack.id != id {
        return Err(failure(format!(
            "acknowledgement {} is for request {}, not {id}",
            path.display(),
            ack.id
        )));
    }
    Ok(Some(ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn dispatch_by_argv0() {
        assert_eq!(
            parse_invocation(&os(&["/usr/sbin/dnsmasq", "-k", ""])).ok(),
            Some(Invocation::Start {
                kind: Kind::Dnsmasq,
                args: os(&["-k", ""])
            })
        );
        assert_eq!(
            parse_invocation(&os(&["/etc/neutron/kill_scripts/haproxy-kill", "HUP", "1"])).ok(),
            Some(Invocation::Signal {
                kind: Kind::Haproxy,
                args: os(&["HUP", "1"])
            })
        );
        assert_eq!(
            parse_invocation(&os(&[
                "sidespawn-wrapper",
                "--kind",
                "radvd",
                "--",
                "-C",
                "x"
            ]))
            .ok(),
            Some(Invocation::Start {
                kind: Kind::Radvd,
                args: os(&["-C", "x"])
            })
        );
        for bad in [
            &["bash"][..],
            &["sidespawn-wrapper"],
            &["sidespawn-wrapper", "--kind", "bash", "--"],
            &["sidespawn-wrapper", "--kind", "dnsmasq", "x"],
            &["conntrackd-kill", "9", "1"],
        ] {
            let f = parse_invocation(&os(bad)).expect_err("refused");
            assert_eq!(f.code, EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn non_utf8_argument_names_its_position() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![OsString::from("ok"), OsString::from_vec(vec![0x66, 0xff])];
        let f = utf8_args(args).expect_err("refused");
        assert_eq!(f.code, EXIT_USAGE);
        assert!(f.message.contains("argument 2"), "{}", f.message);
    }
}
