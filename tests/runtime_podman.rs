//! `Podman` against the real podman: a sidecar-like container is run, found
//! by `list`, signalled, stopped and removed, and the request argv is shown
//! to reach the daemon only, never podman.
//!
//! Needs root, podman and busybox-static (for a local image: no registry is
//! reachable on the test machines). Without them the test says so on stderr
//! and returns; with `SIDESPAWN_REQUIRE_PRIVILEGED=1` (what CI sets) it fails
//! instead, so a skip is never counted as a pass there.
//!
//! `CONTAINERS_CONF` is only set for podman when the caller has not set it:
//! to `tests/scripts/containers.conf` if present, else to a temporary copy of
//! the runc/ulimits settings the test machines need (see docs/TESTING.md).
//! It is passed to podman's environment only, never set on this process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TempDir;
use sidespawn::host::runtime::{
    ContainerInfo, Podman, RunSpec, Runtime, RuntimeError, State, labels,
};
use sidespawn::shared::record::Signal;

const TEST_CONTAINERS_CONF: &str = "[containers]
default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]
[engine]
runtime = \"runc\"
";

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:09}", std::process::id())
}

/// How to call the real podman outside the code under test (image build,
/// inspect, cleanup): the same environment `Podman` is given.
#[derive(Clone)]
struct Host {
    conf: Option<PathBuf>,
}

impl Host {
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        if let Some(conf) = &self.conf {
            c.env("CONTAINERS_CONF", conf);
        }
        c.env_remove("INVOCATION_ID").stdin(Stdio::null());
        c
    }

    fn runtime(&self) -> Podman {
        let p = Podman::new("podman", Duration::from_secs(60));
        match &self.conf {
            Some(conf) => p.with_env("CONTAINERS_CONF", conf.to_string_lossy()),
            None => p,
        }
    }

    /// Runs podman, panicking with its stderr on failure; returns stdout.
    fn must(&self, args: &[&str]) -> String {
        let out = self.podman().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Removes the image on drop, even when the test panicked.
struct ImageGuard {
    host: Host,
    tag: String,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = self
            .host
            .podman()
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// Removes the container on drop, even when the test panicked.
struct ContainerGuard {
    host: Host,
    name: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = self
            .host
            .podman()
            .args(["rm", "--force", "--time=0", "--", &self.name])
            .output();
    }
}

/// Checks the prerequisites; `None` after reporting a skip.
fn host(tmp: &Path) -> Option<Host> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (not running as root)".to_owned());
    }
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => missing.push(format!("podman (`podman --version` failed: {})", o.status)),
        Err(e) => missing.push(format!("podman (not found: {e})")),
    }
    match std::fs::read("/bin/busybox") {
        Ok(b) if !has_elf_interpreter(&b) => {}
        Ok(_) => missing.push(
            "busybox-static (/bin/busybox is dynamically linked; install busybox-static)"
                .to_owned(),
        ),
        Err(e) => missing.push(format!("busybox-static (no /bin/busybox: {e})")),
    }
    if !common::gate(
        "the podman runtime against real podman",
        "root + podman + busybox-static",
        &missing,
    ) {
        return None;
    }
    let conf = if std::env::var_os("CONTAINERS_CONF").is_some() {
        None
    } else {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/containers.conf");
        if shared.is_file() {
            Some(shared)
        } else {
            let own = tmp.join("containers.conf");
            std::fs::write(&own, TEST_CONTAINERS_CONF).unwrap();
            Some(own)
        }
    };
    Some(Host { conf })
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (has a
/// `PT_INTERP` program header): such a busybox cannot run in an image that
/// holds nothing else.
fn has_elf_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB; anything else: assume dynamic.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        u32_at(at).is_none_or(|t| t == PT_INTERP)
    })
}

