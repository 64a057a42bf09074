//! Where the host tool's logs go: the journal, with structured fields, when
//! systemd runs it; plain text on stderr otherwise.
//!
//! Under systemd, stderr is a stream into the journal and `JOURNAL_STREAM`
//! names it (`device:inode`). When stderr still is that stream, events go
//! to journald's native socket instead (`tracing-journald`), so every
//! tracing field becomes a journal field without a prefix: `kind` →
//! `KIND`, `container` → `CONTAINER`, `sidespawn_request` →
//! `SIDESPAWN_REQUEST`, `result` → `RESULT`, and `journalctl -u
//! 'sidespawn@*' SIDESPAWN_REQUEST=<id>` finds a request's story. A stderr
//! redirected elsewhere (`sidespawn status 2>file` in a unit) keeps text,
//! as does a journal that cannot be reached. `SIDESPAWN_LOG=text` or
//! `journald` overrides the choice.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Overrides the choice of log target: `text` or `journald`.
pub const LOG_ENV: &str = "SIDESPAWN_LOG";

/// Whether stderr is the journal stream systemd set up (`JOURNAL_STREAM`
/// is `device:inode` of it, as `sd_journal_stream_fd` documents).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber: level from `verbose` (0 info, 1 debug,
/// more trace) unless `RUST_LOG` says otherwise.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journald = match std::env::var(LOG_ENV).as_deref() {
        Ok("journald") => true,
        Ok("text") => false,
        _ => stderr_is_journal(),
    };
    if journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Field names as the code spells them, upper-cased, without
                // the crate's default `F_` prefix.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("sidespawn".into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("sidespawn: cannot log to the journal ({e}); logging text"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
