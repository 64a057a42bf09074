//! Host configuration: where the queues and state live, how the engine is run,
//! and one profile per kind saying exactly how its sidecars are started.
//!
//! JSON at `/etc/sidespawn/config.json` (or `--config PATH`). Unknown keys
//! are errors. Everything a sidecar runs with (image, mounts, capabilities,
//! network) comes from here and never from a request: a request only adds
//! arguments after the image and command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::host::runtime::Engine;
use crate::shared::kind::Kind;

pub const DEFAULT_PATH: &str = "/etc/sidespawn/config.json";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sidespawn";
/// Where the packages install the static wrapper, which docker sidecars use
/// as their namespace-joining entry helper (`netns_helper`).
pub const DEFAULT_NETNS_HELPER: &str = "/usr/bin/sidespawn-wrapper";

/// Neutron's namespace names: a prefix and a lowercase UUID.
pub const DEFAULT_NETNS_PATTERNS: [&str; 5] = [
    "qdhcp-{uuid}",
    "qrouter-{uuid}",
    "snat-{uuid}",
    "fip-{uuid}",
    "ovnmeta-{uuid}",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read host configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid host configuration {path}: {source} (every key is documented in README.md, \"Host configuration\")"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The configuration file as written (unset keys take defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfigFile {
    queue_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    netns_dir: Option<PathBuf>,
    /// `"podman"` (the default) or `"docker"`.
    engine: Option<String>,
    engine_program: Option<PathBuf>,
    /// The older name of `engine_program`, for podman only.
    podman: Option<PathBuf>,
    /// The static `sidespawn-wrapper` on the host, which a docker sidecar
    /// runs as its entry helper to join its namespace.
    netns_helper: Option<PathBuf>,
    lock_timeout_ms: Option<u64>,
    engine_timeout_ms: Option<u64>,
    /// The older name of `engine_timeout_ms`.
    podman_timeout_ms: Option<u64>,
    parallelism: Option<usize>,
    max_queue_bytes: Option<u64>,
    ack_max_age_s: Option<u64>,
    max_passes: Option<u32>,
    instance: Option<String>,
    #[serde(default)]
    kinds: BTreeMap<Kind, ProfileFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    enabled: Option<bool>,
    image: Option<String>,
    command: Option<Vec<String>>,
    foreground_args: Option<Vec<String>>,
    strip_args: Option<Vec<String>>,
    volumes: Option<Vec<String>>,
    pid_host: Option<bool>,
    cgroupns_host: Option<bool>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    user: Option<String>,
    log_driver: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    engine_args: Option<Vec<String>>,
    /// The older name of `engine_args`.
    podman_args: Option<Vec<String>>,
    netns_patterns: Option<Vec<String>>,
    allow_host_network: Option<bool>,
    stop_timeout_s: Option<u64>,
    restart: Option<RestartFile>,
    health_cmd: Option<Vec<String>>,
    health_timeout_s: Option<u64>,
    health_interval_s: Option<u64>,
    max_sidecars: Option<usize>,
    max_argv_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    enabled: Option<bool>,
    backoff_s: Option<u64>,
    max_restarts: Option<u32>,
    window_s: Option<u64>,
}

/// When a desired sidecar whose process died is started again by a sync
/// that lists containers (`kinds.<kind>.restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub enabled: bool,
    /// Least time between two automatic restarts of one sidecar, so a
    /// daemon that dies at once is not restarted on every pass.
    pub backoff: Duration,
    /// Most automatic restarts of one sidecar within `window`; past it the
    /// sidecar is left dead and reported, because restarting a daemon that
    /// keeps crashing only hides the fault.
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            enabled: true,
            backoff: Duration::from_secs(5),
            max_restarts: 5,
            window: Duration::from_secs(600),
        }
    }
}

/// Engine calls run at once when `parallelism` is not set: twice the CPUs
/// this process may use, from 2 up to 8 (reached at 4 CPUs). A `podman
/// run` is mostly CPU (the engine's own start, the OCI runtime, the
/// monitor), so calls beyond what the CPUs can carry only queue on the
/// engine's locks: on 2 CPUs, 200 starts by `xargs -P 4` take 7% less
/// time than by `-P 8` and 14% less than by `-P 16` (docs/PERFORMANCE.md,
/// part 3).
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(8, |n| n.get().saturating_mul(2))
        .clamp(2, 8)
}

