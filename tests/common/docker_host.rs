//! A real docker daemon of the test's own: `dockerd` started on a short unique directory
//! (`/tmp/sdk-XXXXXXXX`: data root, exec root, socket, pid file, log), without bridge or
//! iptables (sidecars use their own namespaces), waited for by asking it, given the local test
//! images with `podman save IMAGE | docker load`, and on drop — also when the test failed —
//! stopped by its pid (SIGTERM, then SIGKILL after a grace time), any mount it left below the
//! directory detached, and the directory removed. Nothing of the machine's own docker (if any)
//! is touched: every command names this daemon's socket.
//!
//! The docker CLI is Debian's `/usr/bin/docker` (20.10, the daemon's own version) when present:
//! a newer static client negotiates the API version down and works too, but the tests pin the
//! packaged one so that what runs is what `tests/scripts/install-deps.sh` installs.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{explain, find_in_path, output, podman, wait_until};

/// How long dockerd may take to answer after its start (containerd starts first).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dockerd may take to stop its containers and exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The docker CLI the tests use: Debian's when installed, else the first in `PATH`.
pub fn docker_cli() -> Option<PathBuf> {
    let packaged = Path::new("/usr/bin/docker");
    if packaged.is_file() {
        return Some(packaged.to_owned());
    }
    find_in_path("docker")
}

/// What is missing to run a docker daemon here (empty when nothing is).
pub fn missing() -> Vec<String> {
    let mut m = Vec::new();
    if find_in_path("dockerd").is_none() {
        m.push("dockerd (apt-get install docker.io; tests/scripts/install-deps.sh)".to_owned());
    }
    if docker_cli().is_none() {
        m.push("the docker CLI (apt-get install docker.io)".to_owned());
    }
    m
}

/// See the module documentation.
pub struct DockerDaemon {
    dir: PathBuf,
    child: Option<Child>,
    cli: PathBuf,
}

impl DockerDaemon {
    /// Starts a daemon and waits until it answers. Panics (after cleaning up) when it does not
    /// come up; callers check [`missing`] first.
    pub fn start() -> DockerDaemon {
        // Unix socket paths are limited to 107 bytes: keep the directory short.
        let dir = PathBuf::from(format!(
            "/tmp/sdk-{:016x}",
            u64::from_ne_bytes(super::random_bytes())
        ));
        fs::create_dir_all(&dir).expect("mkdir the docker daemon's directory");
        let log = fs::File::create(dir.join("dockerd.log")).expect("create dockerd.log");
        let mut d = DockerDaemon {
            cli: docker_cli().expect("a docker CLI (see docker_host::missing)"),
            dir,
            child: None,
        };
        let mut cmd = Command::new("dockerd");
        cmd.arg(format!("--data-root={}", d.dir.join("root").display()))
            .arg(format!("--exec-root={}", d.dir.join("exec").display()))
            .arg(format!("--host={}", d.host()))
            .arg(format!("--pidfile={}", d.dir.join("dockerd.pid").display()))
            .args(["--iptables=false", "--bridge=none", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            // Its own process group, so a test's Ctrl-C does not stop it before the drop.
            .process_group(0);
        d.child = Some(cmd.spawn().expect("spawn dockerd"));
        let started = Instant::now();
        let mut ping = d.docker();
        ping.args(["version", "--format", "{{.Server.Version}}"]);
        let mut ready = false;
        while started.elapsed() < START_TIMEOUT {
            if d.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            if d.dir.join("docker.sock").exists() && output(&mut ping).status.success() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            ready,
            "dockerd did not answer within {START_TIMEOUT:?}; its log:\n{}",
            d.log()
        );
        d
    }

    /// The daemon's address, as `DOCKER_HOST` or `--host` takes it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// The docker CLI this harness uses.
    pub fn cli(&self) -> &Path {
        &self.cli
    }

    /// `docker` talking to this daemon (`DOCKER_HOST` set, no other docker configuration).
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.join("cli"));
        cmd
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Copies `image` from podman's storage into this daemon (`podman save`, then `docker
    /// load` of the archive, kept in the daemon's directory only for the copy).
    pub fn load(&self, image: &str) {
        let archive = self.dir.join("image.tar");
        let mut save = podman();
        save.args(["save", "--quiet", "-o"])
            .arg(&archive)
            .arg(image);
        let out = output(&mut save);
        assert!(out.status.success(), "{}", explain(&save, &out));
        let mut load = self.docker();
        load.args(["load", "-q", "-i"]).arg(&archive);
        let out = output(&mut load);
        assert!(out.status.success(), "{}", explain(&load, &out));
        let _ = fs::remove_file(&archive);
    }

    /// Waits until the daemon no longer lists `name` as running (e.g. after a kill).
    pub fn wait_not_running(&self, name: &str) {
        wait_until(Duration::from_secs(60), &format!("{name} stopped"), || {
            let out = output(self.docker().args([
                "inspect",
                "--type=container",
                "--format",
                "{{.State.Running}}",
                name,
            ]));
            String::from_utf8_lossy(&out.stdout).trim() != "true"
        });
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // Not reaped yet, so the pid is still this dockerd's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = writeln!(
                            std::io::stderr(),
                            "warning: dockerd {} did not stop within {STOP_GRACE:?}; killing it",
                            child.id()
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        // Whatever it left mounted below its directory (overlay layers, the netns of a
        // container, shm), deepest first, so the directory can go.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not remove {}: {e}",
                self.dir.display()
            );
        }
    }
}
