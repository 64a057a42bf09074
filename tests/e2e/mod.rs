//! A production-like deployment of sidespawn for end-to-end tests.
//!
//! [`Deployment::new`] sets up what a Neutron host with sidespawn has: a host configuration with
//! dnsmasq and haproxy profiles, a queue root and a host-private state directory, a Neutron data
//! directory mounted at the same path in the agent and in every sidecar, and an AGENT container
//! started the way a deployment starts Neutron's agents (privileged, host pid and network, the
//! host's `/run/netns` mounted shared, the static wrapper bind-mounted over `dnsmasq`, `haproxy`
//! and their kill scripts, no podman socket). A [`Trigger`] plays the part of the product's
//! `sidespawn@<kind>.path` units: it runs `sidespawn sync --kind K --backoff` whenever a kind's
//! queue is pending, so a test does exactly what Neutron does — `podman exec AGENT ip netns exec
//! ... dnsmasq ...` — and waits for the result.
//!
//! [`DhcpNetwork`] and [`MetadataProxy`] build the Neutron side of a scenario: namespaces, the
//! files the agent writes, the argv it passes, DHCP clients and an HTTP backend.
//!
//! Everything is owned by the deployment and removed when it drops, even when a test panics:
//! the trigger is stopped first, then the sidecars (found by a label unique to the deployment),
//! the agent, the namespaces and background processes, and the temporary directory. When a test
//! fails, the drop prints the trigger's sync log and the sidecars' state and logs.
//!
//! Include it from a test file with `mod common; mod e2e;` (in that order).

// Each scenario uses a different part of the harness.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::common::{self, Container, Netns, TempDir, quiet};

/// The kinds a deployment configures (and its trigger watches).
pub const KINDS: [&str; 2] = ["dnsmasq", "haproxy"];
/// The label every sidecar of a deployment carries (from the host profiles), for cleanup.
pub const RUN_LABEL: &str = "test.sidespawn.run";
/// Neutron's budget for a dnsmasq or metadata haproxy to become alive after the request.
pub const ALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a DHCP client or an HTTP request may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the emulated path unit looks at the queue directories.
const TRIGGER_POLL: Duration = Duration::from_millis(20);
/// The longest a sync run by the trigger may take before it is killed and logged as failed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(150);
/// Capabilities of the dnsmasq profile (what Neutron's dnsmasq needs without `--privileged`).
const DNSMASQ_CAPS: [&str; 7] = [
    "NET_ADMIN",
    "NET_RAW",
    "NET_BIND_SERVICE",
    "SETUID",
    "SETGID",
    "CHOWN",
    "DAC_OVERRIDE",
];

/// Locks a mutex, ignoring poisoning (a panicking test must still clean up).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes straight to the stderr handle, which libtest does not capture.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Prints a line for the person running the tests (not captured by libtest).
pub fn note(message: &str) {
    say(&format!("e2e: {message}"));
}

/// The start of every scenario, `what` it shows: the privileged gate, a [`Timer`] that prints
/// the scenario's duration (teardown included: it drops after the deployment), and a fresh
/// [`Deployment`]. `None` when the scenario cannot run here (the gate has said so).
pub fn scenario(what: &str) -> Option<(Timer, Deployment)> {
    scenario_on(Engine::Podman, what)
}

/// [`scenario`] with the sidecars on `engine` (docker: a daemon of the deployment's own; the
/// gate also asks for dockerd and its CLI).
pub fn scenario_on(engine: Engine, what: &str) -> Option<(Timer, Deployment)> {
    let what = format!("{what} [{engine:?}]");
    if !common::privileged(&what) {
        return None;
    }
    if engine == Engine::Docker
        && !common::gate(
            &what,
            "docker (dockerd and its CLI)",
            &common::docker_host::missing(),
        )
    {
        return None;
    }
    let timer = Timer::start();
    Some((timer, Deployment::on(engine, default_trigger)))
}

/// The container engine a deployment runs its sidecars on (the agent always runs on podman:
/// which engine runs the agent does not matter to sidespawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    Docker,
}

/// Prints how long a scenario took when it drops (also when it fails).
pub struct Timer {
    name: String,
    start: Instant,
}