/// The host configuration with every default applied.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
    pub queue_root: PathBuf,
    pub state_dir: PathBuf,
    pub netns_dir: PathBuf,
    /// The container engine the sidecars run on.
    pub engine: Engine,
    /// The engine's CLI (`podman` or `docker` from `PATH` by default).
    pub engine_program: PathBuf,
    /// The static `sidespawn-wrapper` bind-mounted into docker sidecars as
    /// their namespace-joining entry helper (unused with podman).
    pub netns_helper: PathBuf,
    pub lock_timeout: Duration,
    /// The time limit of every engine call (`engine_timeout_ms`).
    pub engine_timeout: Duration,
    pub parallelism: usize,
    pub max_queue_bytes: u64,
    pub ack_max_age: Duration,
    pub max_passes: u32,
    /// This configuration's identity on a podman it may share with others
    /// (see [`instance_id`]): in every sidecar's `io.sidespawn.instance`
    /// label and container name, and in the filter of every listing.
    pub instance: String,
    /// Profiles of the kinds this host serves, by kind.
    pub kinds: BTreeMap<Kind, Profile>,
}

/// How one kind's sidecars are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub kind: Kind,
    /// The configuration's identity ([`HostConfig::instance`]), copied into
    /// each profile because everything that names or labels a sidecar
    /// works from its profile.
    pub instance: String,
    pub enabled: bool,
    /// `None` when not configured: the kind cannot be served until it is.
    pub image: Option<String>,
    pub command: Vec<String>,
    pub foreground_args: Vec<String>,
    pub strip_args: Vec<String>,
    pub volumes: Vec<String>,
    pub pid_host: bool,
    pub cgroupns_host: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub user: Option<String>,
    pub log_driver: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Further engine options for the sidecars, host-chosen, passed verbatim
    /// before the image (`engine_args`, formerly `podman_args`).
    pub engine_args: Vec<String>,
    pub netns_patterns: Vec<String>,
    pub allow_host_network: bool,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    /// Run in each running desired sidecar (`podman exec NAME ...`) by
    /// `watch` every `health_interval`, `sync --full` and `status --check`;
    /// a failure counts as dead for the restart policy.
    pub health_cmd: Option<Vec<String>>,
    pub health_timeout: Duration,
    /// How often `watch` checks this kind's running sidecars (with a
    /// `health_cmd`).
    pub health_interval: Duration,
    /// Most sidecars of this kind this configuration runs (desired or
    /// running); a start that would add one more is rejected. See
    /// [`DEFAULT_MAX_SIDECARS`].
    pub max_sidecars: usize,
    /// Most bytes of a start request's argv (each argument plus a NUL, as
    /// the kernel counts them); a larger request is rejected at plan time.
    pub max_argv_bytes: usize,
}

/// Default `max_argv_bytes` of dnsmasq: 64 KiB. Neutron's longest command
/// line is dnsmasq's, about 1 KiB plus some 100 bytes per subnet of the
/// network (`--dhcp-range=set:subnet-<uuid>,...`,
/// `--dhcp-option-force=...`): 64 KiB holds a network with several hundred
/// subnets while bounding what one sidecar costs the host (podman keeps the
/// argv in the container's configuration and `podman inspect` carries it).
pub const DEFAULT_MAX_ARGV_BYTES: usize = 64 * 1024;

/// Default `max_argv_bytes` of haproxy, keepalived and radvd: 8 KiB.
/// Neutron passes them a configuration file and a few options — haproxy
/// `-f <conf>`, keepalived `-P -f <conf> -p <pid> -r <pid>`, radvd
/// `-C <conf> -p <pid> -m syslog -u radvd` — a few hundred bytes with the
/// paths; 8 KiB is twenty times that.
pub const DEFAULT_MAX_ARGV_BYTES_SMALL: usize = 8 * 1024;

/// The most `max_argv_bytes` may be: the queue's own line cap, past which
/// no request is read at all.
pub const MAX_MAX_ARGV_BYTES: usize = crate::shared::record::MAX_LINE_BYTES;

