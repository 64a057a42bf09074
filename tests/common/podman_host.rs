//! One host for the tests that run the real `sidespawn` against real podman: a temporary
//! directory holding the queue root (`queue/`), the state directory (`state/`), a data
//! directory mounted into the sidecars (`data/`), the host configuration (`config.json`) and
//! the wrapper's (`wrapper.json`), and a run label that marks every sidecar this host makes, so
//! that they — and only they — are removed on drop.
//!
//! The variations between test files are options of [`HostBuilder`]: more of the dnsmasq
//! profile, more top-level configuration, a podman shim logging every call, the per-kind queue
//! directory made up front (or left to the units' tmpfiles snippet).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{Netns, TempDir, assert_exit, containers_conf, ensure_images, output, podman, unique};

/// The label whose value is this host's run label.
pub const RUN_LABEL: &str = "test.sidespawn.run";

/// See the module documentation.
pub struct PodmanHost {
    dir: TempDir,
    run_label: String,
}

/// How to make a [`PodmanHost`]; [`PodmanHost::builder`] starts one.
pub struct HostBuilder {
    prefix: String,
    run_label: Option<String>,
    profile: Value,
    config: Value,
    wrapper: Value,
    kind_dir: bool,
    logging_shim: bool,
    adjust: Box<dyn FnOnce(&mut Value)>,
}

impl HostBuilder {
    /// Fields merged into the dnsmasq profile (over its image, data volume and run label).
    pub fn profile(mut self, extra: Value) -> HostBuilder {
        merge(&mut self.profile, extra);
        self
    }

    /// Fields merged into the host configuration's top level.
    pub fn config(mut self, extra: Value) -> HostBuilder {
        merge(&mut self.config, extra);
        self
    }

    /// Fields merged into the wrapper configuration's top level.
    pub fn wrapper(mut self, extra: Value) -> HostBuilder {
        merge(&mut self.wrapper, extra);
        self
    }

    /// `adjust` changes the whole host configuration last, before it is written.
    pub fn adjust(mut self, adjust: impl FnOnce(&mut Value) + 'static) -> HostBuilder {
        self.adjust = Box::new(adjust);
        self
    }

    /// Marks the sidecars with `label` instead of a fresh one: for hosts that share one run
    /// (each removes all of the run's containers when dropped).
    pub fn run_label(mut self, label: &str) -> HostBuilder {
        self.run_label = Some(label.to_owned());
        self
    }

    /// Makes `queue/dnsmasq` now (a host's tmpfiles snippet makes it in production).
    pub fn kind_dir(mut self) -> HostBuilder {
        self.kind_dir = true;
        self
    }

    /// podman is a shim that appends each call's arguments to `podman-calls` (see
    /// [`PodmanHost::podman_calls`]) and, before a `podman run`, runs a `pre-run` script once
    /// when one is present, with the run's arguments: what an interrupted sync's podman did
    /// meanwhile.
    pub fn logging_shim(mut self) -> HostBuilder {
        self.logging_shim = true;
        self
    }

    /// Creates the directories and writes both configurations.
    pub fn build(self) -> PodmanHost {
        let images = ensure_images();
        let host = PodmanHost {
            dir: TempDir::new(&self.prefix),
            run_label: self.run_label.unwrap_or_else(|| unique("run")),
        };
        std::fs::create_dir_all(host.data()).unwrap();
        if self.kind_dir {
            std::fs::create_dir_all(host.queue_root().join("dnsmasq")).unwrap();
        }
        let mut config = self.config;
        if self.logging_shim {
            merge(&mut config, json!({ "podman": host.write_logging_shim() }));
        }
        let mut profile = host.profile(&images.dnsmasq);
        merge(&mut profile, self.profile);
        merge(&mut config, json!({ "kinds": { "dnsmasq": profile } }));
        host.write_config(config, self.adjust);
        let mut wrapper = json!({ "queue_root": host.queue_root() });
        merge(&mut wrapper, self.wrapper);
        std::fs::write(host.wrapper_config(), wrapper.to_string()).unwrap();
        host
    }
}

impl PodmanHost {
    /// A host in a fresh `/tmp/PREFIX-…` directory.
    pub fn builder(prefix: &str) -> HostBuilder {
        HostBuilder {
            prefix: prefix.to_owned(),
            run_label: None,
            profile: json!({}),
            config: json!({}),
            wrapper: json!({}),
            kind_dir: false,
            logging_shim: false,
            adjust: Box::new(|_| {}),
        }
    }

