//! The container runtime seam: everything sidespawn asks of its container
//! engine, podman or docker ([`Engine`]).
//!
//! [`Podman`] is the real implementation: one helper runs every podman
//! command with an argv vector (never a shell), a timeout, `INVOCATION_ID`
//! removed from the environment (so podman moves conmon out of the calling
//! service's cgroup and sidecars outlive the oneshot sync), stderr captured
//! into the error and the argv logged at debug level. `FakeRuntime`
//! (`fake.rs`, only in tests and with the `test-support` feature) records
//! calls instead. A call is also a value ([`Call`]): [`call_args`]
//! turns it into podman's argv for both execution and `describe`, and
//! [`perform`] dispatches it, so a dry run prints what runs.
//! [`SidecarLabels`] is the one typed view of the labels sidespawn puts on
//! a sidecar.
//!
//! Invariants: nothing from a request ever lands before the image in
//! `podman run` (values are attached with `=`, the image follows `--`);
//! every podman process is made by one builder that removes the scrubbed
//! variables; every podman call but `logs` runs in its own process group,
//! which a timeout kills before the process is reaped, so no call outlives
//! its limit and no unrelated process can be hit (`logs` streams for as
//! long as the operator wants and stays in the terminal's group, so that
//! Ctrl-C reaches it); `describe` prints exactly the argv that would run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::shared::kind::Kind;
use crate::shared::record::Signal;

mod docker;
mod parse;
mod podman;
mod process;
pub use crate::host::shell::{quote_words as quote_args, shell_quote};
pub use docker::{Docker, NETNS_EXEC_NAME};
pub use parse::PS_FORMAT;
pub use podman::{Podman, call_args};

#[cfg(any(test, feature = "test-support"))]
mod fake;
#[cfg(any(test, feature = "test-support"))]
pub use fake::FakeRuntime;

/// The container engine a configuration runs its sidecars on (`engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Podman,
    Docker,
}

impl Engine {
    /// The name in the configuration, which is also the default program.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runtime of a configuration: its engine, program, time limit and
/// (docker) namespace helper. The one place the engine is chosen.
pub fn for_config(cfg: &crate::host::config::HostConfig) -> Box<dyn Runtime> {
    match cfg.engine {
        Engine::Podman => Box::new(Podman::new(cfg.engine_program.clone(), cfg.engine_timeout)),
        Engine::Docker => Box::new(Docker::new(
            cfg.engine_program.clone(),
            cfg.engine_timeout,
            cfg.netns_helper.clone(),
        )),
    }
}

/// Label keys put on every sidecar.
pub mod labels {
    pub const MANAGED_BY: &str = "io.sidespawn.managed-by";
    pub const MANAGED_BY_VALUE: &str = "sidespawn";
    /// The configuration that owns the sidecar (`HostConfig::instance`).
    /// Every listing filters on it, so a configuration sees, names,
    /// signals and removes only its own sidecars.
    pub const INSTANCE: &str = "io.sidespawn.instance";
    pub const KIND: &str = "io.sidespawn.kind";
    pub const KEY: &str = "io.sidespawn.key";
    pub const NETNS: &str = "io.sidespawn.netns";
    pub const NETNS_INO: &str = "io.sidespawn.netns-ino";
    pub const TAG: &str = "io.sidespawn.tag";
    pub const ARGV_HASH: &str = "io.sidespawn.argv-hash";
    pub const REQUEST_ID: &str = "io.sidespawn.request-id";
    pub const GENERATION: &str = "io.sidespawn.generation";
}

/// The typed view of a sidecar's labels: every label sidespawn puts on a
/// sidecar, read in one place instead of by key across the modules. A
/// missing or malformed label reads as `None` (or `false`): a container
/// whose labels say nothing is nobody's sidecar.
#[derive(Debug, Clone, Copy)]
pub struct SidecarLabels<'a>(&'a BTreeMap<String, String>);