/// Longest `instance`: it is part of every container name (128 bytes at
/// most, longer names are hashed), so it must leave room for the rest.
pub const MAX_INSTANCE_LEN: usize = 32;

/// Whether `s` is a valid `instance`: 1–32 characters of `[a-z0-9_]`.
/// No `-`: the instance is the second dash-separated word of a container
/// name (`sidespawn-<instance>-<kind>-...`), so without dashes no pair of
/// instance and tag can spell another pair's name.
pub fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_INSTANCE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The automatic identity of the configuration whose state lives in
/// `state_dir`: 12 hex digits of a hash of the directory's canonical path.
///
/// Why the state directory: it is what a configuration owns alone (two
/// configurations sharing it would replay each other's journals and share
/// one desired table, so [`crate::host::state::StateDir::claim_owner`] refuses
/// that), it does not change when the configuration file is edited or
/// moved, and it needs no operator action. The path is made canonical
/// through its longest existing ancestor, so the identity is the same
/// before and after the directory is created and whichever spelling
/// (`/var/lib/../lib/sidespawn`, a symlinked parent) the file uses.
/// Moving the state directory changes the identity: set `instance` to
/// keep the old one (README, "Host configuration").
pub fn instance_id(state_dir: &Path) -> String {
    let canonical = canonical_through_ancestors(state_dir);
    let h = crate::host::plan::fnv1a(canonical.as_os_str().as_encoded_bytes());
    format!("{:012x}", h >> 16)
}

