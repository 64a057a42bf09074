//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify`
//! services: readiness, status text, watchdog pings, reload and stop.
//!
//! A notification is one datagram of `KEY=VALUE` lines sent to the Unix
//! socket named by `$NOTIFY_SOCKET` — a path, or an abstract socket when the
//! name starts with `@`. That is all libsystemd does too, so no dependency is
//! needed. Sending never blocks the caller for long (datagram sockets to a
//! listening manager do not block) and a failed send is returned, never
//! fatal: a service keeps working when the manager is gone.
//!
//! The watchdog interval comes from `$WATCHDOG_USEC`; when `$WATCHDOG_PID`
//! is set the watchdog is meant for that process only, so a child that
//! inherited the environment does not ping in its parent's name.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Environment variable naming the manager's notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// A notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid {NOTIFY_SOCKET_ENV} {0:?}: not an absolute path nor an @abstract name")]
    BadAddress(String),
    #[error("cannot address the notification socket {addr}: {source}")]
    Address {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a socket to notify {addr}: {source}")]
    Socket {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send {what:?} to the notification socket {addr}: {source}")]
    Send {
        addr: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One field of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Start-up (or a reload) finished.
    Ready,
    /// A configuration reload begins; `Ready` ends it.
    Reloading,
    /// Shutdown begins.
    Stopping,
    /// The watchdog keep-alive ping.
    Watchdog,
    /// Free-form status text (`systemctl status` shows it).
    Status(String),
}

impl State {
    fn write(&self, out: &mut String) {
        match self {
            State::Ready => out.push_str("READY=1"),
            State::Reloading => out.push_str("RELOADING=1"),
            State::Stopping => out.push_str("STOPPING=1"),
            State::Watchdog => out.push_str("WATCHDOG=1"),
            State::Status(text) => {
                out.push_str("STATUS=");
                // A newline would start a new assignment: the text is one line.
                out.extend(
                    text.chars()
                        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
                );
            }
        }
    }
}

/// The datagram for `states`: one assignment per line.
pub fn format(states: &[State]) -> String {
    let mut out = String::new();
    for s in states {
        s.write(&mut out);
        out.push('\n');
    }
    out
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// As given, for messages.
    name: String,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for; `None` when it is unset or
    /// empty (not run by a manager that listens).
    pub fn from_env() -> Option<Result<Notifier, NotifyError>> {
        let name = std::env::var(NOTIFY_SOCKET_ENV).ok()?;
        if name.is_empty() {
            return None;
        }
        Some(Notifier::new(&name))
    }

    /// A notifier sending to `name`: an absolute path, or `@NAME` for the
    /// abstract socket NAME.
    pub fn new(name: &str) -> Result<Notifier, NotifyError> {
        let addr = if let Some(abs) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abs.as_bytes())
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)
        } else {
            return Err(NotifyError::BadAddress(name.to_owned()));
        }
        .map_err(|source| NotifyError::Address {
            addr: name.to_owned(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket {
            addr: name.to_owned(),
            source,
        })?;
        Ok(Notifier {
            socket,
            addr,
            name: name.to_owned(),
        })
    }

    /// Sends `states` as one notification.
    pub fn notify(&self, states: &[State]) -> Result<(), NotifyError> {
        let msg = format(states);
        self.socket
            .send_to_addr(msg.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                addr: self.name.clone(),
                what: msg.trim_end().to_owned(),
                source,
            })
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, as
/// `sd_watchdog_enabled(3)` recommends, or `None` when no watchdog is set
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var(WATCHDOG_USEC_ENV).ok().as_deref(),
        std::env::var(WATCHDOG_PID_ENV).ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on given values, for tests.
pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_one_assignment_per_line() {
        assert_eq!(
            format(&[
                State::Ready,
                State::Status("watching dnsmasq\nand haproxy".into())
            ]),
            "READY=1\nSTATUS=watching dnsmasq and haproxy\n"
        );
        assert_eq!(format(&[State::Watchdog]), "WATCHDOG=1\n");
        assert_eq!(
            format(&[State::Reloading, State::Stopping]),
            "RELOADING=1\nSTOPPING=1\n"
        );
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!(
            "sidespawn-sdn-{}",
            crate::shared::record::new_id(0)
        ));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.notify(&[State::Ready, State::Status("ok".into())])
            .unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok\n");
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
        // Nobody listens any more: an error naming the socket, not a panic.
        let e = n.notify(&[State::Watchdog]).unwrap_err().to_string();
        assert!(e.contains("notify") && e.contains("WATCHDOG=1"), "{e}");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("sidespawn-test-{}", crate::shared::record::new_id(0));
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.notify(&[State::Stopping]).unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\n");
    }

    #[test]
    fn refuses_relative_addresses() {
        assert!(matches!(
            Notifier::new("notify.sock"),
            Err(NotifyError::BadAddress(_))
        ));
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_its_pid() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }
}
