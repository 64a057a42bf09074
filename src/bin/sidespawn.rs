//! The host tool. Parses arguments, sets up logging, calls one library
//! function and maps the result to an exit code: 0 ok, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidespawn::host::config::{DEFAULT_PATH, HostConfig};
use sidespawn::host::namespaces::HostNamespaces;
use sidespawn::host::runtime::Runtime;
use sidespawn::shared::kind::Kind;

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
        /// Only this kind (repeatable; default: every enabled kind).
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
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
    ///   sidespawn status --metrics > /var/lib/node_exporter/sidespawn.prom
    ///   sidespawn status --check           # run the health checks now
    #[command(verbatim_doc_comment)]
    Status {
        /// Only this kind (repeatable; default: every enabled kind).
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
        kind: Vec<Kind>,
        /// Machine-readable output (documented in README.md).
        #[arg(long)]
        json: bool,
        /// The same figures per kind in the Prometheus text format (for
        /// node_exporter's textfile collector; README.md lists them).
        #[arg(long, conflicts_with = "json")]
        metrics: bool,
        /// Run the kinds' health_cmd in every running desired sidecar now
        /// (and store the results) instead of showing the last results
        /// `watch` or `sync --full` stored.
        #[arg(long)]
        check: bool,
    },
    /// Remove our containers that are exited or created and no longer
    /// desired, sidecars whose namespace vanished or was recreated, and
    /// acknowledgements older than ack_max_age_s. `sync --full` runs it too.
    ///
    /// Examples:
    ///   sidespawn gc --dry-run     # print what would go
    ///   sidespawn gc --kind dnsmasq
    #[command(verbatim_doc_comment)]
    Gc {
        /// Only this kind (repeatable; default: every enabled kind).
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
        kind: Vec<Kind>,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a sidecar's log (`podman logs`), found by container name,
    /// process tag or namespace name.
    ///
    /// Examples:
    ///   sidespawn logs qdhcp-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a
    ///   sidespawn logs -f dnsmasq-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a
    #[command(verbatim_doc_comment)]
    Logs {
        /// Container name, PROCESS_TAG or namespace of the sidecar.
        target: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Replace a kind's running sidecars with its configured image, batch
    /// by batch (same argv and namespace, next generation). The image is
    /// checked first (present, or pulled with --pull, and able to start its
    /// program's version probe); a replacement that does not keep running
    /// for --settle seconds or fails the kind's health_cmd is put back on
    /// its old image and the upgrade stops there (exit 1). Prints each
    /// sidecar's gap and their median and maximum. The image they ran is
    /// remembered for rollback.
    ///
    /// Examples:
    ///   sidespawn upgrade --kind dnsmasq --max-parallel 4
    ///   sidespawn upgrade --kind haproxy --pull --settle 5
    #[command(verbatim_doc_comment)]
    Upgrade {
        /// The kind whose sidecars are replaced.
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
        kind: Kind,
        /// Sidecars replaced at once (default: parallelism).
        #[arg(long, value_name = "N")]
        max_parallel: Option<usize>,
        /// Pull the image first (default: only verify it is present).
        #[arg(long)]
        pull: bool,
        /// Seconds a replacement must keep running to count as up.
        #[arg(long, value_name = "SECS", default_value_t = 2)]
        settle: u64,
    },
    /// Return a kind's sidecars to the image they ran before the last
    /// upgrade (a host-state override of the configured image, dropped
    /// when the configured image changes).
    ///
    /// Example:
    ///   sidespawn rollback --kind dnsmasq
    #[command(verbatim_doc_comment)]
    Rollback {
        /// The kind whose sidecars are rolled back.
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
        kind: Kind,
        /// Sidecars replaced at once (default: parallelism).
        #[arg(long, value_name = "N")]
        max_parallel: Option<usize>,
        /// Pull the image first (default: only verify it is present).
        #[arg(long)]
        pull: bool,
        /// Seconds a replacement must keep running to count as up.
        #[arg(long, value_name = "SECS", default_value_t = 2)]
        settle: u64,
    },
    /// Watch the request queues and sync each kind as requests arrive: a
    /// long-running alternative to the sidespawn@<kind>.path units.
    ///
    /// Drains what is queued at start, then syncs a kind whenever its queue
    /// changes, with a full reconcile every --interval seconds. SIGHUP
    /// re-reads the configuration; SIGTERM finishes the sync in progress and
    /// exits 0. Under systemd (Type=notify) it reports readiness, status and
    /// watchdog pings. Running it beside the path units is safe. It also
    /// follows podman's events: a sidecar that dies is started again at
    /// once, under its kind's restart policy.
    ///
    /// Examples:
    ///   sidespawn watch                    # every enabled kind
    ///   sidespawn watch --kind dnsmasq -v  # one kind, with debug logs
    ///   sidespawn watch --restarts-only    # beside the path units: restart dead sidecars
    #[command(verbatim_doc_comment)]
    Watch {
        /// Only this kind (repeatable; default: every enabled kind, re-read
        /// on SIGHUP).
        #[arg(long, value_name = "KIND", value_parser = kind_parser())]
        kind: Vec<Kind>,
        /// Seconds between full reconciles (`sync --full`), the backstop
        /// for anything the watches missed.
        #[arg(long, value_name = "SECS", default_value_t = 300,
              value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// After every sync, replace this file atomically with
        /// `status --metrics` (for node_exporter's textfile collector: a
        /// name ending in .prom in its directory).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Only follow the engine's events and start sidecars that died
        /// again, under each kind's restart policy; leave the queues to the
        /// sidespawn@<kind>.path units (what sidespawn-restart.service runs).
        #[arg(long)]
        restarts_only: bool,
    },
    /// Generate or install the systemd units (path, service, backstop timer,
    /// watch service, tmpfiles.d) for the kinds in the configuration.
    #[command(subcommand)]
    Units(UnitsCommand),
    /// Inspect this host and print each finding with its fix: the engine,
    /// cgroup manager, OCI runtime, /run/netns, queue root, state
    /// directory, images, units and SELinux. Exits 1 when any is an error.
    ///
    /// Examples:
    ///   sidespawn check
    ///   sidespawn check --json | jq '.[] | select(.status != "ok")'
    #[command(verbatim_doc_comment)]
    Check {
        /// Machine-readable output: a JSON array of
        /// {check, status (ok|warn|error), detail, fix}.
        #[arg(long)]
        json: bool,
        /// Look for the units and SELinux below this root instead of /
        /// (an offline image).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Write the manual pages into DIR (for packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum UnitsCommand {
    /// Write the units into DIR, laid out like their install destination,
    /// and print the commands that enable them.
    ///
    /// Example:
    ///   sidespawn units generate --out /tmp/units && find /tmp/units -type f
    #[command(verbatim_doc_comment)]
    Generate {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The sidespawn binary the units' ExecStart= runs (default: the
        /// installed path, /usr/local/sbin/sidespawn unless the build set
        /// SIDESPAWN_INSTALLED_BIN).
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
    },
    /// Install the units into /etc/systemd/system (or under --root), only
    /// rewriting files that changed; then, with --enable, reload systemd and
    /// enable the path units and the backstop timer (without it, print the
    /// commands to run).
    ///
    /// Examples:
    ///   sidespawn units install --enable
    ///   sidespawn units install --root /mnt/image     # an offline image
    #[command(verbatim_doc_comment)]
    Install {
        /// Install under this root instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Run `systemd-tmpfiles --create`, `systemctl daemon-reload` and
        /// `systemctl enable --now` (only with the root /).
        #[arg(long)]
        enable: bool,
        /// The sidespawn binary the units' ExecStart= runs (default: the
        /// installed path, /usr/local/sbin/sidespawn unless the build set
        /// SIDESPAWN_INSTALLED_BIN).
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
    },
}

/// `--kind`'s parser: the kinds' names as clap's possible values, so every
/// subcommand's help lists them and a misspelt kind is answered with them.
fn kind_parser() -> impl clap::builder::TypedValueParser<Value = Kind> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(Kind::ALL.map(Kind::as_str)).map(|s| {
        s.parse::<Kind>()
            .expect("every possible value names a kind")
    })
}

fn units(cfg: &HostConfig, cmd: UnitsCommand) -> Result<(), sidespawn::host::units::UnitsError> {
    match cmd {
        UnitsCommand::Generate { out, bin } => {
            sidespawn::host::units::install(cfg, &out, bin.as_deref(), false)
        }
        UnitsCommand::Install { root, enable, bin } => {
            sidespawn::host::units::install(cfg, &root, bin.as_deref(), enable)
        }
    }
}

fn upgrade(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    ns: &HostNamespaces,
    kind: Kind,
    opts: &sidespawn::host::upgrade::UpgradeOptions,
    rollback: bool,
) -> Result<(), sidespawn::host::upgrade::UpgradeError> {
    use sidespawn::host::upgrade::{self, UpgradeError, UpgradeReport};
    let r = if rollback {
        upgrade::rollback(cfg, kind, runtime, ns, opts)
    } else {
        upgrade::upgrade(cfg, kind, runtime, ns, opts)
    };
    let print = |r: &UpgradeReport| {
        for s in &r.replaced {
            println!(
                "replaced {} (generation {}), down at most {} ms",
                s.container,
                s.generation,
                s.gap.as_millis()
            );
        }
        for p in &r.put_back {
            match &p.error {
                None => println!(
                    "put back {} on {} (generation {}), down at most {} ms: {}",
                    p.container,
                    p.image,
                    p.generation,
                    p.gap.as_millis(),
                    p.reason
                ),
                Some(e) => println!(
                    "DOWN {}: {}; starting {} again failed: {e}",
                    p.container, p.reason, p.image
                ),
            }
        }
        let gaps = r.gaps().map_or_else(String::new, |(median, max)| {
            format!(
                "; gap per sidecar: median {} ms, max {} ms",
                median.as_millis(),
                max.as_millis()
            )
        });
        println!(
            "{kind}: {} replaced, {} put back, {} already on {}{gaps}",
            r.replaced.len(),
            r.put_back.len(),
            r.unchanged,
            r.image
        );
    };
    match &r {
        Ok(rep) => print(rep),
        Err(UpgradeError::Failed { report, .. }) => print(report),
        Err(_) => {}
    }
    r.map(drop)
}

/// The exit code of a command's result, printing its error once: 0 ok,
/// 1 failure (usage errors, 2, are clap's).
fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidespawn: {e}");
            ExitCode::from(1)
        }
    }
}

