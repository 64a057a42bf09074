//! The docker runtime: [`Docker`] turns each call into the docker CLI's
//! argv ([`call_args`], which `describe` prints too), runs it through the
//! shared [`Runner`](super::process::Runner) and reads docker's output and
//! error words.
//!
//! Docker differs from podman in three ways that matter here:
//!
//! - It cannot join a named network namespace (`--network ns:PATH` does not
//!   exist). A sidecar that must run in `/run/netns/<name>` starts with
//!   `--network none`, the namespace file and the static `sidespawn-wrapper`
//!   bind-mounted read-only, and the wrapper as its entrypoint under the
//!   name [`NETNS_EXEC_NAME`]: it joins the namespace (`setns`, which needs
//!   `CAP_SYS_ADMIN`), removes `CAP_SYS_ADMIN` from every capability set and
//!   checks it is gone, then execs the daemon — so the daemon runs with
//!   exactly the profile's capabilities, in the namespace, as the container's
//!   main process (same pid, so `--pid host` pid files and kill scripts
//!   work). See SECURITY.md, "Docker sidecars".
//! - Its listing (`docker ps`) has no pid, start time or exit code and
//!   joins labels into one string, so the listing is `ps -q` for the ids and
//!   one `inspect` with a Go template of bounded fields.
//! - Its containers are children of containerd's shims, never of the
//!   caller: nothing the CLI starts stays in the calling service's cgroup,
//!   so sidecars outlive the oneshot sync without any `KillMode` help.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::process::{EventIter, Runner};
use super::*;

/// The name the static wrapper answers to as the namespace-joining entry
/// helper (its `argv[0]`, so no request can select it: a request only ever
/// supplies arguments after the image).
pub const NETNS_EXEC_NAME: &str = crate::sidecar::netns_exec::NAME;
/// Where the helper is bind-mounted in a docker sidecar.
pub const HELPER_IN_CONTAINER: &str = "/.sidespawn/sidespawn-netns-exec";
/// Where the namespace file is bind-mounted in a docker sidecar.
pub const NETNS_IN_CONTAINER: &str = "/.sidespawn/netns";

/// How many containers one `docker inspect` of the listing names (bounds
/// its argv: ids are 64 bytes).
const INSPECT_CHUNK: usize = 256;

/// The Go template of the listing's `inspect`: one JSON object per
/// container and line, only fields whose size the host bounds (no command
/// line). Checked against docker 20.10.
const LIST_FORMAT: &str = concat!(
    r#"{"Id":{{json .Id}},"Name":{{json .Name}},"State":{{json .State.Status}},"#,
    r#""Pid":{{json .State.Pid}},"Image":{{json .Config.Image}},"#,
    r#""Labels":{{json .Config.Labels}},"StartedAt":{{json .State.StartedAt}},"#,
    r#""ExitCode":{{json .State.ExitCode}}}"#
);

/// [`LIST_FORMAT`] plus the entrypoint and command, for [`Runtime::inspect`]
/// of one container.
const INSPECT_FORMAT: &str = concat!(
    r#"{"Id":{{json .Id}},"Name":{{json .Name}},"State":{{json .State.Status}},"#,
    r#""Pid":{{json .State.Pid}},"Image":{{json .Config.Image}},"#,
    r#""Labels":{{json .Config.Labels}},"StartedAt":{{json .State.StartedAt}},"#,
    r#""ExitCode":{{json .State.ExitCode}},"Entrypoint":{{json .Config.Entrypoint}},"#,
    r#""Cmd":{{json .Config.Cmd}}}"#
);

/// The real runtime on docker: the `docker` command line.
#[derive(Debug, Clone)]
pub struct Docker {
    runner: Runner,
    /// The static `sidespawn-wrapper` on the host (`netns_helper`).
    helper: PathBuf,
}