impl<'a> SidecarLabels<'a> {
    /// The labels of a listed or inspected container.
    pub fn of(c: &'a ContainerInfo) -> SidecarLabels<'a> {
        SidecarLabels(&c.labels)
    }

    /// Labels as an engine event reports them.
    pub fn of_labels(labels: &'a BTreeMap<String, String>) -> SidecarLabels<'a> {
        SidecarLabels(labels)
    }

    /// The labels a sidecar is about to be started with.
    pub fn of_spec(spec: &'a RunSpec) -> SidecarLabels<'a> {
        SidecarLabels(&spec.labels)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(String::as_str)
    }

    /// Carries our managed-by label.
    pub fn is_managed(&self) -> bool {
        self.get(labels::MANAGED_BY) == Some(labels::MANAGED_BY_VALUE)
    }
    pub fn instance(&self) -> Option<&'a str> {
        self.get(labels::INSTANCE)
    }
    pub fn kind(&self) -> Option<&'a str> {
        self.get(labels::KIND)
    }
    pub fn is_kind(&self, kind: Kind) -> bool {
        self.kind() == Some(kind.as_str())
    }
    pub fn key(&self) -> Option<&'a str> {
        self.get(labels::KEY)
    }
    pub fn netns(&self) -> Option<&'a str> {
        self.get(labels::NETNS)
    }
    /// The namespace's inode when the sidecar started, as written (compared
    /// as text with the inode now).
    pub fn netns_ino(&self) -> Option<&'a str> {
        self.get(labels::NETNS_INO)
    }
    pub fn tag(&self) -> Option<&'a str> {
        self.get(labels::TAG)
    }
    pub fn argv_hash(&self) -> Option<&'a str> {
        self.get(labels::ARGV_HASH)
    }
    pub fn request_id(&self) -> Option<&'a str> {
        self.get(labels::REQUEST_ID)
    }
    pub fn generation(&self) -> Option<u64> {
        self.get(labels::GENERATION)?.parse().ok()
    }
    /// The generation label as written (`"?"` when there is none), for
    /// messages.
    pub fn generation_text(&self) -> &'a str {
        self.get(labels::GENERATION).unwrap_or("?")
    }
    /// Carries every label of `wanted` with its value (a profile's labels).
    pub fn has_all(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }
    /// A sidecar of `kind` under a profile with `profile_labels`: this
    /// configuration's sidecar of that kind, as gc, limits, recovery and
    /// the generation counter count them.
    pub fn is_profiles(&self, kind: Kind, profile_labels: &BTreeMap<String, String>) -> bool {
        self.is_kind(kind) && self.has_all(profile_labels)
    }
}

/// Container state as podman reports it (lowercase in `podman ps` JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Created,
    Exited,
    Other(String),
}

impl State {
    pub fn parse(s: &str) -> State {
        match s.to_ascii_lowercase().as_str() {
            "running" => State::Running,
            "created" | "configured" | "initialized" => State::Created,
            "exited" | "stopped" => State::Exited,
            other => State::Other(other.to_owned()),
        }
    }
}

/// One container from `podman ps -a` (the fields of [`PS_FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub state: State,
    /// Host pid of the container's main process (0 when not running).
    pub pid: u32,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds when it started (0 when unknown).
    pub started_at: i64,
    pub exit_code: i32,
}

/// The network a sidecar runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// The named namespace at this path (`/run/netns/<name>`), verified by
    /// the host before the call.
    Namespace(std::path::PathBuf),
    /// The host's network.
    Host,
    /// No network at all (only loopback).
    #[default]
    None,
}

/// Everything needed to start one sidecar, in the engine's terms but not in
/// its words: each engine turns it into its own argv (see
/// [`Podman`]'s and [`Docker`]'s `run`). Every field but `daemon_argv`
/// comes from the host profile; `daemon_argv` (from the request) goes after
/// the image and command, where the engine passes it to the daemon
/// untouched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub network: Network,
    /// `--pid host`: the daemon's pid is the host's, so Neutron's pid files
    /// and kill scripts resolve it.
    pub pid_host: bool,
    pub cgroupns_host: bool,
    /// `SRC:DST[:OPTIONS]`, as the profile writes them.
    pub volumes: Vec<String>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub user: Option<String>,
    pub log_driver: Option<String>,
    /// The profile's own engine options (`engine_args`), passed verbatim
    /// before the image.
    pub engine_args: Vec<String>,
    /// The program replacing the image's entrypoint (`None`: the image's).
    pub entrypoint: Option<String>,
    /// The entrypoint's first arguments, e.g. `["-k"]` for `dnsmasq -k`.
    pub command: Vec<String>,
    /// The requested arguments, byte-exact.
    pub daemon_argv: Vec<String>,
}

impl RunSpec {
    /// The arguments after `podman` that start this sidecar on podman
    /// ([`podman::run_args`]): for tests and benchmarks that run podman by
    /// hand. The sync goes through [`Runtime::run`].
    pub fn argv(&self) -> Vec<String> {
        podman::run_args(self)
    }
}