impl Timer {
    /// A timer named after the running test (libtest names each test's thread after it).
    pub fn start() -> Timer {
        Timer {
            name: std::thread::current().name().unwrap_or("?").to_owned(),
            start: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        say(&format!(
            "e2e: {} {outcome} in {:.2} s",
            self.name,
            self.start.elapsed().as_secs_f64()
        ));
    }
}

// --- the host side ------------------------------------------------------------------------------

/// Serialises the host-wide garbage collection that every sync does (sidecars whose namespace
/// is gone are removed by any sync with work to do, whoever's they are): syncs fired by a
/// [`Trigger`] of this process hold it shared; [`Deployment::exclusive_syncs`] holds it
/// exclusively, so a scenario can watch one particular sync remove an orphan.
static HOST_GC: RwLock<()> = RwLock::new(());

/// Where the pieces of a deployment are, for a [`Trigger`] to use.
#[derive(Debug, Clone)]
pub struct TriggerSetup {
    /// The host tool.
    pub sidespawn: PathBuf,
    /// The host configuration file.
    pub config: PathBuf,
    pub queue_root: PathBuf,
    pub kinds: Vec<&'static str>,
    /// A directory the trigger may use for its own files.
    pub work_dir: PathBuf,
    /// Environment the syncs need besides `CONTAINERS_CONF` (`DOCKER_HOST` for docker).
    pub env: Vec<(String, String)>,
}

/// What fires `sidespawn sync --kind K --backoff` when a kind's queue has work: the product's
/// `sidespawn@K.path` units on a real host. Scenarios only use this interface, so a trigger
/// backed by a real systemd replaces the emulation without changing them.
pub trait Trigger: Send + Sync {
    /// What it is, for messages.
    fn describe(&self) -> String;
    /// Fire no more syncs until [`Trigger::resume`]; a sync under way finishes first, so once
    /// this returns no sync runs.
    fn pause(&self);
    fn resume(&self);
    /// Everything the fired syncs printed so far (stdout and stderr, with each run's command
    /// and exit status), oldest first.
    fn log(&self) -> String;
}

/// Makes the trigger of a deployment.
pub type TriggerFactory = fn(&TriggerSetup) -> Box<dyn Trigger>;

/// The trigger [`Deployment::new`] uses: `SIDESPAWN_E2E_TRIGGER` picks it — `systemd` (the
/// default: the generated units under a real systemd manager) or `emulated` (threads polling
/// like the path units, for machines without systemd's binaries).
pub fn default_trigger(setup: &TriggerSetup) -> Box<dyn Trigger> {
    match std::env::var("SIDESPAWN_E2E_TRIGGER").as_deref() {
        Err(_) | Ok("") | Ok("systemd") => match SystemdPathUnits::start(setup) {
            Ok(t) => Box::new(t),
            Err(needs) => {
                // Under SIDESPAWN_REQUIRE_PRIVILEGED=1 this panics: CI must use systemd.
                common::skip(
                    "e2e with the real path units (falling back to emulated ones)",
                    &needs,
                );
                Box::new(EmulatedPathUnits::start(setup))
            }
        },
        Ok("emulated") => Box::new(EmulatedPathUnits::start(setup)),
        Ok(other) => {
            panic!("SIDESPAWN_E2E_TRIGGER={other:?}: unknown trigger (try `systemd` or `emulated`)")
        }
    }
}

/// The product's own units, generated by `sidespawn units` from the deployment's config and
/// run by a real systemd manager (see tests/systemd): `sidespawn@K.path` fires
/// `sidespawn@K.service`. The only test-only change is a drop-in giving the services
/// `CONTAINERS_CONF` (podman on these machines needs runc and lower ulimits). The log is the
/// manager's, which the services' stdout and stderr go to.
pub struct SystemdPathUnits {
    manager: crate::systemd::UserManager,
    kinds: Vec<&'static str>,
}

impl SystemdPathUnits {
    pub fn start(setup: &TriggerSetup) -> Result<SystemdPathUnits, String> {
        use crate::systemd::Manager;
        let manager = crate::systemd::UserManager::start()?;
        let cfg = sidespawn::host::config::HostConfig::load(&setup.config, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let files = sidespawn::host::units::generate(&cfg, &setup.sidespawn)
            .unwrap_or_else(|e| panic!("generating the units: {e}"));
        manager.install(&files);
        let mut env = format!(
            "[Service]\nEnvironment=CONTAINERS_CONF={}\n",
            common::containers_conf().display()
        );
        for (k, v) in &setup.env {
            env.push_str(&format!("Environment={k}={v}\n"));
        }
        manager.drop_in("sidespawn@.service", "test-podman", &env);
        manager.drop_in("sidespawn-backstop.service", "test-podman", &env);
        let t = SystemdPathUnits {
            manager,
            kinds: setup.kinds.clone(),
        };
        t.resume();
        Ok(t)
    }

    fn units(&self, suffix: &str) -> Vec<String> {
        self.kinds
            .iter()
            .map(|k| format!("sidespawn@{k}.{suffix}"))
            .collect()
    }
}

impl Trigger for SystemdPathUnits {
    fn describe(&self) -> String {
        "the generated path units under a real systemd manager".into()
    }

    fn pause(&self) {
        use crate::systemd::Manager;
        let paths = self.units("path");
        let mut args = vec!["stop"];
        args.extend(paths.iter().map(String::as_str));
        self.manager.systemctl_ok(&args);
        // A sync under way finishes first.
        for service in self.units("service") {
            self.manager
                .wait_for(&service, "ActiveState", "inactive", SYNC_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn resume(&self) {
        use crate::systemd::Manager;
        let paths = self.units("path");
        let mut args = vec!["start"];
        args.extend(paths.iter().map(String::as_str));
        self.manager.systemctl_ok(&args);
    }

    fn log(&self) -> String {
        self.manager.log_text()
    }
}

/// Emulates the product's path units in background threads, one per kind like the unit
/// instances: whenever `<queue_root>/<kind>/pending` exists (`PathExists=`) or the timestamp
/// file's modification time changed (`PathModified=`), it runs
/// `sidespawn --config CFG sync --kind K --backoff` and records its output. Stops on drop.
pub struct EmulatedPathUnits {
    shared: Arc<EmulatedShared>,
    threads: Vec<JoinHandle<()>>,
}

struct EmulatedShared {
    stop: AtomicBool,
    /// Per kind: paused? Held while that kind's sync runs, so that pausing waits for it.
    gates: Vec<Mutex<bool>>,
    log: Mutex<String>,
}

impl EmulatedPathUnits {
    pub fn start(setup: &TriggerSetup) -> EmulatedPathUnits {
        let shared = Arc::new(EmulatedShared {
            stop: AtomicBool::new(false),
            gates: setup.kinds.iter().map(|_| Mutex::new(false)).collect(),
            log: Mutex::new(String::new()),
        });
        let threads = setup
            .kinds
            .iter()
            .enumerate()
            .map(|(index, kind)| {
                let shared = Arc::clone(&shared);
                let setup = setup.clone();
                let kind = *kind;
                std::thread::Builder::new()
                    .name(format!("path-unit-{kind}"))
                    .spawn(move || watch_kind(&shared, &setup, index, kind))
                    .expect("start the emulated path unit thread")
            })
            .collect();
        EmulatedPathUnits { shared, threads }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::symlink_metadata(path).and_then(|m| m.modified()).ok()
}

fn watch_kind(shared: &EmulatedShared, setup: &TriggerSetup, index: usize, kind: &str) {
    let dir = setup.queue_root.join(kind);
    let timestamp = dir.join("timestamp");
    let pending = dir.join("pending");
    let mut seen = mtime(&timestamp);
    while !shared.stop.load(Ordering::Relaxed) {
        {
            let paused = lock(&shared.gates[index]);
            if !*paused {
                let now = mtime(&timestamp);
                if fs::symlink_metadata(&pending).is_ok() || now != seen {
                    seen = now;
                    let _gc = HOST_GC
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let entry = run_triggered_sync(setup, kind);
                    lock(&shared.log).push_str(&entry);
                }
            }
        }
        std::thread::sleep(TRIGGER_POLL);
    }
}

/// One sync as the unit's service runs it; returns its log entry.
fn run_triggered_sync(setup: &TriggerSetup, kind: &str) -> String {
    let mut cmd = Command::new(&setup.sidespawn);
    cmd.arg("--config")
        .arg(&setup.config)
        .args(["sync", "--kind", kind, "--backoff"])
        .env("CONTAINERS_CONF", common::containers_conf())
        .envs(setup.env.iter().map(|(k, v)| (k, v)));
    let start = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::output_within(&mut cmd, SYNC_TIMEOUT)
    }));
    let elapsed = start.elapsed().as_secs_f64();
    match result {
        Ok(out) => format!(
            "--- [{kind}] sync --kind {kind} --backoff: {} in {elapsed:.2} s\n[stdout]\n{}[stderr]\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        ),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!(
                "--- [{kind}] sync --kind {kind} --backoff: FAILED TO RUN after {elapsed:.2} s: {why}\n"
            )
        }
    }
}

impl Trigger for EmulatedPathUnits {
    fn describe(&self) -> String {
        "emulated path units (a thread per kind polling pending/timestamp)".into()
    }