impl Docker {
    /// `program` is the docker CLI (a bare name is looked up in `PATH`;
    /// `DOCKER_HOST` in the environment selects the daemon); `timeout`
    /// bounds every call; `helper` is the static wrapper the sidecars that
    /// join a namespace run as their entry helper.
    pub fn new(
        program: impl Into<PathBuf>,
        timeout: Duration,
        helper: impl Into<PathBuf>,
    ) -> Docker {
        Docker {
            runner: Runner::new("docker", program, timeout),
            helper: helper.into(),
        }
    }

    /// Adds a variable to docker's environment (tests point `DOCKER_HOST`
    /// at their own daemon this way).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Docker {
        self.runner.push_env(key.into(), value.into());
        self
    }

    pub fn program(&self) -> &Path {
        self.runner.program()
    }

    fn call(
        &self,
        args: &[String],
        timeout: Duration,
        classify: impl FnOnce(&str) -> Option<Result<(), RuntimeError>>,
    ) -> Result<Vec<u8>, RuntimeError> {
        self.runner.call(args, timeout, classify)
    }

    fn parse_error(&self, args: &[String], message: String) -> RuntimeError {
        RuntimeError::Parse {
            args: self.runner.error_args(args),
            message,
        }
    }

    /// `docker inspect` of `ids` with [`LIST_FORMAT`]. A container removed
    /// between the `ps` and this call is left out (docker prints the others
    /// and names the missing one on stderr).
    fn inspect_many(&self, ids: &[String]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut args = strings(&["inspect", "--type=container", "--format", LIST_FORMAT, "--"]);
        args.extend(ids.iter().cloned());
        let f = self.runner.exec(&args, self.runner.timeout())?;
        if !f.status.success() && !only_missing(&f.stderr) {
            return Err(RuntimeError::Failed {
                args: self.runner.error_args(&args),
                status: f.status.to_string(),
                stderr: super::process::summarise_stderr(&f.stderr),
            });
        }
        if f.stdout_truncated {
            return Err(self.parse_error(&args, "too much output".to_owned()));
        }
        parse_lines(&f.stdout)
            .map(|v| v.into_iter().map(|e| e.info()).collect())
            .map_err(|m| self.parse_error(&args, m))
    }
}