/// A call to the container engine failed. `args` is the command line as
/// run, the engine's program name first (`podman ps -a ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {program}: {message}")]
    Spawn { program: String, message: String },
    #[error("`{args}` timed out after {timeout:?} and was killed")]
    Timeout { args: String, timeout: Duration },
    #[error("`{args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse the output of `{args}`: {message}")]
    Parse { args: String, message: String },
    #[error("no such container {0}")]
    NoSuchContainer(String),
    /// A signal was sent to a container that exists but does not run
    /// (exited or only created): podman refuses with "container state
    /// improper". Callers treat it like "No such process".
    #[error("container {0} is not running")]
    NotRunning(String),
    /// `podman run` found the name taken: a container of that name exists
    /// in some state (often created by an earlier, interrupted sync whose
    /// `podman run` outlived it). The caller looks at it and decides.
    #[error("the container name {0} is already in use")]
    NameInUse(String),
    /// The image is not in the engine's local storage (and was not to be
    /// pulled).
    #[error("the image {0} is not present on this host (pull it first, or pass --pull)")]
    NoSuchImage(String),
}

/// What sidespawn needs from a container engine.
pub trait Runtime: Send + Sync {
    /// The containers of configuration `instance`: carrying our managed-by
    /// label and `io.sidespawn.instance=<instance>`, in any state. Never
    /// another configuration's, nor one from before the instance label.
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// [`Runtime::list`] for a caller that resolves no pid (a batch without
    /// kill requests): a runtime that keeps a view of its containers may
    /// answer from it with a running container's `pid` 0 where it has not
    /// learnt it. The engines themselves list.
    fn list_without_pids(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.list(instance)
    }
    /// Names of sidespawn's containers that carry no `io.sidespawn.instance`
    /// label: made before the label existed, so no configuration can prove
    /// they are its own and none touches them. Only `status` asks, to tell
    /// the operator they need removing by hand (README, "Upgrading").
    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Creates and starts a sidecar; returns the container id.
    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError>;
    /// Sends a signal to the container's main process.
    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError>;
    /// Stops (SIGTERM, then SIGKILL after `timeout`).
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes the container, stopping it at once if it still runs.
    fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// One container by name, in any state (`podman container inspect`,
    /// [`RuntimeError::NoSuchContainer`] when there is none): what `ps`
    /// gives of it (`started_at` is 0) and the arguments it runs after its
    /// image. The one inspection: taking over a container name and
    /// rebuilding a lost desired entry both use it.
    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError>;
    /// [`Runtime::inspect`] without the command.
    fn inspect_container(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        self.inspect(name).map(|i| i.container)
    }
    /// The argv a call would run, for `--dry-run`.
    fn describe(&self, call: &Call) -> String;
    /// Streams a container's logs to this process's stdout and stderr
    /// (`podman logs [--follow] -- NAME`), without a time limit: `--follow`
    /// lasts until the operator stops it. Returns podman's exit status,
    /// which is the `logs` command's. Runtimes without it say so.
    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        let _ = follow;
        Err(RuntimeError::Spawn {
            program: format!("logs of {name}"),
            message: "this runtime cannot show logs".to_owned(),
        })
    }
    /// Runs a host-configured health command inside a running container
    /// (`podman exec NAME ARGV...`) within `timeout`; `Ok` when it exits 0.
    /// Runtimes without it report every check as failed to run.
    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let _ = (argv, timeout);
        Err(RuntimeError::Spawn {
            program: format!("exec in {name}"),
            message: "this runtime cannot run health checks".to_owned(),
        })
    }
    /// Follows the engine's container events for configuration `instance`
    /// (`podman events --filter label=...`): what lets a host react to a
    /// sidecar's death, or keep its view of containers current, without
    /// listing. Runtimes without it say so, and callers fall back to
    /// listing.
    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        Err(RuntimeError::Spawn {
            program: format!("events of {instance}"),
            message: "this runtime cannot follow events".to_owned(),
        })
    }
    /// The engine's own version line (`podman --version`).
    fn version(&self) -> Result<String, RuntimeError> {
        Err(RuntimeError::Spawn {
            program: "version".to_owned(),
            message: "this runtime cannot tell its version".to_owned(),
        })
    }
    /// How the engine is set up on this host, for `check`.
    fn info(&self) -> Result<EngineInfo, RuntimeError> {
        Err(RuntimeError::Spawn {
            program: "info".to_owned(),
            message: "this runtime cannot describe itself".to_owned(),
        })
    }
    /// Makes sure `image` is present and can be run: pulls it when `pull`,
    /// otherwise verifies it is already present. An error names why, and
    /// changes nothing.
    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        let _ = pull;
        Err(RuntimeError::Spawn {
            program: format!("image check of {image}"),
            message: "this runtime cannot check images".to_owned(),
        })
    }
    /// Runs `argv` (a program of the image and its arguments, e.g. a
    /// version probe) in a throwaway container of `image` with no network
    /// and no capabilities, removed when it exits, within `timeout`; `Ok`
    /// when it exits 0. Never pulls: [`Runtime::ensure_image`] comes first.
    /// What tells an image that is present from one that can start its
    /// kind's program (a missing binary or library, a wrong architecture).
    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let _ = (argv, timeout);
        Err(RuntimeError::Spawn {
            program: format!("probe of {image}"),
            message: "this runtime cannot probe images".to_owned(),
        })
    }
}