    fn pause(&self) {
        for gate in &self.shared.gates {
            *lock(gate) = true;
        }
    }

    fn resume(&self) {
        for gate in &self.shared.gates {
            *lock(gate) = false;
        }
    }

    fn log(&self) -> String {
        lock(&self.shared.log).clone()
    }
}

impl Drop for EmulatedPathUnits {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

// --- namespaces and background processes --------------------------------------------------------

/// A process the test started (an HTTP backend), killed and reaped on drop.
#[derive(Debug)]
pub struct Background {
    what: String,
    child: Child,
}

impl Background {
    pub fn spawn(what: &str, cmd: &mut Command) -> Background {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Background {
            what: what.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited: {status}", self.what);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the deployment -----------------------------------------------------------------------------

/// One sidecar as its engine reports it.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub name: String,
    pub id: String,
    pub pid: u32,
    pub state: String,
    pub labels: serde_json::Map<String, Value>,
}

/// A host with sidespawn configured, an agent container and a trigger; see the module doc.
pub struct Deployment {
    pub images: &'static common::Images,
    dir: TempDir,
    run_label: String,
    agent: Container,
    trigger: Option<Box<dyn Trigger>>,
    /// Namespaces and background processes, dropped (last first) after the containers.
    keep: Mutex<Vec<Box<dyn Send>>>,
    /// The engine of the sidecars; for docker, the deployment's own daemon (stopped after the
    /// sidecars are removed).
    engine: Engine,
    docker: Option<common::docker_host::DockerDaemon>,
}

impl Deployment {
    /// A deployment with the [`default_trigger`].
    pub fn new() -> Deployment {
        Deployment::with_trigger(default_trigger)
    }

    pub fn with_trigger(make_trigger: TriggerFactory) -> Deployment {
        Deployment::on(Engine::Podman, make_trigger)
    }

    /// A deployment whose sidecars run on `engine`.
    pub fn on(engine: Engine, make_trigger: TriggerFactory) -> Deployment {
        let images = common::ensure_images();
        let docker = (engine == Engine::Docker).then(|| {
            let daemon = common::docker_host::DockerDaemon::start();
            daemon.load(&images.dnsmasq);
            daemon.load(&images.haproxy);
            daemon
        });
        let dir = TempDir::new("sidespawn-e2e");
        let run_label = common::unique("e2e");
        let agent = Container::new(&common::unique("sidespawn-e2e-agent"));
        let mut d = Deployment {
            images,
            dir,
            run_label,
            agent,
            trigger: None,
            keep: Mutex::new(Vec::new()),
            engine,
            docker,
        };
        fs::create_dir_all(d.data()).expect("mkdir the neutron data dir");
        d.write_configs();
        // What the unit run at boot does first: creates the queue directories the agent
        // needs (and checks the configuration).
        let mut boot = d.sidespawn(&["sync"]);
        let out = common::output(&mut boot);
        common::assert_exit(&boot, &out, 0);
        for kind in KINDS {
            assert!(
                d.queue_root().join(kind).is_dir(),
                "the first sync did not create the {kind} queue directory"
            );
        }
        d.run_agent();
        d.trigger = Some(make_trigger(&TriggerSetup {
            sidespawn: PathBuf::from(env!("CARGO_BIN_EXE_sidespawn")),
            config: d.config(),
            queue_root: d.queue_root(),
            kinds: KINDS.to_vec(),
            work_dir: d.dir.join("trigger"),
            env: d.engine_env(),
        }));
        d
    }

    fn write_configs(&self) {
        let data = self.data().display().to_string();
        let volume = format!("{data}:{data}");
        let labels = json!({ RUN_LABEL: self.run_label });
        let mut config = json!({
            "queue_root": self.queue_root(),
            "state_dir": self.state_dir(),
            "kinds": {
                "dnsmasq": {
                    "image": self.images.dnsmasq,
                    "volumes": [volume],
                    "cap_add": DNSMASQ_CAPS,
                    "labels": labels,
                },
                "haproxy": {
                    "image": self.images.haproxy,
                    "volumes": [volume],
                    "labels": labels,
                    // Neutron's `maxconn 1024` makes haproxy raise its open-file limit to
                    // 2076; the test VM's containers.conf caps containers at 1024 (podman's
                    // own default, 1048576, is fine). Giving --ulimit drops that file's other
                    // default ulimits, so nproc is repeated.
                    "podman_args": [
                        "--ulimit", "nofile=4096:4096",
                        "--ulimit", "nproc=1024:1024",
                    ],
                },
            },
        });
        if let Some(daemon) = &self.docker {
            config["engine"] = json!("docker");
            config["engine_program"] = json!(daemon.cli());
            config["netns_helper"] = json!(common::static_wrapper());
        }
        fs::write(self.config(), config.to_string()).expect("write config.json");
        let wrapper = json!({ "queue_root": self.queue_root() });
        fs::write(self.wrapper_config(), wrapper.to_string()).expect("write wrapper.json");
    }

    /// The agent's `podman run` options, image and command: a deployment's, see the module doc.
    fn agent_run_args(&self) -> Vec<String> {
        let wrapper = common::static_wrapper().display().to_string();
        let same = |p: PathBuf| format!("{0}:{0}", p.display());
        let mut args: Vec<String> = [
            "--privileged",
            "--pid",
            "host",
            "--network",
            "host",
            "-v",
            "/run/netns:/run/netns:shared",
        ]
        .map(String::from)
        .to_vec();
        for volume in [
            same(self.queue_root()),
            same(self.data()),
            format!("{wrapper}:/usr/sbin/dnsmasq:ro"),
            format!("{wrapper}:/usr/sbin/haproxy:ro"),
            format!("{wrapper}:/etc/neutron/kill_scripts/dnsmasq-kill:ro"),
            format!("{wrapper}:/etc/neutron/kill_scripts/haproxy-kill:ro"),
            format!(
                "{}:/etc/sidespawn/wrapper.json:ro",
                self.wrapper_config().display()
            ),
        ] {
            args.push("-v".into());
            args.push(volume);
        }
        args.extend([self.images.agent.clone(), "sleep".into(), "infinity".into()]);
        args
    }

    fn run_agent(&self) {
        common::run(
            common::podman()
                .args(["run", "-d", "--name", self.agent.name()])
                .args(self.agent_run_args()),
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Neutron's data directory (`/var/lib/neutron` on a real host), at the same path in the
    /// agent and in every sidecar.
    pub fn data(&self) -> PathBuf {
        self.dir.join("neutron")
    }

    pub fn queue_root(&self) -> PathBuf {
        self.dir.join("queue")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The host configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn wrapper_config(&self) -> PathBuf {
        self.dir.join("wrapper.json")
    }

    pub fn run_label(&self) -> &str {
        &self.run_label
    }

    pub fn agent_name(&self) -> &str {
        self.agent.name()
    }

    pub fn trigger(&self) -> &dyn Trigger {
        self.trigger.as_deref().expect("the trigger runs")
    }

    /// The syncs' output so far (see [`Trigger::log`]).
    pub fn sync_log(&self) -> String {
        self.trigger().log()
    }

    /// The summary lines (`sync: claimed N, ...`) of the syncs the trigger ran.
    pub fn sync_summaries(&self) -> Vec<String> {
        self.sync_log()
            .lines()
            .filter(|l| l.starts_with("sync: "))
            .map(String::from)
            .collect()
    }

    /// The totals of the summary lines of the syncs the trigger ran, by field (`claimed`,
    /// `started`, ...).
    pub fn sync_totals(&self) -> std::collections::BTreeMap<String, usize> {
        let mut totals = std::collections::BTreeMap::new();
        for line in self.sync_summaries() {
            let line = line.trim_start_matches("sync: ");
            let line = line.split(';').next().unwrap_or_default();
            for field in line.split(", ") {
                if let Some((name, n)) = field.split_once(' ')
                    && let Ok(n) = n.parse::<usize>()
                {
                    *totals.entry(name.to_owned()).or_default() += n;
                }
            }
        }
        totals
    }

    /// Waits until the syncs' log satisfies `condition`. A sync's output reaches the log when
    /// it exits, which is after it wrote its acknowledgements (a waiting kill script may have
    /// returned already).
    #[track_caller]
    pub fn wait_for_sync_log(&self, what: &str, mut condition: impl FnMut(&str) -> bool) {
        common::wait_until(SYNC_TIMEOUT, &format!("the sync log shows {what}"), || {
            condition(&self.sync_log())
        });
    }

    /// `sidespawn --config CFG ARGS...` (with the test podman configuration).
    pub fn sidespawn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(self.config())
            .args(args)
            .env("CONTAINERS_CONF", common::containers_conf())
            .envs(self.engine_env());
        cmd
    }

    /// Sets `kinds.<kind>.<key>` in the host configuration (read again by every command).
    pub fn set_profile(&self, kind: &str, key: &str, value: Value) {
        let mut config: Value =
            serde_json::from_slice(&fs::read(self.config()).expect("read config.json"))
                .expect("config.json is JSON");
        config["kinds"][kind][key] = value;
        fs::write(self.config(), config.to_string()).expect("write config.json");
    }

    /// Tags `image` as `tag` in the sidecars' engine; a podman tag is removed when the
    /// deployment drops (a docker one goes with its daemon).
    pub fn tag_image(&self, image: &str, tag: &str) {
        common::run(self.engine_cli().args(["tag", image, tag]));
        if self.docker.is_none() {
            struct Untag(String);
            impl Drop for Untag {
                fn drop(&mut self) {
                    quiet(common::podman().args(["rmi", "-i", &self.0]));
                }
            }
            self.keep(Untag(tag.to_owned()));
        }
    }

    /// The pid of the deployment's docker daemon (`None` on podman).
    pub fn docker_pid(&self) -> Option<u32> {
        self.docker
            .as_ref()
            .map(common::docker_host::DockerDaemon::pid)
    }

    /// The engine the sidecars run on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// What the host tool needs in its environment to reach the engine, besides
    /// `CONTAINERS_CONF`: the docker daemon's address.
    pub fn engine_env(&self) -> Vec<(String, String)> {
        self.docker
            .iter()
            .map(|d| ("DOCKER_HOST".to_owned(), d.host()))
            .collect()
    }

    /// The sidecars' engine CLI (`podman` with the test configuration, or `docker` talking to
    /// the deployment's daemon).
    pub fn engine_cli(&self) -> Command {
        match &self.docker {
            Some(d) => d.docker(),
            None => common::podman(),
        }
    }

    /// `ENGINE rm -f NAME`, quietly; whether it worked.
    fn remove_sidecar(&self, name: &str) -> bool {
        match &self.docker {
            Some(d) => quiet(d.docker().args(["rm", "-f", name])),
            None => quiet(common::podman().args(["rm", "-f", "-i", "-t", "0", name])),
        }
    }

    /// `podman exec AGENT ARGS...`.
    pub fn agent_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.agent.exec();
        cmd.args(args);
        cmd
    }

    pub fn agent_exec(&self, args: &[&str]) -> Output {
        common::output(&mut self.agent_cmd(args))
    }

    /// What Neutron runs: `podman exec AGENT ip netns exec NS env PROCESS_TAG=TAG PROGRAM ARGS`.
    pub fn agent_in_netns(&self, ns: &str, tag: &str, program: &str, args: &[String]) -> Command {
        let tag = format!("PROCESS_TAG={tag}");
        let mut cmd = self.agent_cmd(&["ip", "netns", "exec", ns, "env", &tag, program]);
        cmd.args(args);
        cmd
    }

    /// Runs [`Deployment::agent_in_netns`] and asserts it exits with `code` and prints nothing
    /// on stdout (the wrapper never does). Returns its output.
    #[track_caller]
    pub fn agent_call(
        &self,
        ns: &str,
        tag: &str,
        program: &str,
        args: &[String],
        code: i32,
    ) -> Output {
        let mut cmd = self.agent_in_netns(ns, tag, program, args);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, code);
        assert!(
            out.stdout.is_empty(),
            "the wrapper printed on stdout: {}",
            common::explain(&cmd, &out)
        );
        out
    }

    /// Many calls at once from inside the agent, as its threads make them: one `podman exec`
    /// (iproute2's `/usr/sbin/ip`: the agent's busybox `sh` would run its own `ip` applet)
    /// of a script that starts every call (`ip netns exec NS env PROCESS_TAG=TAG PROGRAM
    /// ARGS`) in the background and waits for all; asserts that each exited 0. (Hundreds of
    /// concurrent `podman exec` from outside would measure podman's exec, not the agent.)
    pub fn agent_calls_at_once(&self, calls: &[(String, String, &str, Vec<String>)]) {
        use sidespawn::host::runtime::shell_quote;
        let mut script = String::from("failed=0\n");
        for (i, (ns, tag, program, args)) in calls.iter().enumerate() {
            let mut line = format!(
                "/usr/sbin/ip netns exec {} env {} {}",
                shell_quote(ns),
                shell_quote(&format!("PROCESS_TAG={tag}")),
                shell_quote(program)
            );
            for a in args {
                line.push(' ');
                line.push_str(&shell_quote(a));
            }
            script.push_str(&format!("{line} & p{i}=$!\n"));
        }
        for i in 0..calls.len() {
            script.push_str(&format!(
                "wait $p{i} || {{ echo \"call {i} failed: $?\" >&2; failed=1; }}\n"
            ));
        }
        script.push_str("exit $failed\n");
        let path = self
            .data()
            .join(format!("calls-{}.sh", common::unique("burst")));
        fs::write(&path, script).expect("write the agent's script");
        let path = path.display().to_string();
        let mut cmd = self.agent_cmd(&["sh", &path]);
        let out = common::output_within(&mut cmd, Duration::from_secs(600));
        common::assert_exit(&cmd, &out, 0);
    }

    /// `podman restart AGENT`.
    pub fn restart_agent(&self) {
        common::run(common::podman().args(["restart", self.agent.name()]));
    }

    /// Removes the agent container and runs it again with the same mounts (an upgrade).
    pub fn recreate_agent(&self) {
        common::run(common::podman().args(["rm", "-f", "-t", "0", self.agent.name()]));
        self.run_agent();
    }

    /// The agent container's id (changes when it is recreated).
    pub fn agent_id(&self) -> String {
        self.inspect_agent()
            .map(|c| c["Id"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    /// When the agent container last started (changes when it is restarted).
    pub fn agent_started_at(&self) -> String {
        self.inspect_agent()
            .map(|c| {
                c["State"]["StartedAt"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// `podman inspect AGENT` (the agent runs on podman whatever the sidecars' engine).
    fn inspect_agent(&self) -> Option<Value> {
        let out = common::output(common::podman().args([
            "inspect",
            "--type",
            "container",
            self.agent.name(),
        ]));
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("podman inspect prints JSON");
        v.get(0).cloned()
    }

    /// `ENGINE inspect NAME` of a sidecar, or `None` if there is no such container.
    pub fn inspect(&self, name: &str) -> Option<Value> {
        let out = common::output(
            self.engine_cli()
                .args(["inspect", "--type", "container", name]),
        );
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("podman inspect prints JSON");
        v.get(0).cloned()
    }

    /// Whether `podman container exists NAME` (docker: whether `inspect` finds it).
    pub fn container_exists(&self, name: &str) -> bool {
        let out = match &self.docker {
            Some(d) => {
                let out =
                    common::output(d.docker().args(["inspect", "--type=container", "--", name]));
                let missing = String::from_utf8_lossy(&out.stderr).contains("No such container");
                return match out.status.code() {
                    Some(0) => true,
                    Some(1) if missing => false,
                    _ => panic!(
                        "docker inspect {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                };
            }
            None => common::output(common::podman().args(["container", "exists", name])),
        };
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!(
                "podman container exists {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// This deployment's sidecars (every state), as `podman ps -a` lists them (docker: `ps -q`
    /// and `inspect`, docker's listing has no pid).
    pub fn sidecars(&self) -> Vec<Sidecar> {
        let filter = format!("label={RUN_LABEL}={}", self.run_label);
        if let Some(d) = &self.docker {
            let ids =
                common::run(
                    d.docker()
                        .args(["ps", "-a", "-q", "--no-trunc", "--filter", &filter]),
                );
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                return Vec::new();
            }
            let out = common::output(d.docker().args(["inspect", "--type=container"]).args(&ids));
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            return list
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| Sidecar {
                    name: c["Name"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    id: c["Id"].as_str().unwrap_or_default().to_owned(),
                    pid: c["State"]["Pid"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(0),
                    state: c["State"]["Status"].as_str().unwrap_or_default().to_owned(),
                    labels: c["Config"]["Labels"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect();
        }
        let out = common::run(common::podman().args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "json",
        ]));
        let list: Value = serde_json::from_str(&out).expect("podman ps prints JSON");
        list.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| Sidecar {
                name: c["Names"][0].as_str().unwrap_or_default().to_owned(),
                id: c["Id"].as_str().unwrap_or_default().to_owned(),
                pid: c["Pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
                state: c["State"].as_str().unwrap_or_default().to_owned(),
                labels: c["Labels"].as_object().cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The sidecar called `name`, if it exists.
    pub fn sidecar(&self, name: &str) -> Option<Sidecar> {
        self.sidecars().into_iter().find(|s| s.name == name)
    }

    /// The host's acknowledgement of request `id` (any kind), if written and not yet consumed
    /// (a waiting wrapper removes the one it reads).
    pub fn ack(&self, id: &str) -> Option<Value> {
        KINDS.iter().find_map(|kind| {
            let path = self
                .queue_root()
                .join(kind)
                .join("acks")
                .join(format!("{id}.json"));
            let bytes = fs::read(&path).ok()?;
            Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{} is not JSON ({e})", path.display());
            }))
        })
    }

    /// The entries of the reject log `<state_dir>/rejects/<kind>.jsonl`.
    pub fn rejects(&self, kind: &str) -> Vec<Value> {
        let path = self
            .state_dir()
            .join("rejects")
            .join(format!("{kind}.jsonl"));
        match fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| {
                        panic!("{}: line is not JSON ({e}): {l:?}", path.display())
                    })
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }

    /// The requests still queued for `kind`.
    pub fn queued(&self, kind: &str) -> Vec<Value> {
        common::queue_records(&self.queue_root(), kind)
    }

    /// `sidespawn status --json`. Its exit code says whether every sidecar on the host runs,
    /// which includes other tests' sidecars, so only the report is returned.
    pub fn status_json(&self) -> Value {
        let mut cmd = self.sidespawn(&["status", "--json"]);
        let out = common::output(&mut cmd);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            common::explain(&cmd, &out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}",
                common::explain(&cmd, &out)
            )
        })
    }

    /// `sidespawn sync ARGS...` run by hand (or by the backstop timer); asserts exit 0.
    pub fn sync_by_hand(&self, args: &[&str]) -> Output {
        let mut cmd = self.sidespawn(&["sync"]);
        cmd.args(args);
        let out = common::output(&mut cmd);
        common::assert_exit(&cmd, &out, 0);
        out
    }

    /// Holds off every sync fired by the triggers of this test process (see [`HOST_GC`]) until
    /// the guard drops; waits for those under way.
    pub fn exclusive_syncs(&self) -> RwLockWriteGuard<'static, ()> {
        HOST_GC
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `thing` (a guard) until the deployment drops, after its containers are removed.
    pub fn keep<T: Send + 'static>(&self, thing: T) {
        lock(&self.keep).push(Box::new(thing));
    }

    /// A new network namespace owned by the deployment.
    pub fn netns(&self, name: &str) -> Arc<Netns> {
        let ns = Netns::new(name);
        ns.ip(&["link", "set", "lo", "up"]);
        let ns = Arc::new(ns);
        self.keep(Arc::clone(&ns));
        ns
    }

    /// What the sidecars and the syncs did, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut text = format!(
            "==== deployment {} ({}), agent {}\n",
            self.run_label,
            self.dir().display(),
            self.agent.name()
        );
        if let Some(trigger) = &self.trigger {
            text.push_str(&format!(
                "==== sync log of the trigger ({}):\n{}\n",
                trigger.describe(),
                trigger.log()
            ));
        }
        let filter = format!("label={RUN_LABEL}={}", self.run_label);
        if let Ok(out) = self
            .engine_cli()
            .args(["ps", "-a", "--filter", &filter])
            .stdin(Stdio::null())
            .output()
        {
            text.push_str(&format!(
                "==== sidecars:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        for sidecar in self.sidecar_names() {
            if let Ok(out) = self
                .engine_cli()
                .args(["logs", "--tail", "40", &sidecar])
                .stdin(Stdio::null())
                .output()
            {
                text.push_str(&format!(
                    "==== {:?} logs {sidecar}:\n{}{}",
                    self.engine,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        text
    }

    /// Names of this deployment's containers, without panicking (used from `Drop`).
    fn sidecar_names(&self) -> Vec<String> {
        let filter = format!("label={RUN_LABEL}={}", self.run_label);
        self.engine_cli()
            .args(["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Captured by libtest and shown with the failure.
            eprintln!("{}", self.diagnostics());
        }
        // No sync may start a sidecar behind the cleanup's back.
        drop(self.trigger.take());
        for name in self.sidecar_names() {
            if !self.remove_sidecar(&name) {
                eprintln!("warning: could not remove sidecar {name}");
            }
        }
        // The daemon goes once its sidecars are gone (its drop stops it and removes its files).
        drop(self.docker.take());
        quiet(common::podman().args(["rm", "-f", "-i", "-t", "0", self.agent.name()]));
        // Then namespaces and background processes, last made first. (The agent's guard and
        // the temporary directory go when the fields drop.)
        let mut keep = lock(&self.keep);
        while let Some(thing) = keep.pop() {
            drop(thing);
        }
    }
}

// --- Neutron's side: alive checks, networks, metadata proxies -----------------------------------

/// The parent of `pid` (`PPid:` of its status).
pub fn parent_pid(pid: u32) -> u32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Neutron's liveness check: the pid in `pid_file` if `/proc/<pid>/cmdline` contains `uuid`.
pub fn alive_pid(pid_file: &Path, uuid: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    cmdline(pid)
        .iter()
        .any(|arg| arg.contains(uuid))
        .then_some(pid)
}

/// `/proc/<pid>/cmdline`, split at the NULs (empty if there is no such process).
pub fn cmdline(pid: u32) -> Vec<String> {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The inode of the network namespace process `pid` is in.
pub fn netns_inode_of(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Writes `path` the way Neutron's agents do: a temporary file renamed over it.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-e2e");
    fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// A random MAC address in Neutron's `fa:16:3e` range.
pub fn random_mac() -> String {
    let b = common::random_bytes::<3>();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// A Neutron network with DHCP: a `qdhcp-<uuid>` namespace whose DHCP port (a bridge, so that
/// several clients can be plugged in) has the subnet's `.2`, and the files the DHCP agent keeps
/// in `DATA/dhcp/<uuid>/`.
pub struct DhcpNetwork {
    pub uuid: String,
    pub subnet: String,
    pub ns: Arc<Netns>,
    /// `a.b.c` of the subnet `a.b.c.0/24`.
    pub prefix: String,
    pub dir: PathBuf,
    /// Bridge ports plugged so far, for the next name.
    clients: Mutex<u32>,
    /// The deployment's state directory, which its sidecars' names derive from.
    state: PathBuf,
}

/// A client VM on a [`DhcpNetwork`]: its own namespace, a veth with its MAC, a fixed address.
pub struct DhcpClient {
    pub ns: Arc<Netns>,
    pub iface: String,
    pub mac: String,
    pub ip: String,
}

impl DhcpNetwork {
    pub fn new(d: &Deployment) -> DhcpNetwork {
        let uuid = common::uuid();
        let subnet = common::uuid();
        let b = common::random_bytes::<2>();
        let prefix = format!("10.{}.{}", b[0], b[1]);
        let ns = d.netns(&format!("qdhcp-{uuid}"));
        ns.ip(&["link", "add", "br-dhcp", "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("{prefix}.2/24"), "dev", "br-dhcp"]);
        ns.ip(&["link", "set", "br-dhcp", "up"]);
        let dir = d.data().join("dhcp").join(&uuid);
        fs::create_dir_all(&dir).expect("mkdir the network's dhcp dir");
        let net = DhcpNetwork {
            uuid,
            subnet,
            ns,
            prefix,
            dir,
            clients: Mutex::new(0),
            state: d.state_dir(),
        };
        for file in ["host", "addn_hosts", "opts"] {
            replace_file(&net.dir.join(file), "");
        }
        net
    }

    pub fn tag(&self) -> String {
        format!("dnsmasq-{}", self.uuid)
    }

    /// The sidecar's deterministic name (see README, "Sidecars are named ...").
    pub fn container_name(&self) -> String {
        common::sidecar_name(&self.state, "dnsmasq", &self.tag())
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    pub fn lease_file(&self) -> PathBuf {
        self.dir.join("leases")
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("host")
    }

    /// The argv Neutron's DHCP agent passes to dnsmasq (an empty argument included).
    pub fn argv(&self) -> Vec<String> {
        let f = |name: &str| self.dir.join(name).display().to_string();
        vec![
            "--no-hosts".into(),
            String::new(),
            format!("--pid-file={}", f("pid")),
            format!("--dhcp-hostsfile={}", f("host")),
            format!("--addn-hosts={}", f("addn_hosts")),
            format!("--dhcp-optsfile={}", f("opts")),
            format!("--dhcp-leasefile={}", f("leases")),
            "--dhcp-match=set:ipxe,175".into(),
            "--dhcp-userclass=set:ipxe6,iPXE".into(),
            "--local-service".into(),
            "--bind-dynamic".into(),
            format!(
                "--dhcp-range=set:subnet-{},{}.0,static,255.255.255.0,86400s",
                self.subnet, self.prefix
            ),
            "--dhcp-option-force=option:mtu,1500".into(),
            "--dhcp-lease-max=256".into(),
            "--conf-file=/dev/null".into(),
            "--domain=openstacklocal".into(),
        ]
    }

    /// The agent spawns dnsmasq (Neutron's call); asserts the wrapper exits 0.
    pub fn request(&self, d: &Deployment) -> Output {
        d.agent_call(self.ns.name(), &self.tag(), "dnsmasq", &self.argv(), 0)
    }

    /// Waits (Neutron's 60 s) until the network's dnsmasq is alive; returns its pid.
    pub fn wait_alive(&self) -> u32 {
        self.wait_alive_within(ALIVE_TIMEOUT)
    }

    /// [`DhcpNetwork::wait_alive`] with another deadline than Neutron's (large bursts on a
    /// loaded test machine).
    pub fn wait_alive_within(&self, timeout: Duration) -> u32 {
        let mut pid = None;
        common::wait_until(
            timeout,
            &format!("dnsmasq of {} is alive (pid file + cmdline)", self.uuid),
            || {
                pid = alive_pid(&self.pid_file(), &self.uuid);
                pid.is_some()
            },
        );
        pid.expect("alive")
    }

    /// A new client VM plugged into the network, with the address `.N` (N from 10 up) that
    /// [`DhcpNetwork::write_hosts`] assigns to its MAC.
    pub fn client(&self, d: &Deployment) -> DhcpClient {
        let n = {
            let mut count = lock(&self.clients);
            *count += 1;
            *count
        };
        let ns = d.netns(&common::unique("e2e-vm"));
        let (port, iface) = self.ns.veth_pair(&ns);
        self.ns.ip(&["link", "set", &port, "master", "br-dhcp"]);
        self.ns.ip(&["link", "set", &port, "up"]);
        let mac = random_mac();
        ns.ip(&["link", "set", &iface, "address", &mac]);
        ns.ip(&["link", "set", &iface, "up"]);
        DhcpClient {
            ns,
            iface,
            mac,
            ip: format!("{}.{}", self.prefix, 9 + n),
        }
    }

    /// Rewrites the hosts file (by rename, like the agent) with these clients' reservations.
    pub fn write_hosts(&self, clients: &[&DhcpClient]) {
        let text: String = clients
            .iter()
            .map(|c| {
                format!(
                    "{},host-{}.openstacklocal,{}\n",
                    c.mac,
                    c.ip.replace('.', "-"),
                    c.ip
                )
            })
            .collect();
        replace_file(&self.hosts_file(), &text);
    }

    /// Whether dnsmasq's lease file lists `client` with its address.
    pub fn lease_recorded(&self, client: &DhcpClient) -> bool {
        fs::read_to_string(self.lease_file()).is_ok_and(|leases| {
            leases
                .lines()
                .any(|l| l.contains(&client.mac) && l.split(' ').any(|f| f == client.ip))
        })
    }
}

impl DhcpClient {
    /// `busybox udhcpc` in the client's namespace, asking `tries` times (1 s apart) and
    /// quitting once it has a lease (`-n -q`). Returns its output (exit 0 = lease obtained).
    pub fn udhcpc(&self, tries: u32) -> Output {
        let mut cmd = self.ns.exec("busybox");
        cmd.args(["udhcpc", "-i", &self.iface, "-n", "-q", "-f"])
            .args(["-t", &tries.to_string(), "-T", "1", "-s", "/bin/true"]);
        common::output_within(&mut cmd, CLIENT_TIMEOUT)
    }

    /// Asks for a lease and asserts it gets its reserved address. Returns udhcpc's output.
    #[track_caller]
    pub fn get_lease(&self) -> String {
        let out = self.udhcpc(10);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains(&format!("lease of {} obtained", self.ip)),
            "client {} ({}) did not get {}: {}\n{text}",
            self.ns.name(),
            self.mac,
            self.ip,
            out.status
        );
        text
    }
}

/// A Neutron router's metadata proxy: a `qrouter-<uuid>` namespace with 169.254.169.254 on its
/// loopback, a metadata backend (busybox httpd on 127.0.0.1:8080 in that namespace), and the
/// haproxy configuration the L3 agent writes to `DATA/ns-metadata-proxy/<uuid>.conf`.
pub struct MetadataProxy {
    pub uuid: String,
    pub ns: Arc<Netns>,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    /// What the backend serves at `/`.
    pub content: String,
    /// The deployment's state directory, which its sidecars' names derive from.
    state: PathBuf,
}

/// The address Neutron's metadata proxy listens on.
pub const METADATA_IP: &str = "169.254.169.254";
const BACKEND: &str = "127.0.0.1:8080";

impl MetadataProxy {
    pub fn new(d: &Deployment) -> MetadataProxy {
        let uuid = common::uuid();
        let ns = d.netns(&format!("qrouter-{uuid}"));
        ns.ip(&["addr", "add", &format!("{METADATA_IP}/32"), "dev", "lo"]);

        let www = d.data().join("e2e-backend").join(&uuid);
        fs::create_dir_all(&www).expect("mkdir backend dir");
        let content = format!("instance-id: i-{uuid}\n");
        fs::write(www.join("index.html"), &content).expect("write index.html");
        let mut httpd = ns.exec("busybox");
        httpd.args(["httpd", "-f", "-p", BACKEND, "-h"]).arg(&www);
        let mut backend = Background::spawn("metadata backend (busybox httpd)", &mut httpd);
        common::wait_until(CLIENT_TIMEOUT, "the metadata backend answers", || {
            backend.assert_running();
            http_get(&ns, &format!("http://{BACKEND}/"))
                .status
                .success()
        });
        d.keep(backend);

        let pids = d.data().join("external").join("pids");
        let confs = d.data().join("ns-metadata-proxy");
        fs::create_dir_all(&pids).expect("mkdir pids");
        fs::create_dir_all(&confs).expect("mkdir ns-metadata-proxy");
        let pid_file = pids.join(format!("{uuid}.pid.haproxy"));
        let conf = confs.join(format!("{uuid}.conf"));
        // Neutron's template (neutron/agent/metadata/driver.py), with `daemon` as Neutron has
        // it (the profile's -Ws keeps haproxy in the foreground) and a TCP backend instead of
        // the metadata agent's UNIX socket; the response header proves the answer came
        // through haproxy.
        let text = format!(
            "global
    log-tag     haproxy-metadata-proxy-{uuid}
    maxconn     1024
    pidfile     {pid}
    daemon

defaults
    mode                    http
    option                  http-server-close
    option                  forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind {METADATA_IP}:80
    server metadata {BACKEND}
    http-request del-header X-Neutron-Router-ID
    http-request set-header X-Neutron-Router-ID {uuid}
    http-response set-header X-Metadata-Proxy haproxy-{uuid}
",
            pid = pid_file.display()
        );
        replace_file(&conf, &text);
        MetadataProxy {
            uuid,
            ns,
            conf,
            pid_file,
            content,
            state: d.state_dir(),
        }
    }

    pub fn tag(&self) -> String {
        format!("haproxy-{}", self.uuid)
    }

    pub fn container_name(&self) -> String {
        common::sidecar_name(&self.state, "haproxy", &self.tag())
    }

    pub fn argv(&self) -> Vec<String> {
        vec!["-f".into(), self.conf.display().to_string()]
    }

    /// The L3 agent spawns haproxy (Neutron's call); asserts the wrapper exits 0.
    pub fn request(&self, d: &Deployment) -> Output {
        d.agent_call(self.ns.name(), &self.tag(), "haproxy", &self.argv(), 0)
    }

    /// Waits (Neutron's 60 s) until the proxy is alive; returns the pid file's pid.
    pub fn wait_alive(&self) -> u32 {
        let mut pid = None;
        common::wait_until(
            ALIVE_TIMEOUT,
            &format!(
                "haproxy of router {} is alive (pid file + cmdline)",
                self.uuid
            ),
            || {
                pid = alive_pid(&self.pid_file, &self.uuid);
                pid.is_some()
            },
        );
        pid.expect("alive")
    }

    /// A VM's metadata request, from inside the router namespace, through haproxy. Asserts
    /// the backend's content came back with haproxy's header.
    #[track_caller]
    pub fn assert_serves(&self) {
        let url = format!("http://{METADATA_IP}/");
        let mut last = None;
        common::wait_until(
            CLIENT_TIMEOUT,
            &format!("{url} answers in {}", self.ns.name()),
            || {
                let out = http_get(&self.ns, &url);
                let ok = out.status.success();
                last = Some(out);
                ok
            },
        );
        let out = last.expect("one request");
        assert_eq!(String::from_utf8_lossy(&out.stdout), self.content);
        // haproxy sends header names in lower case.
        let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            headers.contains(&format!("x-metadata-proxy: haproxy-{}", self.uuid)),
            "the answer did not come through haproxy: {headers}"
        );
    }
}

/// `busybox wget -S -O - URL` inside `ns` (headers on stderr, body on stdout).
pub fn http_get(ns: &Netns, url: &str) -> Output {
    let mut cmd = ns.exec("busybox");
    cmd.args(["wget", "-S", "-O", "-", url]);
    common::output_within(&mut cmd, CLIENT_TIMEOUT)
}