impl Runtime for Docker {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let args = call_args(&Call::List(instance.to_owned()), &self.helper);
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        let ids: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSPECT_CHUNK) {
            all.extend(self.inspect_many(chunk)?);
        }
        // The filter again, whatever docker's did.
        all.retain(|c| is_managed(c, instance));
        Ok(all)
    }

    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        let mut args = strings(&["ps", "-a", "--filter"]);
        args.push(format!(
            "label={}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        ));
        args.push("--format".to_owned());
        args.push(format!(
            "{{{{.Names}}}}\t{{{{.Label \"{}\"}}}}",
            labels::INSTANCE
        ));
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| {
                let (name, instance) = l.split_once('\t').unwrap_or((l, ""));
                (!name.trim().is_empty() && instance.trim().is_empty())
                    .then(|| name.trim().to_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        let args = call_args(&Call::Run(spec.clone()), &self.helper);
        let out = self.call(&args, self.runner.timeout(), |stderr| {
            is_name_in_use(stderr).then(|| Err(RuntimeError::NameInUse(spec.name.clone())))
        })?;
        let text = String::from_utf8_lossy(&out);
        match text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(self.parse_error(&args, "docker printed no container id".to_owned())),
        }
    }

    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Kill(name.to_owned(), signal), &self.helper);
        self.call(&args, self.runner.timeout(), |stderr| {
            classify_missing_or_stopped(stderr, name)
        })
        .map(drop)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Stop(name.to_owned(), timeout), &self.helper);
        let limit = self.runner.timeout() + Duration::from_secs(stop_secs(timeout));
        self.call(&args, limit, |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })
        .map(drop)
    }

    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Remove(name.to_owned()), &self.helper);
        // Idempotent, as with podman: a missing container is removed.
        self.call(&args, self.runner.timeout(), |stderr| {
            is_no_such_container(stderr).then_some(Ok(()))
        })
        .map(drop)
    }

    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        let args = call_args(&Call::Inspect(name.to_owned()), &self.helper);
        let out = self.call(&args, self.runner.timeout(), |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })?;
        let entry = parse_lines(&out)
            .map_err(|m| self.parse_error(&args, m))?
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        let command = sidecar_command(
            entry.entrypoint.as_deref().unwrap_or_default(),
            entry.cmd.as_deref().unwrap_or_default(),
        );
        Ok(Inspected {
            container: ContainerInfo {
                started_at: 0,
                ..entry.info()
            },
            command,
        })
    }

    fn describe(&self, call: &Call) -> String {
        self.runner.describe(&call_args(call, &self.helper))
    }

    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        let args = call_args(
            &Call::Logs {
                name: name.to_owned(),
                follow,
            },
            &self.helper,
        );
        self.runner
            .command_for(&args)
            .status()
            .map_err(|e| self.runner.spawn_error(e))
    }

    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        // docker stops reading its own options at the container name. runc
        // joins the namespaces of the container's main process, which the
        // entry helper moved into the sidecar's network namespace, so the
        // check runs where the daemon serves.
        let mut args = vec!["exec".to_owned(), name.to_owned()];
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            classify_missing_or_stopped(stderr, name)
        })
        .map(drop)
    }

    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        let mut args = strings(&[
            "events",
            "--format",
            "{{json .}}",
            "--filter",
            "type=container",
        ]);
        args.push("--filter".to_owned());
        args.push(format!(
            "label={}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        ));
        args.push("--filter".to_owned());
        args.push(format!("label={}={instance}", labels::INSTANCE));
        let stream = self.runner.stream(&args)?;
        Ok(Box::new(EventIter::new(stream, instance, parse_event)))
    }

    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        let args = if pull {
            strings(&["pull", "--quiet", "--", image])
        } else {
            strings(&["image", "inspect", "--format", "{{.Id}}", "--", image])
        };
        // A pull downloads layers: the call timeout of a run or a stop is
        // too short for a large image on a slow link.
        let timeout = if pull {
            self.runner.timeout().max(PULL_TIMEOUT)
        } else {
            self.runner.timeout()
        };
        self.call(&args, timeout, |stderr| {
            is_no_such_image(stderr).then(|| Err(RuntimeError::NoSuchImage(image.to_owned())))
        })
        .map(drop)
    }

    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        // A throwaway container: removed on exit, never pulled, no network,
        // no capabilities; the probe's program and arguments follow.
        let mut args = strings(&[
            "run",
            "--rm",
            "--pull=never",
            "--network=none",
            "--cap-drop=all",
            "--",
            image,
        ]);
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            is_no_such_image(stderr).then(|| Err(RuntimeError::NoSuchImage(image.to_owned())))
        })
        .map(drop)
    }

    fn version(&self) -> Result<String, RuntimeError> {
        let args = strings(&["--version"]);
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    fn info(&self) -> Result<EngineInfo, RuntimeError> {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Info {
            #[serde(default)]
            cgroup_driver: String,
            #[serde(default)]
            cgroup_version: String,
            #[serde(default)]
            default_runtime: String,
            #[serde(default)]
            runtimes: BTreeMap<String, RuntimeEntry>,
        }
        #[derive(Deserialize, Default)]
        struct RuntimeEntry {
            #[serde(default)]
            path: String,
        }
        let args = strings(&["info", "--format", "{{json .}}"]);
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        let i: Info =
            serde_json::from_slice(&out).map_err(|e| self.parse_error(&args, e.to_string()))?;
        let oci = i
            .runtimes
            .get(&i.default_runtime)
            .map(|r| (i.default_runtime.clone(), r.path.clone()));
        Ok(EngineInfo {
            cgroup_manager: i.cgroup_driver,
            cgroup_version: i.cgroup_version,
            oci_runtime: oci,
        })
    }
}

