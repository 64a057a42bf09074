//! Request records: the only thing an agent container can hand to the host.
//!
//! One record is one JSON object on one line of a kind's queue file. The
//! format is lossless: `argv` is an explicit array, so argument boundaries,
//! empty strings, spaces and quotes survive byte for byte. Records are written
//! by the wrapper (inside a container) and read by the root host tool, so
//! everything here that parses a record treats it as hostile: unknown fields,
//! unknown versions, oversized values and impossible combinations are rejected
//! with a reason, never repaired.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::shared::kind::Kind;

/// The record format version this build writes and accepts.
pub const VERSION: u32 = 1;

/// Longest accepted queue line, newline excluded.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most arguments one request may carry.
pub const MAX_ARGS: usize = 4096;
/// Longest request id.
pub const MAX_ID_LEN: usize = 64;
/// Longest process tag (Neutron's are `<service>-<uuid>`, about 45 bytes).
pub const MAX_TAG_LEN: usize = 128;
/// Longest namespace name (a file name under the netns directory).
pub const MAX_NETNS_LEN: usize = 255;
/// Highest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_PID: u32 = 4_194_304;

/// What the agent asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Start (or keep running) a side process with this argv.
    Start,
    /// Deliver a signal to a running side process (Neutron's kill scripts).
    Signal,
}

/// The signals Neutron's kill scripts send. HUP reloads; TERM and KILL stop
/// the side process and remove its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Signal {
    #[serde(rename = "HUP")]
    Hup,
    #[serde(rename = "TERM")]
    Term,
    #[serde(rename = "KILL")]
    Kill,
}

impl Signal {
    /// Parses a kill-script signal argument: `HUP`, `15`, `9`, also the
    /// `TERM`/`KILL`/`SIG*` spellings and `1` for HUP.
    pub fn from_arg(s: &str) -> Option<Signal> {
        let s = s.strip_prefix("SIG").unwrap_or(s);
        match s {
            "HUP" | "1" => Some(Signal::Hup),
            "TERM" | "15" => Some(Signal::Term),
            "KILL" | "9" => Some(Signal::Kill),
            _ => None,
        }
    }

    /// The name podman's `--signal` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network namespace a request was made in, as the wrapper found it:
/// the name under the netns directory plus the (device, inode) pair of the
/// namespace, so the host can tell a namespace deleted and recreated under
/// the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsRef {
    pub name: String,
    pub dev: u64,
    pub ino: u64,
}

/// One request, version 1. Every field is always written (`null` where it
/// does not apply) so a reader never guesses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Format version, always [`VERSION`].
    pub v: u32,
    /// Unique request id: time plus 128 random bits, so ids from different
    /// processes and containers never collide.
    pub id: String,
    pub kind: Kind,
    pub action: Action,
    /// Every argument after argv\[0\], byte-exact.
    pub argv: Vec<String>,
    /// `None` for the host network.
    pub netns: Option<NetnsRef>,
    /// The `PROCESS_TAG` environment value Neutron sets, if any.
    pub tag: Option<String>,
    pub signal: Option<Signal>,
    pub pid: Option<u32>,
    /// Unix time in milliseconds when the request was made.
    pub ts: u64,
}

/// Why a queue line was refused. The text is what operators read in the
/// reject log and what the agent reads in the acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("line is {0} bytes, over the {MAX_LINE_BYTES}-byte limit")]
    TooLong(usize),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("not valid JSON: {0}")]
    BadJson(String),
    #[error("unsupported record version {0} (this host reads version {VERSION})")]
    Version(String),
    #[error("invalid record: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> RejectReason {
    RejectReason::Invalid(msg.into())
}