/// Imports a one-binary image: static busybox as `sh` and `sleep`.
fn import_busybox(host: &Host, tmp: &Path, tag: &str) {
    let root = tmp.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = host
        .podman()
        .args(["import", "-", tag])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The instance label the test's sidecars carry.
const INSTANCE: &str = "rttest";

fn find(rt: &Podman, name: &str) -> Option<ContainerInfo> {
    rt.list(INSTANCE)
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
}

/// Polls the container's log until it contains `needle`.
fn wait_for_log(host: &Host, name: &str, needle: &str) -> String {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let logs = host.must(&["logs", name]);
        if logs.contains(needle) || Instant::now() > until {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The container's shell prints its arguments, reports HUP (a reload must
/// not stop it) and exits 0 on TERM (so a clean stop is distinguishable
/// from podman's SIGKILL after the grace time).
const SCRIPT: &str = "echo \"args:$*\"; trap 'echo got-hup' HUP; trap 'exit 0' TERM; \
                      while :; do sleep 1 & wait $!; done";

#[test]
fn real_podman_runs_signals_stops_and_removes_a_sidecar() {
    let id = unique();
    let tmp = TempDir::new("sidespawn-rt-podman");
    let Some(host) = host(tmp.path()) else {
        return;
    };

    let tag = format!("localhost/sidespawn-rt-test:{id}");
    let _image = ImageGuard {
        host: host.clone(),
        tag: tag.clone(),
    };
    import_busybox(&host, tmp.path(), &tag);

    let name = format!("sidespawn-rt-test-{id}");
    let _container = ContainerGuard {
        host: host.clone(),
        name: name.clone(),
    };
    let spec = RunSpec {
        name: name.clone(),
        image: tag.clone(),
        labels: [
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::INSTANCE, INSTANCE),
            (labels::KIND, "dnsmasq"),
            (labels::KEY, name.as_str()),
            (labels::REQUEST_ID, id.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        // Network::None (the default), the image's own entrypoint.
        command: ["sh", "-c", SCRIPT, "sh"].map(str::to_owned).to_vec(),
        daemon_argv: ["--privileged", "-v", "/:/host"]
            .map(str::to_owned)
            .to_vec(),
        ..RunSpec::default()
    };
    let rt = host.runtime();

    // run: the request argv went to the program in the container, not to podman.
    let cid = rt.run(&spec).unwrap();
    assert_eq!(cid.len(), 64, "{cid}");
    assert!(cid.bytes().all(|b| b.is_ascii_hexdigit()), "{cid}");

    let inspect: serde_json::Value =
        serde_json::from_str(&host.must(&["inspect", "--type=container", &name])).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Id"], cid.as_str());
    assert_eq!(c["HostConfig"]["Privileged"], false);
    let mounts = c["Mounts"].as_array().unwrap();
    assert!(
        !mounts
            .iter()
            .any(|m| m["Destination"] == "/host" || m["Source"] == "/"),
        "{mounts:?}"
    );
    let mut want_cmd = spec.command.clone();
    want_cmd.extend(spec.daemon_argv.iter().cloned());
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(want_cmd));
    assert_eq!(c["Args"], serde_json::json!(want_cmd[1..]));
    assert_eq!(c["Config"]["Labels"][labels::KEY], name.as_str());
    let logs = wait_for_log(&host, &name, "args:");
    assert!(logs.contains("args:--privileged -v /:/host"), "{logs:?}");

    // list: running, with a real host pid that is our shell.
    let running = find(&rt, &name).expect("listed");
    assert_eq!(running.id, cid);
    assert_eq!(running.state, State::Running);
    assert_eq!(running.image, tag);
    for (k, v) in &spec.labels {
        assert_eq!(running.labels.get(k), Some(v), "label {k}");
    }
    assert!(running.pid > 0);
    assert!(running.started_at > 0);
    assert!(
        rt.list("rtother").unwrap().iter().all(|c| c.name != name),
        "another instance's listing never shows it"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", running.pid)).unwrap();
    assert!(cmdline.starts_with(b"sh\0-c\0"), "{cmdline:?}");

    // kill HUP: delivered, and a reload does not stop the sidecar.
    rt.kill(&name, Signal::Hup).unwrap();
    let logs = wait_for_log(&host, &name, "got-hup");
    assert!(logs.contains("got-hup"), "{logs:?}");
    let after = find(&rt, &name).expect("still listed");
    assert_eq!((after.state, after.pid), (State::Running, running.pid));

    // The name is taken: a second run fails instead of duplicating, in a
    // way the sync can tell apart, and the holder can be looked at.
    match rt.run(&spec) {
        Err(RuntimeError::NameInUse(n)) => assert_eq!(n, name),
        other => panic!("second run with the same name: {other:?}"),
    }
    let held = rt.inspect_container(&name).unwrap();
    assert_eq!(
        (held.id.as_str(), held.state.clone()),
        (cid.as_str(), State::Running)
    );
    assert_eq!(held.pid, running.pid);
    for (k, v) in &spec.labels {
        assert_eq!(held.labels.get(k), Some(v), "label {k}");
    }

    // stop: TERM reaches the shell, which exits 0 well before the grace time.
    let t = Instant::now();
    rt.stop(&name, Duration::from_secs(20)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let stopped = find(&rt, &name).expect("stopped but listed");
    assert_eq!(stopped.state, State::Exited);
    assert_eq!(stopped.pid, 0);
    assert_eq!(stopped.exit_code, 0, "TERM, not SIGKILL");
    assert!(matches!(
        rt.kill(&name, Signal::Hup),
        Err(RuntimeError::NotRunning(n)) if n == name
    ));

    // remove, idempotently; then the name is unknown.
    rt.remove(&name).unwrap();
    assert!(find(&rt, &name).is_none());
    rt.remove(&name).expect("removing twice is fine");
    assert!(matches!(
        rt.kill(&name, Signal::Hup),
        Err(RuntimeError::NoSuchContainer(n)) if n == name
    ));
    assert!(matches!(
        rt.stop(&name, Duration::from_secs(1)),
        Err(RuntimeError::NoSuchContainer(n)) if n == name
    ));
    assert!(matches!(
        rt.inspect_container(&name),
        Err(RuntimeError::NoSuchContainer(n)) if n == name
    ));
}

/// The listing's size does not grow with the sidecars' argv: two sidecars,
/// one with 1 KiB and one with 512 KiB of arguments, each listed under its
/// own instance, list in the same number of bytes (pids aside). Before, the
/// listing (`--format json`) carried every command line, so about 70
/// sidecars with 1 MiB of argv pushed it past the 64 MiB read cap and every
/// sync of every kind failed; the old format is measured too, to show what
/// this test catches.
#[test]
fn real_podman_listing_size_is_independent_of_argv_size() {
    let id = unique();
    let tmp = TempDir::new("sidespawn-rt-argv");
    let Some(host) = host(tmp.path()) else {
        return;
    };
    let tag = format!("localhost/sidespawn-rt-argv:{id}");
    let _image = ImageGuard {
        host: host.clone(),
        tag: tag.clone(),
    };
    import_busybox(&host, tmp.path(), &tag);
    let rt = host.runtime();
    // Instances and names of equal length, so only the argv differs.
    let small_i = format!("rtsmall{}", std::process::id());
    let large_i = format!("rtlarge{}", std::process::id());
    let mut guards = Vec::new();
    for (instance, bytes) in [(&small_i, 1024usize), (&large_i, 512 * 1024)] {
        let name = format!("sidespawn-{instance}-dnsmasq-t-{id}");
        guards.push(ContainerGuard {
            host: host.clone(),
            name: name.clone(),
        });
        // One argument may be at most 128 KiB (MAX_ARG_STRLEN): 8 of 64 KiB.
        let n = bytes.div_ceil(64 * 1024).max(1);
        let argv: Vec<String> = (0..n).map(|_| "x".repeat(bytes / n - 1)).collect();
        let spec = RunSpec {
            name,
            image: tag.clone(),
            labels: [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                (labels::INSTANCE, instance.as_str()),
                (labels::KIND, "dnsmasq"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            command: ["sh", "-c", "exec sleep 600", "sh"]
                .map(str::to_owned)
                .to_vec(),
            daemon_argv: argv,
            ..RunSpec::default()
        };
        rt.run(&spec).unwrap();
    }
    let listing = |instance: &str| -> Vec<u8> {
        let args = sidespawn::host::runtime::call_args(&sidespawn::host::runtime::Call::List(
            instance.to_owned(),
        ));
        let out = host.podman().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        out.stdout
    };
    // Pids differ in their digits; everything else is the same length.
    let without_pid = |out: &[u8]| -> usize {
        let v: serde_json::Value = serde_json::from_slice(out).unwrap();
        out.len() - v["Pid"].to_string().len()
    };
    let small = listing(&small_i);
    let large = listing(&large_i);
    assert_eq!(rt.list(&small_i).unwrap().len(), 1);
    assert_eq!(rt.list(&large_i).unwrap().len(), 1);
    eprintln!(
        "listing bytes: 1 KiB argv {}, 512 KiB argv {}",
        small.len(),
        large.len()
    );
    assert_eq!(
        without_pid(&small),
        without_pid(&large),
        "{}\n{}",
        String::from_utf8_lossy(&small),
        String::from_utf8_lossy(&large)
    );
    assert!(small.len() < 4096, "{} bytes for one sidecar", small.len());
    // What the old `--format json` listing cost for the same two sidecars.
    let old = |instance: &str| {
        host.must(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={}={instance}", labels::INSTANCE),
            "--format",
            "json",
        ])
        .len()
    };
    let (old_small, old_large) = (old(&small_i), old(&large_i));
    eprintln!("old --format json bytes: 1 KiB argv {old_small}, 512 KiB argv {old_large}");
    assert!(
        old_large > old_small + 500 * 1024,
        "{old_small} vs {old_large}"
    );
}