/// `path` with its longest existing ancestor resolved by `canonicalize`
/// and the rest appended lexically (`.` dropped, `..` popping), component
/// by component, so a `..` after a symlink pops the symlink's target.
pub fn canonical_through_ancestors(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut out = PathBuf::new();
    let mut resolving = true;
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if resolving {
                    match out.canonicalize() {
                        Ok(c) => out = c,
                        Err(_) => resolving = false,
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Default of `kinds.<kind>.max_sidecars`. A large DHCP node serves about
/// 1,000 networks (one dnsmasq each, and as many metadata haproxies), an L3
/// node a few hundred routers: 2,048 leaves twice that headroom, while an
/// agent gone wrong (a loop over fresh tags) stops there instead of starting
/// a podman container (a conmon, a daemon and their memory) per request
/// until the host runs out.
pub const DEFAULT_MAX_SIDECARS: usize = 2048;

/// Default of `health_interval_s`: a hung daemon is noticed within half a
/// minute, and hundreds of sidecars cost one `podman exec` each per round.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Profile {
    /// Built-in defaults for `kind` (no image).
    pub fn defaults(kind: Kind) -> Profile {
        let (foreground, strip, caps): (&[&str], &[&str], &[&str]) = match kind {
            // -k: stay in the foreground, so the container lives as long as
            // dnsmasq does.
            Kind::Dnsmasq => (
                &["-k"],
                &["--keep-in-foreground", "-k"],
                &["NET_ADMIN", "NET_RAW"],
            ),
            // -Ws: master-worker, foreground, systemd-style reloads on HUP.
            // -D would daemonise and end the container at once.
            Kind::Haproxy => (&["-Ws"], &["-D", "-daemon", "-Ws", "-W", "-db"], &[]),
            Kind::Keepalived => (
                &["-n", "-l", "-D"],
                &[
                    "-n",
                    "--dont-fork",
                    "-l",
                    "--log-console",
                    "-D",
                    "--log-detail",
                ],
                &["NET_ADMIN", "NET_RAW", "NET_BROADCAST"],
            ),
            Kind::Radvd => (&["-n"], &["-n", "--nodaemon"], &["NET_ADMIN", "NET_RAW"]),
        };
        Profile {
            kind,
            instance: instance_id(Path::new(DEFAULT_STATE_DIR)),
            enabled: true,
            image: None,
            command: vec![kind.as_str().to_owned()],
            foreground_args: strings(foreground),
            strip_args: strings(strip),
            volumes: strings(&[
                "/var/lib/neutron:/var/lib/neutron",
                "/etc/neutron:/etc/neutron:ro",
                "/dev/log:/dev/log",
            ]),
            pid_host: true,
            cgroupns_host: true,
            cap_add: strings(caps),
            cap_drop: Vec::new(),
            user: None,
            log_driver: None,
            labels: BTreeMap::new(),
            engine_args: Vec::new(),
            netns_patterns: strings(&DEFAULT_NETNS_PATTERNS),
            allow_host_network: false,
            stop_timeout: Duration::from_secs(10),
            restart: RestartPolicy::default(),
            health_cmd: None,
            health_timeout: Duration::from_secs(5),
            health_interval: DEFAULT_HEALTH_INTERVAL,
            max_sidecars: DEFAULT_MAX_SIDECARS,
            max_argv_bytes: match kind {
                Kind::Dnsmasq => DEFAULT_MAX_ARGV_BYTES,
                Kind::Haproxy | Kind::Keepalived | Kind::Radvd => DEFAULT_MAX_ARGV_BYTES_SMALL,
            },
        }
    }

    /// Bytes of `argv` as [`Profile::max_argv_bytes`] counts them: each
    /// argument plus its terminating NUL.
    pub fn argv_bytes(argv: &[String]) -> usize {
        argv.iter().map(|a| a.len() + 1).sum()
    }

    /// Whether `name` matches one of the profile's namespace patterns.
    pub fn netns_allowed(&self, name: &str) -> bool {
        self.netns_patterns.iter().any(|p| pattern_matches(p, name))
    }

    /// The request's argv with the profile's foreground flags enforced:
    /// flags to strip are removed, foreground flags come first.
    pub fn daemon_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = self.foreground_args.clone();
        out.extend(
            argv.iter()
                .filter(|a| !self.strip_args.iter().any(|s| s == *a))
                .cloned(),
        );
        out
    }
}

/// Matches a namespace pattern: `{uuid}` stands for a lowercase UUID, `*`
/// for one or more characters; everything else is literal.
///
/// The name comes from a request (up to 255 bytes the agent chooses), so the
/// match is memoised on (pattern position, name position): O(pattern × name)
/// whatever the pattern. Trying every length for each `*` without it takes
/// exponential time in the number of `*` (`*-*-*-*-*-*-*-*-*-*-*-x` against
/// `q-q-...` of 254 bytes never finished).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    fn is_uuid(s: &[u8]) -> bool {
        s.len() == 36
            && s.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            })
    }
    struct Matcher<'a> {
        p: &'a [u8],
        n: &'a [u8],
        /// `memo[i * (n.len() + 1) + j]`: whether `p[i..]` matches `n[j..]`.
        memo: Vec<Option<bool>>,
    }
    impl Matcher<'_> {
        fn go(&mut self, i: usize, j: usize) -> bool {
            let slot = i * (self.n.len() + 1) + j;
            if let Some(known) = self.memo[slot] {
                return known;
            }
            let (p, n) = (&self.p[i..], &self.n[j..]);
            let result = if p.is_empty() {
                n.is_empty()
            } else if p.starts_with(b"{uuid}") {
                n.len() >= 36 && is_uuid(&n[..36]) && self.go(i + 6, j + 36)
            } else if p[0] == b'*' {
                // The `*` takes n[0], then either ends there or takes more.
                !n.is_empty() && (self.go(i + 1, j + 1) || self.go(i, j + 1))
            } else {
                !n.is_empty() && n[0] == p[0] && self.go(i + 1, j + 1)
            };
            self.memo[slot] = Some(result);
            result
        }
    }
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    Matcher {
        p,
        n,
        memo: vec![None; (p.len() + 1) * (n.len() + 1)],
    }
    .go(0, 0)
}

impl HostConfig {
    /// Loads `path`. When `explicit` is false a missing file yields the
    /// defaults (no kinds configured).
    pub fn load(path: &Path, explicit: bool) -> Result<HostConfig, ConfigError> {
        let file: HostConfigFile = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                HostConfigFile::default()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::resolve(path, file)
    }

    /// Parses configuration text (used by tests and `config check`).
    pub fn from_str(path: &Path, text: &str) -> Result<HostConfig, ConfigError> {
        let file: HostConfigFile =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Self::resolve(path, file)
    }