/// True for names safe to use as a single path component and as part of a
/// container name: ASCII letters, digits, `.`, `_`, `-`, not `.`/`..`.
pub fn is_safe_name(s: &str, max_len: usize) -> bool {
    !s.is_empty()
        && s.len() <= max_len
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Record {
    /// Checks every field of a record read from a queue. The profile-level
    /// checks (namespace pattern, host network allowed) come later, on the
    /// host; this is what any record must satisfy.
    pub fn validate(&self) -> Result<(), RejectReason> {
        if self.v != VERSION {
            return Err(RejectReason::Version(self.v.to_string()));
        }
        if !is_safe_name(&self.id, MAX_ID_LEN) || self.id.starts_with('.') {
            return Err(invalid(format!(
                "id {:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9._-]",
                truncate(&self.id)
            )));
        }
        if self.argv.len() > MAX_ARGS {
            return Err(invalid(format!(
                "{} arguments, over the limit of {MAX_ARGS}",
                self.argv.len()
            )));
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(invalid(format!(
                "argument {} contains a NUL byte, which no program can receive",
                i + 1
            )));
        }
        if let Some(ns) = &self.netns
            && !is_safe_name(&ns.name, MAX_NETNS_LEN)
        {
            return Err(invalid(format!(
                "netns name {:?} is not a plain file name of [A-Za-z0-9._-]",
                truncate(&ns.name)
            )));
        }
        if let Some(tag) = &self.tag
            && !is_safe_name(tag, MAX_TAG_LEN)
        {
            return Err(invalid(format!(
                "tag {:?} must be 1-{MAX_TAG_LEN} characters of [A-Za-z0-9._-]",
                truncate(tag)
            )));
        }
        match self.action {
            Action::Start => {
                if self.signal.is_some() || self.pid.is_some() {
                    return Err(invalid("a start request carries no signal or pid"));
                }
            }
            Action::Signal => {
                if self.signal.is_none() {
                    return Err(invalid("a signal request needs a signal"));
                }
                match self.pid {
                    Some(p) if (2..=MAX_PID).contains(&p) => {}
                    Some(p) => {
                        return Err(invalid(format!("pid {p} is outside 2..={MAX_PID}")));
                    }
                    None => return Err(invalid("a signal request needs a pid")),
                }
                if !self.argv.is_empty() {
                    return Err(invalid("a signal request carries no argv"));
                }
            }
        }
        Ok(())
    }

    /// Parses and validates one queue line (without its newline).
    pub fn parse_line(line: &[u8]) -> Result<Record, RejectReason> {
        if line.len() > MAX_LINE_BYTES {
            return Err(RejectReason::TooLong(line.len()));
        }
        let text = std::str::from_utf8(line).map_err(|_| RejectReason::NotUtf8)?;
        let record: Record = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                // Name a version mismatch plainly: a newer wrapper talking to
                // an older host is an operator problem, not garbage.
                if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) {
                    match map.get("v") {
                        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => {}
                        Some(other) => return Err(RejectReason::Version(other.to_string())),
                        None => return Err(invalid("missing field `v`")),
                    }
                    return Err(invalid(e.to_string()));
                }
                return Err(RejectReason::BadJson(e.to_string()));
            }
        };
        record.validate()?;
        Ok(record)
    }

    /// The record as one queue line, newline included.
    pub fn to_line(&self) -> String {
        // Serializing plain strings, integers and enums cannot fail.
        let mut s = serde_json::to_string(self).expect("record serializes");
        s.push('\n');
        s
    }
}