/// The event stream of one configuration, parsed.
/// One `docker events --format '{{json .}}'` line; `None` for an event that
/// is not a container's.
fn parse_event(line: &str) -> Result<Option<ContainerEvent>, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Type", default)]
        kind: String,
        #[serde(rename = "Action", default)]
        action: String,
        #[serde(rename = "Actor", default)]
        actor: Actor,
    }
    #[derive(Deserialize, Default)]
    struct Actor {
        #[serde(rename = "ID", default)]
        id: String,
        #[serde(rename = "Attributes", default)]
        attributes: BTreeMap<String, String>,
    }
    let raw: Raw = serde_json::from_str(line).map_err(|e| format!("event {line:?}: {e}"))?;
    if raw.kind != "container" {
        return Ok(None);
    }
    let mut attrs = raw.actor.attributes;
    let name = attrs.remove("name").unwrap_or_default();
    let exit_code = attrs.remove("exitCode").and_then(|c| c.parse().ok());
    // Docker mixes the container's labels with these attributes of its own.
    for k in ["image", "signal", "execDuration"] {
        attrs.remove(k);
    }
    let action = match raw.action.as_str() {
        "start" => EventAction::Started,
        "die" => EventAction::Died { exit_code },
        "destroy" => EventAction::Removed,
        other => EventAction::Other(other.to_owned()),
    };
    Ok(Some(ContainerEvent {
        name,
        id: raw.actor.id,
        action,
        labels: attrs,
    }))
}

/// One line of [`LIST_FORMAT`] or [`INSPECT_FORMAT`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    started_at: String,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

impl Entry {
    fn info(self) -> ContainerInfo {
        ContainerInfo {
            id: self.id,
            // Docker's names start with the `/` of its old link hierarchy.
            name: self.name.strip_prefix('/').unwrap_or(&self.name).to_owned(),
            state: State::parse(&self.state),
            pid: u32::try_from(self.pid).unwrap_or(0),
            image: self.image,
            labels: self.labels.unwrap_or_default(),
            started_at: unix_seconds(&self.started_at).unwrap_or(0).max(0),
            exit_code: self.exit_code,
        }
    }
}

fn parse_lines(out: &[u8]) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Docker's RFC 3339 UTC time (`2026-12-05T00:12:39.123456789Z`) as Unix
/// seconds; `None` when it is not one (Go's zero time gives a negative
/// number, which callers read as "never started").
fn unix_seconds(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !t.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The command a sidecar runs after its program (what podman's
/// `Config.Cmd` is): the entry helper's own arguments taken off when the
/// helper is the entrypoint.
fn sidecar_command(entrypoint: &[String], cmd: &[String]) -> Vec<String> {
    if entrypoint == [HELPER_IN_CONTAINER] {
        // [netns file, flag, "--", program, rest...]
        if let Some(sep) = cmd.iter().position(|a| a == "--") {
            return cmd.get(sep + 2..).unwrap_or_default().to_vec();
        }
    }
    cmd.to_vec()
}

/// The capabilities the entry helper needs that the profile does not grant:
/// docker adds them to the container and the helper drops them from every
/// set before it execs the daemon (`--drop=`). `SYS_ADMIN` is what `setns`
/// needs; `SETPCAP` is what dropping from the bounding set needs, and is in
/// docker's default set unless the profile drops it.
fn helper_caps(spec: &RunSpec) -> Vec<&'static str> {
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        c.strip_prefix("CAP_").unwrap_or(&c).to_owned()
    };
    let added = |cap: &str| {
        spec.cap_add
            .iter()
            .any(|c| norm(c) == cap || norm(c) == "ALL")
    };
    let dropped = |cap: &str| {
        spec.cap_drop
            .iter()
            .any(|c| norm(c) == cap || norm(c) == "ALL")
    };
    if spec.engine_args.iter().any(|a| a == "--privileged") || added("SYS_ADMIN") {
        return Vec::new();
    }
    let mut caps = vec!["SYS_ADMIN"];
    if dropped("SETPCAP") && !added("SETPCAP") {
        caps.push("SETPCAP");
    }
    caps
}

