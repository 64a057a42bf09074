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

Mount this binary under the program names in a directory that comes before the
distribution's on the agent's PATH (wrappers/agent-mounts.sh: /usr/local/sbin), and as
the kill scripts. Probes (`dnsmasq --version`, `haproxy -v`, ...) run the next program
of that name on PATH after the wrapper's directory, e.g. /usr/sbin/dnsmasq.
Configuration (optional): $SIDESPAWN_WRAPPER_CONFIG or /etc/sidespawn/wrapper.json.";

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

/// Set in the environment of a probe's real program; a wrapper that finds it set on a probe
/// was reached through another copy of itself and stops instead of going round in a loop.
const PROBE_GUARD_ENV: &str = "SIDESPAWN_WRAPPER_PROBE";

/// Replaces this process with the real program, for probes. Returns only on
/// failure.
///
/// The real program is `kinds.<kind>.passthrough` when configured, else the next `<kind>` on
/// `PATH` after the wrapper's own directory (see [`real_program`]). The wrapper is not
/// privileged (no set-id bit, no capabilities of its own): whatever it runs, its caller could
/// run directly with the same `PATH`.
fn passthrough(kind: Kind, kconf: &KindConfig, args: &[String]) -> Failure {
    if std::env::var_os(PROBE_GUARD_ENV).is_some() {
        return failure(format!(
            "`{kind} {}` is a probe, and the program found for it is a sidespawn-wrapper as well \
             (a copy of it on PATH after this one); set kinds.{kind}.passthrough to the real \
             program's path in the wrapper configuration",
            args.join(" ")
        ));
    }
    let (real, how) = match &kconf.passthrough {
        Some(real) => (real.clone(), format!("kinds.{kind}.passthrough")),
        None => {
            let me = std::fs::metadata("/proc/self/exe")
                .map(|m| FileId::of(&m))
                .map_err(|e| {
                    failure(format!(
                        "`{kind} {}` is a probe, answered by the real program, and the wrapper \
                         cannot identify itself (/proc/self/exe: {e}) to find it on PATH; set \
                         kinds.{kind}.passthrough in the wrapper configuration",
                        args.join(" ")
                    ))
                });
            let me = match me {
                Ok(me) => me,
                Err(f) => return f,
            };
            match real_program(kind.as_str(), std::env::var_os("PATH").as_deref(), me) {
                Ok(real) => (real, "the next match on PATH".to_owned()),
                Err(why) => {
                    return failure(format!(
                        "`{kind} {}` is a probe, answered by the real program: {why}",
                        args.join(" ")
                    ));
                }
            }
        }
    };
    let err = std::process::Command::new(&real)
        .arg0(kind.as_str())
        .args(args)
        .env(PROBE_GUARD_ENV, "1")
        .exec();
    failure(format!(
        "cannot run probe program {} ({how}): {err}",
        real.display()
    ))
}

/// A file's identity: two paths name the same file (a bind mount, a hard link) when equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The real `name` for a probe: the first executable regular file `<dir>/<name>` on `path`
/// after the entry that holds the wrapper itself (`me`), or anywhere on `path` when no entry
/// holds it (the wrapper was run by its full path). Empty and relative entries are skipped
/// (they would depend on the working directory), and so is every file that is the wrapper
/// (it may be mounted under several directories), so the wrapper never runs itself.
fn real_program(
    name: &str,
    path: Option<&std::ffi::OsStr>,
    me: FileId,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Err(format!(
            "PATH is not set, so the real {name} cannot be found after the wrapper; set PATH \
             (the wrapper's directory first, then the distribution's) or kinds.{name}.passthrough"
        ));
    };
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .collect();
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (FileId::of(&m), m));
    let own = dirs
        .iter()
        .position(|d| id(&d.join(name)).is_some_and(|(f, _)| f == me));
    let after = own.map_or(0, |i| i + 1);
    for dir in &dirs[after..] {
        let candidate = dir.join(name);
        if let Some((f, m)) = id(&candidate)
            && f != me
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(match own {
        Some(i) => format!(
            "no executable {name} on PATH after the wrapper's directory {} (PATH={}); install \
             the distribution's {name}, or set kinds.{name}.passthrough",
            dirs[i].display(),
            path.to_string_lossy()
        ),
        None => format!(
            "no executable {name} on PATH other than the wrapper (PATH={}); install the \
             distribution's {name}, or set kinds.{name}.passthrough",
            path.to_string_lossy()
        ),
    })
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
    use std::ffi::OsStr;

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

    /// A directory of files for [`real_program`], removed on drop.
    struct Dirs(std::path::PathBuf);

    impl Dirs {
        fn new() -> Dirs {
            let d = std::env::temp_dir().join(format!(
                "sidespawn-realprog-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dirs(d)
        }

        /// `<dir>/dnsmasq` with `mode`; returns the directory.
        fn program(&self, dir: &str, mode: u32) -> std::path::PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let d = self.0.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join("dnsmasq");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            d
        }

        fn id(&self, dir: &Path) -> FileId {
            FileId::of(&std::fs::metadata(dir.join("dnsmasq")).unwrap())
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn path_of(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn real_program_is_the_next_match_after_the_wrapper() {
        let t = Dirs::new();
        let before = t.program("before", 0o755);
        let wrapper = t.program("wrapper", 0o755);
        let plain = t.program("plain", 0o644);
        let real = t.program("real", 0o755);
        let later = t.program("later", 0o755);
        let me = t.id(&wrapper);
        // The wrapper bind-mounted at a second directory is the same file.
        let again = t.0.join("again");
        std::fs::create_dir_all(&again).unwrap();
        std::fs::hard_link(wrapper.join("dnsmasq"), again.join("dnsmasq")).unwrap();

        let path = path_of(&[&before, &wrapper, &plain, &again, &real, &later]);
        assert_eq!(
            real_program("dnsmasq", Some(&path), me).unwrap(),
            real.join("dnsmasq"),
            "not the one before the wrapper, not a non-executable one, never the wrapper"
        );

        // Empty and relative entries are never searched, even when they hold a program.
        std::fs::create_dir_all(t.0.join("rel")).unwrap();
        let mut hostile = OsString::from(":rel:.:");
        hostile.push(path_of(&[&wrapper]));
        hostile.push("::rel");
        let err = real_program("dnsmasq", Some(&hostile), me).unwrap_err();
        assert!(err.contains("after the wrapper's directory"), "{err}");

        // Nothing after the wrapper: an error naming the fix, not the program before it.
        let path = path_of(&[&real, &wrapper]);
        let err = real_program("dnsmasq", Some(&path), me).unwrap_err();
        assert!(
            err.contains("kinds.dnsmasq.passthrough")
                && err.contains(&wrapper.display().to_string()),
            "{err}"
        );

        // Run by its full path, the wrapper takes the first program on PATH that is not itself.
        let path = path_of(&[&again, &real]);
        let elsewhere = FileId {
            dev: me.dev,
            ino: u64::MAX,
        };
        assert_eq!(
            real_program("dnsmasq", Some(&path), elsewhere).unwrap(),
            again.join("dnsmasq")
        );
        assert_eq!(
            real_program("dnsmasq", Some(&path_of(&[&again, &real])), me).unwrap(),
            real.join("dnsmasq")
        );

        assert!(
            real_program("dnsmasq", None, me)
                .unwrap_err()
                .contains("PATH is not set")
        );
        assert!(real_program("dnsmasq", Some(OsStr::new("")), me).is_err());
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
