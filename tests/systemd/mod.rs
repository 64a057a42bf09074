//! A real systemd manager for tests, on a machine where systemd is not PID 1.
//!
//! [`UserManager::start`] runs `systemd --user` as root in a private mount
//! namespace (`unshare --mount --propagation slave`) with a tmpfs on
//! `/run/systemd` holding the `system/` directory that `systemd --user`
//! insists on, and with its own `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`
//! (unit directory) and the other XDG directories under a temporary
//! directory unique to the test. It needs neither D-Bus nor a logind
//! session: `systemctl --user` talks to the manager's private socket in
//! `$XDG_RUNTIME_DIR/systemd/private`. With slave propagation, files and
//! mounts created later on the host (queue directories, network
//! namespaces) are visible to the manager and its services.
//!
//! Everything goes through the [`Manager`] trait, whose only required
//! methods say how to call `systemctl` and where unit files go. A host whose
//! PID 1 is systemd could implement it for the system manager (plain
//! `systemctl`, units in `/run/systemd/system` under names unique to the
//! run) and let the tests use that instead; only the user manager is
//! implemented here, since this project's machines have no systemd as PID 1.
//!
//! Dropping a [`UserManager`] (also while a test panics) asks the manager to
//! exit with SIGTERM, which stops every unit it runs, kills it after a grace
//! period if it has not, and removes the temporary directory. Should the
//! test process die without unwinding, the manager receives SIGTERM as its
//! parent-death signal.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sidespawn::host::units::{self, UnitFile};

use crate::common::TempDir;

