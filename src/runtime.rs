//! The container runtime seam: everything sidespawn asks of podman.
//!
//! [`Podman`] is the real implementation: one helper runs every podman
//! command with an argv vector (never a shell), a timeout, `INVOCATION_ID`
//! removed from the environment (so podman moves conmon out of the calling
//! service's cgroup and sidecars outlive the oneshot sync), stderr captured
//! into the error and the argv logged at debug level. [`FakeRuntime`] records
//! calls for unit tests.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::record::Signal;

/// Label keys put on every sidecar.
pub mod labels {
    pub const MANAGED_BY: &str = "io.sidespawn.managed-by";
    pub const MANAGED_BY_VALUE: &str = "sidespawn";
    pub const KIND: &str = "io.sidespawn.kind";
    pub const KEY: &str = "io.sidespawn.key";
    pub const NETNS: &str = "io.sidespawn.netns";
    pub const NETNS_INO: &str = "io.sidespawn.netns-ino";
    pub const TAG: &str = "io.sidespawn.tag";
    pub const ARGV_HASH: &str = "io.sidespawn.argv-hash";
    pub const REQUEST_ID: &str = "io.sidespawn.request-id";
    pub const GENERATION: &str = "io.sidespawn.generation";
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

/// One container from `podman ps -a --format json`.
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

/// Everything needed to `podman run -d` one sidecar. `podman_args` come from
/// the host profile only; `daemon_argv` (from the request) goes after the
/// image and command, where podman passes it to the daemon untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Host-chosen options: network, pid, cgroupns, volumes, capabilities...
    pub podman_args: Vec<String>,
    /// The program inside the image, e.g. `["dnsmasq", "-k"]`.
    pub command: Vec<String>,
    /// The requested arguments, byte-exact.
    pub daemon_argv: Vec<String>,
}

impl RunSpec {
    /// The arguments after `podman`. The image is the last podman-side
    /// word; everything after it belongs to the container's command.
    pub fn argv(&self) -> Vec<String> {
        let mut a = vec![
            "run".to_owned(),
            "-d".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
        ];
        for (k, v) in &self.labels {
            a.push("--label".to_owned());
            a.push(format!("{k}={v}"));
        }
        a.extend(self.podman_args.iter().cloned());
        a.push(self.image.clone());
        a.extend(self.command.iter().cloned());
        a.extend(self.daemon_argv.iter().cloned());
        a
    }
}

/// A podman call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot run {program}: {message} (install podman or set \"podman\" in the host configuration)"
    )]
    Spawn { program: String, message: String },
    #[error("`podman {args}` timed out after {timeout:?} and was killed")]
    Timeout { args: String, timeout: Duration },
    #[error("`podman {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse the output of `podman {args}`: {message}")]
    Parse { args: String, message: String },
    #[error("no such container {0}")]
    NoSuchContainer(String),
}

/// What sidespawn needs from a container engine.
pub trait Runtime: Send + Sync {
    /// All containers carrying our managed-by label, in any state.
    fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// Creates and starts a sidecar; returns the container id.
    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError>;
    /// Sends a signal to the container's main process.
    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError>;
    /// Stops (SIGTERM, then SIGKILL after `timeout`).
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes the container, stopping it at once if it still runs.
    fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// The argv a call would run, for `--dry-run`.
    fn describe(&self, call: &Call) -> String;
}

/// One runtime call, as a value (recorded by the fake, printed by dry runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List,
    Run(RunSpec),
    Kill(String, Signal),
    Stop(String, Duration),
    Remove(String),
}