    fn resolve(path: &Path, f: HostConfigFile) -> Result<HostConfig, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let engine = match f.engine.as_deref() {
            None | Some("podman") => Engine::Podman,
            Some("docker") => Engine::Docker,
            Some(other) => {
                return Err(invalid(
                    "engine",
                    &format!("unknown engine {other:?}: use \"podman\" or \"docker\""),
                ));
            }
        };
        let engine_program = match (f.engine_program, f.podman) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "podman",
                    "is the older name of engine_program; set only engine_program",
                ));
            }
            (None, Some(_)) if engine != Engine::Podman => {
                return Err(invalid(
                    "podman",
                    "names the podman program, but engine is docker; set engine_program to the docker CLI instead",
                ));
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => engine.as_str().into(),
        };
        if engine_program.as_os_str().is_empty() {
            return Err(invalid("engine_program", "must not be empty"));
        }
        let engine_timeout_ms = match (f.engine_timeout_ms, f.podman_timeout_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "podman_timeout_ms",
                    "is the older name of engine_timeout_ms; set only engine_timeout_ms",
                ));
            }
            (a, b) => a.or(b),
        };
        let parallelism = f.parallelism.unwrap_or_else(default_parallelism);
        if parallelism == 0 || parallelism > 256 {
            return Err(invalid("parallelism", "must be between 1 and 256"));
        }
        let state_dir: PathBuf = f.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let instance = match f.instance {
            Some(i) if valid_instance(&i) => i,
            Some(_) => {
                return Err(invalid(
                    "instance",
                    &format!(
                        "must be 1-{MAX_INSTANCE_LEN} characters of [a-z0-9_] (it becomes part of every container name); leave it out to derive one from state_dir"
                    ),
                ));
            }
            None => instance_id(&state_dir),
        };
        let mut kinds = BTreeMap::new();
        for (kind, p) in f.kinds {
            let mut prof = Profile::defaults(kind);
            prof.instance = instance.clone();
            let key = |k: &str| format!("kinds.{kind}.{k}");
            macro_rules! set {
                ($field:ident) => {
                    if let Some(v) = p.$field {
                        prof.$field = v;
                    }
                };
            }
            set!(enabled);
            set!(command);
            set!(foreground_args);
            set!(strip_args);
            set!(volumes);
            set!(pid_host);
            set!(cgroupns_host);
            set!(cap_add);
            set!(cap_drop);
            set!(labels);
            prof.engine_args = match (p.engine_args, p.podman_args) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key("podman_args"),
                        "is the older name of engine_args; set only engine_args",
                    ));
                }
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => prof.engine_args,
            };
            set!(netns_patterns);
            set!(allow_host_network);
            prof.image = p.image;
            prof.user = p.user;
            prof.log_driver = p.log_driver;
            if let Some(s) = p.stop_timeout_s {
                prof.stop_timeout = Duration::from_secs(s);
            }
            if let Some(r) = p.restart {
                let d = RestartPolicy::default();
                prof.restart = RestartPolicy {
                    enabled: r.enabled.unwrap_or(d.enabled),
                    backoff: r.backoff_s.map_or(d.backoff, Duration::from_secs),
                    max_restarts: r.max_restarts.unwrap_or(d.max_restarts),
                    window: r.window_s.map_or(d.window, Duration::from_secs),
                };
            }
            if let Some(h) = p.health_cmd {
                if h.is_empty() {
                    return Err(invalid(&key("health_cmd"), "must name the program to run"));
                }
                prof.health_cmd = Some(h);
            }
            if let Some(m) = p.max_sidecars {
                if m == 0 {
                    return Err(invalid(
                        &key("max_sidecars"),
                        "must be at least 1 (to serve no sidecars of this kind, set enabled to false)",
                    ));
                }
                prof.max_sidecars = m;
            }
            if let Some(t) = p.health_timeout_s {
                prof.health_timeout = Duration::from_secs(t.max(1));
            }
            if let Some(t) = p.health_interval_s {
                if t == 0 {
                    return Err(invalid(
                        &key("health_interval_s"),
                        "must be at least 1 (seconds between two checks of each sidecar)",
                    ));
                }
                prof.health_interval = Duration::from_secs(t);
            }
            if let Some(m) = p.max_argv_bytes {
                if m == 0 || m > MAX_MAX_ARGV_BYTES {
                    return Err(invalid(
                        &key("max_argv_bytes"),
                        &format!(
                            "must be between 1 and {MAX_MAX_ARGV_BYTES} (the queue's line limit)"
                        ),
                    ));
                }
                prof.max_argv_bytes = m;
            }
            if prof.image.as_deref() == Some("") {
                return Err(invalid(&key("image"), "must not be empty"));
            }
            if prof.command.is_empty() {
                return Err(invalid(&key("command"), "must name the program to run"));
            }
            if engine == Engine::Docker && prof.user.is_some() {
                return Err(invalid(
                    &key("user"),
                    "cannot be set with engine docker: a docker sidecar joins its namespace through an entry helper that must start as root; leave it out and let the daemon drop privileges itself (dnsmasq --user, haproxy's user)",
                ));
            }
            if prof.labels.keys().any(|k| k.starts_with("io.sidespawn.")) {
                return Err(invalid(
                    &key("labels"),
                    "keys under io.sidespawn. are reserved for sidespawn's own labels",
                ));
            }
            kinds.insert(kind, prof);
        }
        Ok(HostConfig {
            path: path.to_owned(),
            queue_root: f
                .queue_root
                .unwrap_or_else(|| crate::shared::defaults::QUEUE_ROOT.into()),
            state_dir,
            netns_dir: f
                .netns_dir
                .unwrap_or_else(|| crate::shared::defaults::NETNS_DIR.into()),
            engine,
            engine_program,
            netns_helper: f
                .netns_helper
                .unwrap_or_else(|| DEFAULT_NETNS_HELPER.into()),
            lock_timeout: Duration::from_millis(
                f.lock_timeout_ms
                    .unwrap_or(crate::shared::defaults::LOCK_TIMEOUT_MS),
            ),
            engine_timeout: Duration::from_millis(engine_timeout_ms.unwrap_or(60_000)),
            parallelism,
            max_queue_bytes: f.max_queue_bytes.unwrap_or(64 * 1024 * 1024),
            ack_max_age: Duration::from_secs(f.ack_max_age_s.unwrap_or(3600)),
            max_passes: f.max_passes.unwrap_or(1000).max(1),
            instance,
            kinds,
        })
    }

    /// The profile of `kind`, checked to be servable.
    pub fn profile(&self, kind: Kind) -> Result<&Profile, ConfigError> {
        let p = self.kinds.get(&kind).ok_or_else(|| ConfigError::Invalid {
            path: self.path.clone(),
            key: format!("kinds.{kind}"),
            message: format!(
                "{kind} is not configured on this host; add a profile with at least an image"
            ),
        })?;
        if p.image.is_none() {
            return Err(ConfigError::Invalid {
                path: self.path.clone(),
                key: format!("kinds.{kind}.image"),
                message: "is required: the image the sidecars run".into(),
            });
        }
        Ok(p)
    }

    /// The kinds this host serves.
    pub fn enabled_kinds(&self) -> Vec<Kind> {
        self.kinds
            .values()
            .filter(|p| p.enabled)
            .map(|p| p.kind)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutron_namespace_patterns() {
        let p = Profile::defaults(Kind::Dnsmasq);
        assert!(p.netns_allowed("qdhcp-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a"));
        assert!(p.netns_allowed("ovnmeta-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a"));
        assert!(!p.netns_allowed("qdhcp-0F6A6E0C-2A8B-4D7E-9C53-5B0C7B7B6C1A"));
        assert!(!p.netns_allowed("qdhcp-0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a-x"));
        assert!(!p.netns_allowed("other"));
        assert!(pattern_matches("test-*", "test-a.b"));
        assert!(!pattern_matches("test-*", "test-"));
    }

    #[test]
    fn many_wildcards_against_a_long_hostile_name_stay_quick() {
        // A request's namespace name is up to 255 bytes of the agent's choosing.
        let name = "q-".repeat(127);
        let start = std::time::Instant::now();
        assert!(!pattern_matches("*-*-*-*-*-*-*-*-*-*-*-x", &name));
        assert!(pattern_matches("*-*-*-*-*-*-*-*-*-*-*-", &name));
        assert!(!pattern_matches(&"*".repeat(256), &name));
        assert!(pattern_matches(&"*".repeat(254), &name));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn wildcards_and_uuids_combine() {
        let u = "0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a";
        assert!(pattern_matches("*-{uuid}", &format!("qdhcp-{u}")));
        assert!(pattern_matches("q*p-{uuid}", &format!("qdhcp-{u}")));
        assert!(pattern_matches("{uuid}*", &format!("{u}-x")));
        assert!(!pattern_matches("{uuid}*", u));
        assert!(!pattern_matches("*{uuid}", u));
        assert!(pattern_matches("a*b*c", "aXbYc"));
        assert!(!pattern_matches("a*b*c", "abc"));
        assert!(pattern_matches("", ""));
        assert!(!pattern_matches("", "x"));
        assert!(!pattern_matches("*", ""));
    }

    #[test]
    fn foreground_flags_enforced() {
        let p = Profile::defaults(Kind::Haproxy);
        assert_eq!(
            p.daemon_argv(&strings(&["-f", "/x.cfg", "-D"])),
            strings(&["-Ws", "-f", "/x.cfg"])
        );
    }

    #[test]
    fn missing_image_names_the_key() {
        let c = HostConfig::from_str(Path::new("/c.json"), r#"{"kinds":{"dnsmasq":{}}}"#).unwrap();
        let e = c.profile(Kind::Dnsmasq).unwrap_err().to_string();
        assert!(
            e.contains("kinds.dnsmasq.image") && e.contains("/c.json"),
            "{e}"
        );
        let e = c.profile(Kind::Radvd).unwrap_err().to_string();
        assert!(e.contains("kinds.radvd"), "{e}");
    }

    #[test]
    fn parallelism_defaults_to_twice_the_cpus_within_2_to_8() {
        let p = Path::new("/c.json");
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let c = HostConfig::from_str(p, "{}").unwrap();
        assert_eq!(c.parallelism, (2 * cpus).clamp(2, 8));
        let c = HostConfig::from_str(p, r#"{"parallelism":16}"#).unwrap();
        assert_eq!(c.parallelism, 16);
    }

    #[test]
    fn unknown_keys_and_bad_values_refused() {
        let p = Path::new("/c.json");
        assert!(HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"imgae":"x"}}}"#).is_err());
        assert!(HostConfig::from_str(p, r#"{"kinds":{"bash":{}}}"#).is_err());
        assert!(HostConfig::from_str(p, r#"{"parallelism":0}"#).is_err());
        let e = HostConfig::from_str(
            p,
            r#"{"kinds":{"dnsmasq":{"image":"i","labels":{"io.sidespawn.kind":"x"}}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("reserved"));
    }

    #[test]
    fn max_sidecars_defaults_and_refuses_zero() {
        let p = Path::new("/c.json");
        let c = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i"}}}"#).unwrap();
        assert_eq!(c.kinds[&Kind::Dnsmasq].max_sidecars, DEFAULT_MAX_SIDECARS);
        let c = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i","max_sidecars":3}}}"#)
            .unwrap();
        assert_eq!(c.kinds[&Kind::Dnsmasq].max_sidecars, 3);
        let e = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i","max_sidecars":0}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kinds.dnsmasq.max_sidecars"), "{e}");
    }

    #[test]
    fn health_interval_defaults_and_refuses_zero() {
        let p = Path::new("/c.json");
        let c = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i"}}}"#).unwrap();
        assert_eq!(
            c.kinds[&Kind::Dnsmasq].health_interval,
            DEFAULT_HEALTH_INTERVAL
        );
        let c = HostConfig::from_str(
            p,
            r#"{"kinds":{"dnsmasq":{"image":"i","health_interval_s":7}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.kinds[&Kind::Dnsmasq].health_interval,
            Duration::from_secs(7)
        );
        let e = HostConfig::from_str(
            p,
            r#"{"kinds":{"dnsmasq":{"image":"i","health_interval_s":0}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kinds.dnsmasq.health_interval_s"), "{e}");
    }

    #[test]
    fn restart_policy_defaults_and_overrides() {
        let p = Path::new("/c.json");
        let c = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i"}}}"#).unwrap();
        assert_eq!(c.kinds[&Kind::Dnsmasq].restart, RestartPolicy::default());
        let c = HostConfig::from_str(
            p,
            r#"{"kinds":{"dnsmasq":{"image":"i","restart":{"enabled":false,"max_restarts":2}}}}"#,
        )
        .unwrap();
        let r = c.kinds[&Kind::Dnsmasq].restart;
        assert!(!r.enabled);
        assert_eq!(r.max_restarts, 2);
        assert_eq!(r.backoff, Duration::from_secs(5));
        assert!(
            HostConfig::from_str(
                p,
                r#"{"kinds":{"dnsmasq":{"image":"i","restart":{"x":1}}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn instance_is_derived_from_the_state_dir_and_stable() {
        let base = std::env::temp_dir().join(format!(
            "sidespawn-inst-{}",
            crate::shared::record::new_id(0)
        ));
        let dir = base.join("state");
        let before = instance_id(&dir);
        assert_eq!(before.len(), 12);
        assert!(valid_instance(&before), "{before}");
        // Other spellings of the same directory, before it exists...
        assert_eq!(instance_id(&base.join("x/../state")), before);
        assert_eq!(instance_id(&base.join("./state")), before);
        std::fs::create_dir_all(&dir).unwrap();
        // ...after it is created, and through a symlinked parent.
        assert_eq!(instance_id(&dir), before);
        std::os::unix::fs::symlink(&base, base.with_extension("link")).unwrap();
        assert_eq!(
            instance_id(&base.with_extension("link").join("state")),
            before
        );
        assert_ne!(instance_id(&base.join("other")), before);
        let text = serde_json::json!({"state_dir": dir}).to_string();
        let c = HostConfig::from_str(Path::new("/c.json"), &text).unwrap();
        assert_eq!(c.instance, before);
        let _ = std::fs::remove_file(base.with_extension("link"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn instance_override_is_validated_and_reaches_every_profile() {
        let p = Path::new("/c.json");
        let c = HostConfig::from_str(
            p,
            r#"{"instance":"site_a","kinds":{"dnsmasq":{"image":"i"},"haproxy":{"image":"i"}}}"#,
        )
        .unwrap();
        assert_eq!(c.instance, "site_a");
        assert!(c.kinds.values().all(|k| k.instance == "site_a"));
        for bad in ["", "a-b", "A", "a b", "a/b", &"a".repeat(33)] {
            let e = HostConfig::from_str(p, &serde_json::json!({ "instance": bad }).to_string())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("instance") && e.contains("[a-z0-9_]"),
                "{bad:?}: {e}"
            );
        }
        assert!(valid_instance(&"a".repeat(32)));
    }

    #[test]
    fn max_argv_bytes_default_and_bounds() {
        let p = Path::new("/c.json");
        let c = HostConfig::from_str(p, r#"{"kinds":{"dnsmasq":{"image":"i"}}}"#).unwrap();
        assert_eq!(c.kinds[&Kind::Dnsmasq].max_argv_bytes, 65536);
        let c = HostConfig::from_str(
            p,
            r#"{"kinds":{"haproxy":{"image":"i"},"keepalived":{"image":"i"},"radvd":{"image":"i"}}}"#,
        )
        .unwrap();
        for k in [Kind::Haproxy, Kind::Keepalived, Kind::Radvd] {
            assert_eq!(c.kinds[&k].max_argv_bytes, 8192, "{k}");
        }
        let c = HostConfig::from_str(
            p,
            r#"{"kinds":{"dnsmasq":{"image":"i","max_argv_bytes":4096}}}"#,
        )
        .unwrap();
        assert_eq!(c.kinds[&Kind::Dnsmasq].max_argv_bytes, 4096);
        for bad in ["0", "1048577"] {
            let e = HostConfig::from_str(
                p,
                &format!(r#"{{"kinds":{{"dnsmasq":{{"image":"i","max_argv_bytes":{bad}}}}}}}"#),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("kinds.dnsmasq.max_argv_bytes"), "{e}");
        }
    }
}