    /// `relative` under the host's directory.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn run_label(&self) -> &str {
        &self.run_label
    }

    pub fn config_path(&self) -> PathBuf {
        self.join("config.json")
    }

    pub fn wrapper_config(&self) -> PathBuf {
        self.join("wrapper.json")
    }

    pub fn queue_root(&self) -> PathBuf {
        self.join("queue")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.join("state")
    }

    /// Mounted at the same path into every sidecar (pid files, leases).
    pub fn data(&self) -> PathBuf {
        self.join("data")
    }

    /// A profile running `image` with the data directory mounted and the run label set.
    pub fn profile(&self, image: &str) -> Value {
        let data = self.data();
        json!({
            "image": image,
            "volumes": [format!("{}:{}", data.display(), data.display())],
            "labels": { RUN_LABEL: self.run_label },
        })
    }

    /// Writes the host configuration: this host's queue root and state directory with
    /// `fields` (`kinds`, ...) merged over them, then changed by `adjust`.
    pub fn write_config(&self, fields: Value, adjust: impl FnOnce(&mut Value)) {
        let mut config = json!({
            "queue_root": self.queue_root(),
            "state_dir": self.state_dir(),
        });
        merge(&mut config, fields);
        adjust(&mut config);
        std::fs::write(self.config_path(), config.to_string()).unwrap();
    }

    /// The wrapper as `kind` (it is multi-call by argv[0]): a link to it in the host's
    /// directory, made by whichever caller gets there first.
    pub fn wrapper_link(&self, kind: &str) -> PathBuf {
        let link = self.join(kind);
        match std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sidespawn-wrapper"), &link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                panic!("symlink {}: {e}", link.display())
            }
            _ => link,
        }
    }

    /// The wrapper as `program` (see [`PodmanHost::wrapper_link`]) called in `ns` the way a
    /// Neutron agent calls it: this host's wrapper configuration, `PROCESS_TAG=tag`, no stdin.
    /// The arguments are the caller's to add.
    pub fn agent_call(&self, ns: &Netns, program: &str, tag: &str) -> Command {
        let mut cmd = ns.exec(self.wrapper_link(program));
        cmd.env("SIDESPAWN_WRAPPER_CONFIG", self.wrapper_config())
            .env("PROCESS_TAG", tag)
            .stdin(Stdio::null());
        cmd
    }

    /// The agent's kill script `dnsmasq-kill SIG PID` in `ns` (which carries no
    /// `PROCESS_TAG`).
    pub fn kill_script(&self, ns: &Netns, sig: &str, pid: u32) -> Command {
        let mut cmd = self.agent_call(ns, "dnsmasq-kill", "");
        cmd.env_remove("PROCESS_TAG").args([sig, &pid.to_string()]);
        cmd
    }

    /// [`PodmanHost::agent_call`] of `kind` with a Neutron-shaped dnsmasq command line writing
    /// its pid to `pid_file`.
    pub fn dnsmasq_call(&self, ns: &Netns, kind: &str, tag: &str, pid_file: &Path) -> Command {
        let mut cmd = self.agent_call(ns, kind, tag);
        cmd.args([
            "--no-hosts",
            "",
            "--port=0",
            "--conf-file=/dev/null",
            &format!("--pid-file={}", pid_file.display()),
        ]);
        cmd
    }

    /// `sidespawn --config CONFIG ARGS...`, with the test machines' podman settings.
    pub fn sidespawn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sidespawn ARGS`, expects exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let mut cmd = self.sidespawn(args);
        let out = output(&mut cmd);
        assert_exit(&cmd, &out, 0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The arguments of every podman call since the last [`PodmanHost::clear_calls`] (with
    /// [`HostBuilder::logging_shim`]).
    pub fn podman_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.join("podman-calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.join("podman-calls"));
    }

    /// The containers with this host's run label (stopped ones too when `all`), sorted.
    pub fn containers(&self, all: bool) -> Vec<String> {
        super::run_containers(&self.run_label, all)
    }

    /// The acknowledgements in `queue/KIND/acks/` (a file being renamed into place is never
    /// partial; one that vanished meanwhile is skipped).
    pub fn acks(&self, kind: &str) -> Vec<Value> {
        let dir = self.queue_root().join(kind).join("acks");
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last status the sync wrote for `kind`.
    pub fn kind_status(&self, kind: &str) -> Value {
        let p = self.state_dir().join(format!("status/{kind}.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn write_logging_shim(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let shim = self.join("podman-shim");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {calls}\nif [ \"$1\" = run ] && [ -e {pre} ]; then mv {pre} {pre}.done; sh {pre}.done \"$@\"; fi\nexec podman \"$@\"\n",
                calls = self.join("podman-calls").display(),
                pre = self.join("pre-run").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        shim
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        // Every container this host made, running or not; the directory goes after.
        let ids = output(podman().args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={RUN_LABEL}={}", self.run_label),
        ]));
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = output(podman().args(["rm", "-f", "-t", "0", id]));
        }
    }
}

/// `extra`'s fields set on `into` (both objects).
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// `deref_to_host!(Fixture, field)`: a test file's fixture that adds its own helpers to the
/// [`PodmanHost`] in `field` offers the host's as its own. (Test crates that use no such
/// fixture leave it unused.)
#[allow(unused_macros)]
macro_rules! deref_to_host {
    ($fixture:ty, $field:tt) => {
        impl std::ops::Deref for $fixture {
            type Target = $crate::common::podman_host::PodmanHost;

            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use deref_to_host;