/// Shortens hostile values before they go into a message or a log.
pub fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A fresh request id: milliseconds since the epoch, then 128 random bits.
pub fn new_id(ts_ms: u64) -> String {
    let mut buf = [0u8; 16];
    fill_random(&mut buf);
    let mut id = format!("{ts_ms:012x}-");
    for b in buf {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`,
        // which stays borrowed mutably for the whole call.
        let n = unsafe {
            nix::libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        } else if nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            // No getrandom (seccomp, ancient kernel): fall back to the
            // clock and pid, still unique enough with the timestamp prefix.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mix = t ^ (u128::from(std::process::id()) << 64);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (mix >> ((i % 16) * 8)) as u8;
            }
            return;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(argv: &[&str]) -> Record {
        Record {
            v: VERSION,
            id: new_id(now_ms()),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            netns: Some(NetnsRef {
                name: "qdhcp-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a".into(),
                dev: 4,
                ino: 4026532290,
            }),
            tag: Some("dnsmasq-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a".into()),
            signal: None,
            pid: None,
            ts: now_ms(),
        }
    }

    #[test]
    fn round_trip_keeps_every_byte() {
        let big = "x".repeat(100 * 1024);
        let r = start(&[
            "--no-hosts",
            "",
            "with space",
            "quote\"d 'single'",
            "back\\slash",
            "ünïcødé ☃ 𝄞",
            "tab\tnew\nline",
            &big,
            "",
        ]);
        let line = r.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one record is one line");
        let back = Record::parse_line(line.trim_end_matches('\n').as_bytes()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn writes_every_field_name() {
        let v: serde_json::Value = serde_json::from_str(&start(&[]).to_line()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "action", "argv", "id", "kind", "netns", "pid", "signal", "tag", "ts", "v"
            ]
        );
    }

    #[test]
    fn ids_are_unique_and_safe() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_id(1)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| is_safe_name(i, MAX_ID_LEN)));
    }

    #[test]
    fn rejects_hostile_lines() {
        let good = start(&["a"]);
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "JSON"),
            ("[]".into(), "JSON"),
            (good.to_line().replace("\"v\":1", "\"v\":2"), "version 2"),
            (good.to_line().replace("\"v\":1,", ""), "missing field `v`"),
            (
                good.to_line()
                    .replace("\"kind\":\"dnsmasq\"", "\"kind\":\"bash\""),
                "unknown variant",
            ),
            (
                good.to_line().replace("\"ts\":", "\"extra\":1,\"ts\":"),
                "unknown field",
            ),
            (good.to_line().replace("qdhcp-", "../qdhcp-"), "netns name"),
            (
                good.to_line()
                    .replace("\"tag\":\"dnsmasq-", "\"tag\":\"$(reboot)"),
                "tag",
            ),
            (good.to_line().replace("\"a\"", "\"a\\u0000b\""), "NUL"),
            (
                good.to_line().replace("\"pid\":null", "\"pid\":7"),
                "no signal or pid",
            ),
        ];
        for (line, want) in cases {
            let err = Record::parse_line(line.trim_end().as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{line}: got {err}, want {want}"
            );
        }
        assert_eq!(Record::parse_line(b"\xff\xfe"), Err(RejectReason::NotUtf8));
        let long = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(matches!(
            Record::parse_line(&long),
            Err(RejectReason::TooLong(_))
        ));
    }

    #[test]
    fn signal_requests_need_signal_and_sane_pid() {
        let mut r = start(&[]);
        r.action = Action::Signal;
        r.signal = Some(Signal::Hup);
        r.pid = Some(1234);
        r.validate().unwrap();
        for bad in [0, 1, MAX_PID + 1] {
            r.pid = Some(bad);
            assert!(r.validate().is_err(), "pid {bad}");
        }
        r.pid = Some(1234);
        r.signal = None;
        assert!(r.validate().is_err());
    }

    #[test]
    fn kill_script_signal_spellings() {
        assert_eq!(Signal::from_arg("HUP"), Some(Signal::Hup));
        assert_eq!(Signal::from_arg("15"), Some(Signal::Term));
        assert_eq!(Signal::from_arg("9"), Some(Signal::Kill));
        assert_eq!(Signal::from_arg("SIGTERM"), Some(Signal::Term));
        assert_eq!(Signal::from_arg("KILL"), Some(Signal::Kill));
        assert_eq!(Signal::from_arg("USR1"), None);
        assert_eq!(Signal::from_arg(""), None);
    }
}