/// The manager binary of Debian's systemd package.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// The program's path if it is found in `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `systemd-tmpfiles --create` on `snippet`, below `root` when given,
/// and panics unless it succeeds without a complaint.
pub fn tmpfiles_create(snippet: &Path, root: Option<&Path>) {
    let mut cmd = Command::new("systemd-tmpfiles");
    if let Some(root) = root {
        cmd.arg(format!("--root={}", root.display()));
    }
    let out = cmd
        .arg("--create")
        .arg(snippet)
        .output()
        .expect("run systemd-tmpfiles");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-tmpfiles --create {}: {}\n{}",
        snippet.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `probe` (every 10 ms) until it yields a value or `timeout` passes.
/// Returns the value and how long it took; the error names `what`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running systemd manager that tests can install units into and drive.
pub trait Manager {
    /// `systemctl` with everything needed to reach this manager, ready for
    /// the subcommand's arguments.
    fn systemctl_command(&self) -> Command;
    /// Where this manager loads unit files from (and `enable` links them).
    fn unit_dir(&self) -> &Path;

    fn systemctl(&self, args: &[&str]) -> Output {
        self.systemctl_command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemctl {args:?}: {e}"))
    }

    /// Runs systemctl and panics with its stderr (and the units' status)
    /// unless it succeeds; returns stdout.
    fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.status_report()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One property of one unit (`systemctl show -P`).
    fn show(&self, unit: &str, prop: &str) -> String {
        self.systemctl_ok(&["show", "-P", prop, unit])
            .trim_end()
            .to_owned()
    }

    /// Waits until `unit`'s `prop` is `value`; returns how long that took.
    fn wait_for(
        &self,
        unit: &str,
        prop: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let mut last = String::new();
        wait_until(timeout, &format!("{unit} {prop}={value}"), || {
            last = self.show(unit, prop);
            (last == value).then_some(())
        })
        .map(|((), took)| took)
        .map_err(|e| format!("{e} (last {last:?})\n{}", self.status_report()))
    }

    /// Writes the generated unit files (those under `etc/systemd/system/`)
    /// into the unit directory with [`units::write`] and reloads.
    fn install(&self, files: &[UnitFile]) {
        let units: Vec<UnitFile> = files
            .iter()
            .filter_map(|f| {
                let name = f.rel_path.strip_prefix(units::UNIT_DIR).ok()?;
                Some(UnitFile {
                    rel_path: name.to_owned(),
                    contents: f.contents.clone(),
                })
            })
            .collect();
        assert!(!units.is_empty(), "no unit files among {files:?}");
        units::write(&units, self.unit_dir()).expect("install units");
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// A drop-in for `unit` (test-only changes to installed units).
    fn drop_in(&self, unit: &str, name: &str, text: &str) {
        let dir = self.unit_dir().join(format!("{unit}.d"));
        fs::create_dir_all(&dir).expect("create drop-in directory");
        fs::write(dir.join(format!("{name}.conf")), text).expect("write drop-in");
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// The state of every unit of ours, for failure messages.
    fn status_report(&self) -> String {
        let out = self
            .systemctl_command()
            .args(["status", "--all", "--no-pager", "--full", "sidespawn*"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => format!(
                "--- systemctl status sidespawn*:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(no status: {e})"),
        }
    }
}

/// `systemd --user` in a private mount namespace, owned by the test.
pub struct UserManager {
    child: Child,
    runtime_dir: PathBuf,
    unit_dir: PathBuf,
    log: PathBuf,
    // Last: removed after the manager is gone.
    dir: TempDir,
}

impl UserManager {
    /// Starts a manager and waits until it answers. `Err` names what this
    /// machine lacks (pass it to [`crate::common::skip`]); anything else going wrong after
    /// that panics, since it is a real failure.
    pub fn start() -> Result<UserManager, String> {
        if !is_root() {
            return Err("root".into());
        }
        for tool in ["unshare", "nsenter", "systemctl"] {
            if which(tool).is_none() {
                return Err(tool.into());
            }
        }
        if !Path::new(SYSTEMD).is_file() {
            return Err(SYSTEMD.into());
        }

        let dir = TempDir::new("sidespawn-systemd");
        let sub = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&p)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
            p
        };
        // systemd wants the runtime directory private to its user.
        let runtime_dir = sub("runtime", 0o700);
        let config_home = sub("config", 0o755);
        let unit_dir = sub("config/systemd/user", 0o755);
        let log = dir.path().join("manager.log");
        // Services have no journal to write to here: hand them the
        // manager's stderr, which goes to manager.log.
        fs::write(
            config_home.join("systemd/user.conf"),
            "[Manager]\nDefaultStandardOutput=inherit\nDefaultStandardError=inherit\n",
        )
        .expect("write user.conf");
        let log_file = fs::File::create(&log).expect("create manager.log");

        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(
                // /run/systemd is created on the host only if missing (it is a
                // plain directory); the tmpfs and its system/ exist only in the
                // manager's namespace.
                format!(
                    "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && \
                 mkdir /run/systemd/system && exec {SYSTEMD} --user"
                ),
            );
        // The manager hands its environment to every service: start it
        // clean, with every XDG directory inside the test's directory, so
        // nothing of the caller's (INVOCATION_ID, ~/.config units) leaks in.
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", sub("home", 0o700))
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("XDG_CONFIG_HOME", &config_home)
            .env("XDG_DATA_HOME", sub("data", 0o755))
            .env("XDG_STATE_HOME", sub("state", 0o755))
            .env("XDG_CACHE_HOME", sub("cache", 0o755))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup manager.log"))
            .stderr(log_file);
        // SAFETY: between fork and exec only prctl(2) runs, which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn unshare ... systemd --user");
        let mut mgr = UserManager {
            child,
            runtime_dir,
            unit_dir,
            log,
            dir,
        };

        let ready = wait_until(Duration::from_secs(30), "systemd --user to answer", || {
            if let Ok(Some(status)) = mgr.child.try_wait() {
                panic!(
                    "systemd --user exited ({status}) before answering:\n{}",
                    mgr.log_text()
                );
            }
            let out = mgr.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        if let Err(e) = ready {
            panic!("{e}\n{}", mgr.log_text());
        }
        Ok(mgr)
    }

    /// The manager's pid (unshare and sh exec into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A directory unique to this manager that tests may use for their own
    /// files; removed with it.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// What the manager and its services wrote to stderr.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `systemctl` script for this manager, for code that takes the path
    /// of systemctl ([`units::run_commands`]).
    pub fn systemctl_script(&self) -> PathBuf {
        let path = self.dir.path().join("systemctl");
        let quote = |p: &Path| units::display_command(&[p.to_str().expect("utf-8").to_owned()]);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\nXDG_RUNTIME_DIR={} exec nsenter -t {} -m systemctl --user \"$@\"\n",
                quote(&self.runtime_dir),
                self.pid()
            ),
        )
        .expect("write systemctl script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
        path
    }

    /// `systemd-analyze --user verify` as this manager would load `units`:
    /// returns (success, stderr).
    pub fn analyze_verify(&self, units: &[&str]) -> (bool, String) {
        let paths: Vec<PathBuf> = units.iter().map(|u| self.unit_dir.join(u)).collect();
        let out = Command::new("systemd-analyze")
            .args(["--user", "verify"])
            .args(&paths)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-analyze");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Manager for UserManager {
    fn systemctl_command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid().to_string(), "-m", "systemctl", "--user"])
            .env("XDG_RUNTIME_DIR", &self.runtime_dir);
        cmd
    }

    fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        // SIGTERM: the user manager stops all its units, then exits.
        let _ = kill(pid, Signal::SIGTERM);
        let gone = wait_until(Duration::from_secs(20), "systemd --user to exit", || {
            self.child.try_wait().ok().flatten()
        });
        if gone.is_err() {
            eprintln!("systemd --user (pid {pid}) ignored SIGTERM; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