/// The arguments after `docker` of `docker run -d` for `spec`. As with
/// podman, values are attached with `=` and `--` precedes the image, so no
/// value can be read as an option.
pub fn run_args(spec: &RunSpec, helper: &Path) -> Vec<String> {
    let mut a = vec![
        "run".to_owned(),
        "-d".to_owned(),
        format!("--name={}", spec.name),
    ];
    for (k, v) in &spec.labels {
        a.push(format!("--label={k}={v}"));
    }
    let mut entrypoint = spec.entrypoint.clone();
    let mut prefix: Vec<String> = Vec::new();
    match &spec.network {
        Network::Namespace(path) => {
            a.push("--network=none".to_owned());
            a.push(format!(
                "--volume={}:{HELPER_IN_CONTAINER}:ro",
                helper.display()
            ));
            a.push(format!(
                "--volume={}:{NETNS_IN_CONTAINER}:ro",
                path.display()
            ));
            let caps = helper_caps(spec);
            for c in &caps {
                a.push(format!("--cap-add={c}"));
            }
            prefix.push(NETNS_IN_CONTAINER.to_owned());
            prefix.push(format!("--drop={}", caps.join(",")));
            prefix.push("--".to_owned());
            // Without a program of the profile's, the helper could not
            // know what to exec: the image's own entrypoint is not ours to
            // read, so the kind's name stands in (plan.rs always sets one).
            prefix.push(entrypoint.take().unwrap_or_default());
            entrypoint = Some(HELPER_IN_CONTAINER.to_owned());
        }
        Network::Host => a.push("--network=host".to_owned()),
        Network::None => a.push("--network=none".to_owned()),
    }
    if spec.pid_host {
        a.push("--pid=host".to_owned());
    }
    if spec.cgroupns_host {
        a.push("--cgroupns=host".to_owned());
    }
    for v in &spec.volumes {
        a.push(format!("--volume={v}"));
    }
    for c in &spec.cap_drop {
        a.push(format!("--cap-drop={c}"));
    }
    for c in &spec.cap_add {
        a.push(format!("--cap-add={c}"));
    }
    if let Some(u) = &spec.user {
        a.push(format!("--user={u}"));
    }
    if let Some(d) = &spec.log_driver {
        a.push(format!("--log-driver={d}"));
    }
    a.extend(spec.engine_args.iter().cloned());
    if let Some(e) = entrypoint {
        a.push(format!("--entrypoint={e}"));
    }
    a.push("--".to_owned());
    a.push(spec.image.clone());
    a.extend(prefix);
    a.extend(spec.command.iter().cloned());
    a.extend(spec.daemon_argv.iter().cloned());
    a
}