/// What `check` reports about the engine (`podman info`, `docker info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    /// `systemd` or `cgroupfs` (podman's cgroup manager, docker's cgroup
    /// driver).
    pub cgroup_manager: String,
    pub cgroup_version: String,
    /// The default OCI runtime's name and program path, when the engine says.
    pub oci_runtime: Option<(String, String)>,
}

/// What the engine's event stream says happened to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Container name.
    pub name: String,
    /// Container id (full or short, as the engine reports it).
    pub id: String,
    pub action: EventAction,
    /// The container's labels, when the engine reports them with the event.
    pub labels: BTreeMap<String, String>,
}

/// The container events sidespawn acts on; anything else is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// Its main process started.
    Started,
    /// Its main process exited, with this code when the engine says.
    Died {
        exit_code: Option<i32>,
    },
    /// It was removed.
    Removed,
    Other(String),
}

/// A running subscription to the engine's container events, already
/// filtered to one configuration's sidecars. Ends (`None`) when the
/// engine's stream ends; dropping it stops the subscription.
pub type Events = Box<dyn Iterator<Item = Result<ContainerEvent, RuntimeError>> + Send>;

/// Carries out one call on `runtime`: the single dispatch from a [`Call`]
/// value to the engine, so whatever is described is what runs.
pub fn perform(runtime: &dyn Runtime, call: &Call) -> Result<(), RuntimeError> {
    match call {
        Call::List(instance) => runtime.list(instance).map(drop),
        Call::Run(spec) => runtime.run(spec).map(drop),
        Call::Kill(name, signal) => runtime.kill(name, *signal),
        Call::Stop(name, timeout) => runtime.stop(name, *timeout),
        Call::Remove(name) => runtime.remove(name),
        Call::Inspect(name) => runtime.inspect(name).map(drop),
        Call::Logs { name, follow } => runtime.logs(name, *follow).map(drop),
    }
}

/// One container as `podman container inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The fields `ps` also gives (`started_at` is 0).
    pub container: ContainerInfo,
    /// The arguments it runs after its image (`Config.Cmd`): the profile's
    /// command arguments, then the daemon argv.
    pub command: Vec<String>,
}

/// One runtime call, as a value (recorded by the fake, printed by dry runs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "calls are made one at a time and recorded only by the fake"
)]
pub enum Call {
    /// List one configuration's containers (its instance).
    List(String),
    Run(RunSpec),
    Kill(String, Signal),
    Stop(String, Duration),
    Remove(String),
    Inspect(String),
    /// Stream a container's logs to this process's stdout (`--follow`: until
    /// the container stops or the operator interrupts).
    Logs {
        name: String,
        follow: bool,
    },
}

/// Whether `c` is a sidecar of configuration `instance`.
pub fn is_managed(c: &ContainerInfo, instance: &str) -> bool {
    let l = SidecarLabels::of(c);
    l.is_managed() && l.instance() == Some(instance)
}

/// Helpers the tests of the runtime's modules share.
#[cfg(test)]
mod test_util {
    use super::*;

    pub(super) fn by_name<'a>(cs: &'a [ContainerInfo], name: &str) -> &'a ContainerInfo {
        cs.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} in {cs:#?}"))
    }

    pub(super) fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    pub(super) fn spec(name: &str, daemon_argv: &[&str]) -> RunSpec {
        RunSpec {
            name: name.to_owned(),
            image: "localhost/dnsmasq:1".to_owned(),
            labels: [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                (labels::KIND, "dnsmasq"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            network: Network::Namespace("/run/netns/qdhcp-1".into()),
            pid_host: true,
            entrypoint: Some("dnsmasq".to_owned()),
            command: strings(&["-k"]),
            daemon_argv: strings(daemon_argv),
            ..RunSpec::default()
        }
    }
}
