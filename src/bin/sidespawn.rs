//! The host tool. Parses arguments, sets up logging, calls one library
//! function and maps the result to an exit code: 0 ok, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidespawn::config::{DEFAULT_PATH, HostConfig};
use sidespawn::kind::Kind;
use sidespawn::plan::HostNamespaces;
use sidespawn::runtime::Podman;

/// Spawn Neutron side processes (dnsmasq, haproxy, keepalived, radvd) as
/// podman containers on behalf of agent containers.
///
/// Agent containers queue requests through sidespawn-wrapper; this host
/// tool claims them and reconciles the sidecar containers.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Host configuration file.
    #[arg(long, global = true, value_name = "PATH", env = "SIDESPAWN_CONFIG")]
    config: Option<PathBuf>,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Claim queued requests and reconcile sidecars until nothing is pending.
    ///
    /// Run by sidespawn@<kind>.service when the agent queues a request, and
    /// by hand for debugging.
    ///
    /// Examples:
    ///   sidespawn sync                     # every configured kind
    ///   sidespawn sync --kind dnsmasq -v   # one kind, with debug logs
    ///   sidespawn sync --dry-run           # print the podman commands only
    ///   sidespawn sync --full              # also remove sidecars whose namespace is gone
    #[command(verbatim_doc_comment)]
    Sync {
        /// Only this kind (repeatable).
        #[arg(long, value_name = "KIND")]
        kind: Vec<Kind>,
        /// Print the podman commands that would run; change nothing, not
        /// even the queue.
        #[arg(long)]
        dry_run: bool,
        /// List containers even when nothing is queued, and remove
        /// sidecars whose namespace vanished.
        #[arg(long)]
        full: bool,
        /// Wait (1 s doubling to 60 s) before retrying after failed runs;
        /// used by the systemd units so a failing sync cannot spin.
        #[arg(long)]
        backoff: bool,
    },
    /// Show queues, the last sync of each kind and the sidecars.
    ///
    /// Exits 0 when every sidecar runs and the last syncs succeeded, 1
    /// otherwise, so monitoring can call it.
    ///
    /// Examples:
    ///   sidespawn status
    ///   sidespawn status --kind dnsmasq --json
    #[command(verbatim_doc_comment)]
    Status {
        #[arg(long, value_name = "KIND")]
        kind: Vec<Kind>,
        /// Machine-readable output (documented in README.md).
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<HostConfig, sidespawn::config::ConfigError> {
    match path {
        Some(p) => HostConfig::load(p, true),
        None => HostConfig::load(std::path::Path::new(DEFAULT_PATH), false),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let cfg = match load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidespawn: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = Podman::new(cfg.podman.clone(), cfg.podman_timeout);
    let namespaces = HostNamespaces(cfg.netns_dir.clone());
    match cli.command {
        Command::Sync {
            kind,
            dry_run,
            full,
            backoff,
        } => {
            let opts = sidespawn::sync::SyncOptions {
                kinds: kind,
                dry_run,
                full,
                backoff,
            };
            match sidespawn::sync::run(&cfg, &runtime, &namespaces, &opts) {
                Ok(summary) => {
                    println!("{summary}");
                    if summary.errors.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        for (k, e) in &summary.errors {
                            eprintln!("sidespawn: cannot sync {k}: {e}");
                        }
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("sidespawn: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status { kind, json } => {
            match sidespawn::status::run(&cfg, &runtime, &kind, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("sidespawn: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