/// The exit code of a sync: 1 when it could not run or any kind failed,
/// each failed kind named on stderr.
fn sync_exit_code(
    result: Result<sidespawn::host::sync::Summary, sidespawn::host::sync::SyncError>,
) -> ExitCode {
    let summary = match result {
        Ok(s) => s,
        Err(e) => return exit_code(Err(e)),
    };
    for line in &summary.dry_run {
        println!("{line}");
    }
    println!("{summary}");
    for (k, e) in &summary.errors {
        eprintln!("sidespawn: cannot sync {k}: {e}");
    }
    if summary.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `logs` hands over podman's exit status: its code, or 128 + the signal
/// that ended it, as a shell reports it.
fn logs_exit_code(
    result: Result<std::process::ExitStatus, sidespawn::host::logs::LogsError>,
) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match result {
        Ok(st) => {
            let code = st
                .code()
                .or_else(|| st.signal().map(|s| 128 + s))
                .unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => exit_code(Err(e)),
    }
}

/// Logs, at debug level and when dropped at the end of `main`, what this
/// process used: its own peak RSS and CPU time, without the podman
/// processes it ran (`getrusage(RUSAGE_SELF)`).
struct ResourceLog;

impl Drop for ResourceLog {
    fn drop(&mut self) {
        use nix::sys::resource::{UsageWho, getrusage};
        use nix::sys::time::TimeValLike;
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        if let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) {
            let cpu = u.user_time() + u.system_time();
            tracing::debug!(
                peak_rss_kib = u.max_rss(),
                cpu_ms = cpu.num_milliseconds(),
                "resource use of this sidespawn process (podman not included)"
            );
        }
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<HostConfig, sidespawn::host::config::ConfigError> {
    match path {
        Some(p) => HostConfig::load(p, true),
        None => HostConfig::load(std::path::Path::new(DEFAULT_PATH), false),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sidespawn::host::logging::init(cli.verbose);
    // Packaging runs these on a build machine: no configuration is read.
    {
        use clap::CommandFactory;
        use sidespawn::host::manpages;
        match &cli.command {
            Command::GenerateMan { dir } => {
                return exit_code(manpages::write_man_pages(Cli::command(), dir));
            }
            Command::GenerateCompletions { dir } => {
                return exit_code(manpages::write_completions(Cli::command(), dir));
            }
            _ => {}
        }
    }
    let cfg = match load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => return exit_code(Err(e)),
    };
    let runtime = sidespawn::host::runtime::for_config(&cfg);
    let runtime = runtime.as_ref();
    let namespaces = HostNamespaces(cfg.netns_dir.clone());
    let _usage = ResourceLog;
    match cli.command {
        Command::Sync {
            kind,
            dry_run,
            full,
            backoff,
        } => {
            let opts = sidespawn::host::sync::SyncOptions {
                kinds: kind,
                dry_run,
                full,
                backoff,
                health: false,
                restart: false,
            };
            sync_exit_code(sidespawn::host::sync::run(
                &cfg,
                runtime,
                &namespaces,
                &opts,
            ))
        }
        Command::Gc { kind, dry_run } => exit_code(
            sidespawn::host::gc::run(&cfg, runtime, &namespaces, &kind, dry_run).map(drop),
        ),
        Command::Upgrade {
            kind,
            max_parallel,
            pull,
            settle,
        }
        | Command::Rollback {
            kind,
            max_parallel,
            pull,
            settle,
        } => {
            let rollback = matches!(cli.command, Command::Rollback { .. });
            let opts = sidespawn::host::upgrade::UpgradeOptions {
                max_parallel: max_parallel.unwrap_or(cfg.parallelism),
                pull,
                settle: std::time::Duration::from_secs(settle),
            };
            exit_code(upgrade(&cfg, runtime, &namespaces, kind, &opts, rollback))
        }
        Command::Logs { target, follow } => {
            logs_exit_code(sidespawn::host::logs::run(&cfg, runtime, &target, follow))
        }
        Command::Watch {
            kind,
            interval,
            metrics_file,
            restarts_only,
        } => {
            let opts = sidespawn::host::watch::WatchOptions {
                kinds: kind,
                interval: std::time::Duration::from_secs(interval),
                explicit_config: cli.config.is_some(),
                metrics_file,
                restarts_only,
            };
            exit_code(sidespawn::host::watch::run(cfg, &opts))
        }
        Command::Units(cmd) => exit_code(units(&cfg, cmd)),
        Command::Check { json, root } => match sidespawn::host::check::run(&cfg, json, &root) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => exit_code(Err(e)),
        },
        Command::GenerateMan { .. } | Command::GenerateCompletions { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Status {
            kind,
            json,
            metrics,
            check,
        } => {
            use sidespawn::host::status::Format;
            let format = match (json, metrics) {
                (true, _) => Format::Json,
                (_, true) => Format::Metrics,
                _ => Format::Text,
            };
            match sidespawn::host::status::run(&cfg, runtime, &kind, format, check) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => exit_code(Err(e)),
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

    /// Every subcommand with `--kind` lists the kinds in its help.
    #[test]
    fn kind_values_are_in_every_help() {
        let mut cli = Cli::command();
        let mut seen = 0;
        for sub in cli.get_subcommands_mut() {
            if sub.get_arguments().all(|a| a.get_id() != "kind") {
                continue;
            }
            seen += 1;
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("[possible values: dnsmasq, haproxy, keepalived, radvd]"),
                "{}: {help}",
                sub.get_name()
            );
        }
        assert_eq!(seen, 6);
        let e = Cli::try_parse_from(["sidespawn", "sync", "--kind", "dnsmasqq"]).unwrap_err();
        assert!(e.to_string().contains("possible values"), "{e}");
    }
}