/// The arguments after `docker` for a call: execution and `describe` both
/// use this. Names go after `--`.
pub fn call_args(call: &Call, helper: &Path) -> Vec<String> {
    match call {
        Call::List(instance) => {
            // Docker ANDs several `label=` filters; `list` checks again.
            let mut a = strings(&["ps", "-a", "-q", "--no-trunc", "--filter"]);
            a.push(format!(
                "label={}={}",
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            ));
            a.push("--filter".to_owned());
            a.push(format!("label={}={instance}", labels::INSTANCE));
            a
        }
        Call::Run(spec) => run_args(spec, helper),
        Call::Kill(name, sig) => {
            let mut a = strings(&["kill"]);
            a.push(format!("--signal={}", sig.as_str()));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        Call::Stop(name, t) => {
            let mut a = strings(&["stop"]);
            a.push(format!("--time={}", stop_secs(*t)));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        // `docker rm -f` kills at once (SIGKILL): no grace time to give.
        Call::Remove(name) => {
            let mut a = strings(&["rm", "--force", "--"]);
            a.push(name.clone());
            a
        }
        Call::Inspect(name) => {
            let mut a = strings(&[
                "inspect",
                "--type=container",
                "--format",
                INSPECT_FORMAT,
                "--",
            ]);
            a.push(name.clone());
            a
        }
        Call::Logs { name, follow } => {
            let mut a = strings(&["logs"]);
            if *follow {
                a.push("--follow".to_owned());
            }
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// `docker stop -t` takes whole seconds; rounded up like podman's.
fn stop_secs(t: Duration) -> u64 {
    t.as_secs() + u64::from(t.subsec_nanos() > 0)
}

/// Docker 20.10: `Error response from daemon: No such container: X`
/// (`Error: No such container: X` from `inspect --type=container`).
fn is_no_such_container(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("no such container")
}

/// Whether every error line of a multi-container `inspect` names a
/// container that is gone (removed between the `ps` and the `inspect`).
fn only_missing(stderr: &str) -> bool {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    !lines.is_empty()
        && lines.iter().all(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("no such container") || l.contains("no such object")
        })
}

/// Docker 20.10 without the image: `Error response from daemon: No such
/// image: x:1` (`image inspect`: `Error: No such image: x:1`).
fn is_no_such_image(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("no such image")
}

/// The longest a `docker pull` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Docker 20.10: `Conflict. The container name "/X" is already in use by
/// container "ID". You have to remove (or rename) that container to be able
/// to reuse that name.`
fn is_name_in_use(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("container name") && s.contains("is already in use")
}

/// Docker 20.10: `Cannot kill container: X: Container ID is not running`,
/// and `Container ID is not running` from `exec`.
fn is_not_running(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("is not running")
}

fn classify_missing_or_stopped(stderr: &str, name: &str) -> Option<Result<(), RuntimeError>> {
    if is_no_such_container(stderr) {
        Some(Err(RuntimeError::NoSuchContainer(name.to_owned())))
    } else if is_not_running(stderr) {
        Some(Err(RuntimeError::NotRunning(name.to_owned())))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::test_util::spec;

    const HELPER: &str = "/usr/bin/sidespawn-wrapper";

    #[test]
    fn namespace_sidecars_enter_through_the_helper() {
        let s = spec("sidespawn-x", &["--privileged", ""]);
        let a = run_args(&s, Path::new(HELPER));
        let img = a.iter().position(|w| w == "localhost/dnsmasq:1").unwrap();
        assert_eq!(a[img - 1], "--");
        let opts = &a[..img - 1];
        for want in [
            "--network=none",
            "--volume=/usr/bin/sidespawn-wrapper:/.sidespawn/sidespawn-netns-exec:ro",
            "--volume=/run/netns/qdhcp-1:/.sidespawn/netns:ro",
            "--cap-add=SYS_ADMIN",
            "--pid=host",
            "--entrypoint=/.sidespawn/sidespawn-netns-exec",
        ] {
            assert!(
                opts.contains(&want.to_owned()),
                "{want} missing from {opts:?}"
            );
        }
        assert!(!opts.iter().any(|o| o.contains("privileged")));
        assert_eq!(
            a[img + 1..],
            strings(&[
                NETNS_IN_CONTAINER,
                "--drop=SYS_ADMIN",
                "--",
                "dnsmasq",
                "-k",
                "--privileged",
                ""
            ])
        );
        // What inspect gives back is what podman's Config.Cmd is.
        assert_eq!(
            sidecar_command(&strings(&[HELPER_IN_CONTAINER]), &a[img + 1..]),
            strings(&["-k", "--privileged", ""])
        );
    }

    #[test]
    fn the_helper_drops_only_what_the_profile_does_not_grant() {
        let mut s = spec("x", &[]);
        s.cap_add = strings(&["sys_admin"]);
        let a = run_args(&s, Path::new(HELPER));
        assert!(a.contains(&"--drop=".to_owned()));
        assert_eq!(
            a.iter()
                .filter(|w| w.contains("SYS_ADMIN") || w.contains("sys_admin"))
                .count(),
            1
        );
        // A profile without SETPCAP gets it for the helper, which drops it.
        let mut s = spec("x", &[]);
        s.cap_drop = strings(&["ALL"]);
        s.cap_add = strings(&["NET_ADMIN"]);
        let a = run_args(&s, Path::new(HELPER));
        assert!(a.contains(&"--cap-add=SETPCAP".to_owned()));
        assert!(a.contains(&"--drop=SYS_ADMIN,SETPCAP".to_owned()));
    }

    #[test]
    fn host_network_runs_the_program_directly() {
        let mut s = spec("x", &["a"]);
        s.network = Network::Host;
        let a = run_args(&s, Path::new(HELPER));
        assert!(a.contains(&"--network=host".to_owned()));
        assert!(a.contains(&"--entrypoint=dnsmasq".to_owned()));
        assert!(
            !a.iter()
                .any(|w| w.contains("SYS_ADMIN") || w.contains("/.sidespawn"))
        );
        assert_eq!(a[a.len() - 2..], strings(&["-k", "a"]));
    }

    #[test]
    fn docker_error_words_are_classified() {
        assert!(is_name_in_use(
            "docker: Error response from daemon: Conflict. The container name \"/sx-a\" is already in use by container \"e6c0\". You have to remove (or rename) that container to be able to reuse that name."
        ));
        assert!(is_no_such_container(
            "Error response from daemon: Cannot kill container: nosuch: No such container: nosuch"
        ));
        assert!(is_not_running(
            "Error response from daemon: Cannot kill container: sx-b: Container b4ff is not running"
        ));
        assert!(only_missing("Error: No such container: abc\n"));
        assert!(!only_missing(
            "Error: No such container: abc\npermission denied\n"
        ));
        assert!(!only_missing(""));
    }

    #[test]
    fn docker_times_are_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2026-12-05T00:12:39.123456789Z"),
            Some(1_796_429_559)
        );
        assert!(unix_seconds("0001-01-01T00:00:00Z").unwrap() < 0);
        assert_eq!(unix_seconds("garbage"), None);
    }

    #[test]
    fn listing_lines_parse() {
        let out = br#"{"Id":"e6c0","Name":"/sx-a","State":"running","Pid":42,"Image":"localhost/d:1","Labels":{"io.sidespawn.instance":"i1"},"StartedAt":"1970-01-01T00:01:00Z","ExitCode":0}
{"Id":"b4ff","Name":"/sx-b","State":"created","Pid":0,"Image":"localhost/d:1","Labels":null,"StartedAt":"0001-01-01T00:00:00Z","ExitCode":127}
"#;
        let v: Vec<ContainerInfo> = parse_lines(out)
            .unwrap()
            .into_iter()
            .map(Entry::info)
            .collect();
        assert_eq!(v[0].name, "sx-a");
        assert_eq!(v[0].pid, 42);
        assert_eq!(v[0].started_at, 60);
        assert_eq!(v[0].state, State::Running);
        assert_eq!(v[1].state, State::Created);
        assert_eq!(v[1].started_at, 0);
        assert!(v[1].labels.is_empty());
    }

    #[test]
    fn events_parse() {
        let die = r#"{"status":"die","id":"abc","from":"img","Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137","image":"img","name":"sx-a","io.sidespawn.instance":"i1"}},"scope":"local","time":1,"timeNano":1}"#;
        let e = parse_event(die).unwrap().unwrap();
        assert_eq!(e.name, "sx-a");
        assert_eq!(
            e.action,
            EventAction::Died {
                exit_code: Some(137)
            }
        );
        assert_eq!(e.labels.len(), 1);
        let net = r#"{"Type":"network","Action":"connect","Actor":{"ID":"n","Attributes":{}}}"#;
        assert_eq!(parse_event(net).unwrap(), None);
    }

    #[test]
    fn describe_names_docker() {
        let d = Docker::new("/usr/bin/docker", Duration::from_secs(1), HELPER);
        assert_eq!(
            d.describe(&Call::Remove("a".into())),
            "/usr/bin/docker rm --force -- a"
        );
    }
}
