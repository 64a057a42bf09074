//! Self-tests of the test harness (`tests/common/`, `tests/scripts/`): the guards really clean
//! up, also when a test panics, and the test images can do what the end-to-end tests rely on.

mod common;

use std::fs;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Container, Netns, TempDir, TmpfsMount};

/// Runs `f`, which must panic; returns its panic message.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

fn is_mounted(path: &std::path::Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let path = path.to_str().expect("utf-8 path");
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

#[test]
fn unique_names_differ_and_keep_their_prefix() {
    let (a, b) = (common::unique("harness"), common::unique("harness"));
    assert_ne!(a, b);
    assert!(a.starts_with("harness-"), "{a}");
    assert!(
        a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
        "{a} must be usable as a container and netns name"
    );
}

#[test]
fn uuid_has_the_v4_shape() {
    let id = common::uuid();
    assert_eq!(id.len(), 36, "{id}");
    for (i, c) in id.char_indices() {
        match i {
            8 | 13 | 18 | 23 => assert_eq!(c, '-', "{id}"),
            14 => assert_eq!(c, '4', "{id}: version"),
            19 => assert!("89ab".contains(c), "{id}: variant"),
            _ => assert!(c.is_ascii_digit() || ('a'..='f').contains(&c), "{id}"),
        }
    }
    assert_ne!(id, common::uuid());
}

#[test]
fn privileged_verdict_skips_or_fails_loudly() {
    use common::{Verdict, privilege_verdict};
    assert_eq!(privilege_verdict("x", &[], false), Verdict::Run);
    assert_eq!(privilege_verdict("x", &[], true), Verdict::Run);
    let missing = [
        "root (running as uid 1000)".to_owned(),
        "`podman` on PATH".to_owned(),
    ];
    assert_eq!(
        privilege_verdict("some test", &missing, false),
        Verdict::Skip(
            "SKIPPED (needs root + podman): some test \
             (missing root (running as uid 1000), `podman` on PATH)"
                .to_owned()
        )
    );
    match privilege_verdict("some test", &missing, true) {
        Verdict::Fail(message) => assert!(
            message.contains("some test") && message.contains("`podman` on PATH"),
            "{message}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn temp_dir_is_removed_on_drop_even_after_a_panic() {
    let kept = TempDir::new("harness");
    let mut path = PathBuf::new();
    panic_message(|| {
        let dir = TempDir::new("harness");
        path = dir.path().to_owned();
        fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        fs::write(dir.join("a/b/c"), "x").expect("write");
        panic!("test failure");
    });
    assert!(!path.as_os_str().is_empty());
    assert!(!path.exists(), "{} survived the panic", path.display());
    assert!(kept.path().is_dir());
    assert_ne!(kept.path(), path);
}

#[test]
fn wait_until_returns_once_true_and_names_what_timed_out() {
    let mut polls = 0;
    common::wait_until(Duration::from_secs(5), "three polls", || {
        polls += 1;
        polls == 3
    });
    assert_eq!(polls, 3);
    let message = panic_message(|| {
        common::wait_until(Duration::from_millis(50), "pigs fly", || false);
    });
    assert!(message.contains("pigs fly"), "{message}");
}

#[test]
fn run_reports_the_failing_command() {
    let message = panic_message(|| {
        common::run(Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]));
    });
    for needle in ["\"/bin/sh\"", "exit 3", "out", "err"] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    assert_eq!(
        common::run(Command::new("/bin/echo").arg("hello")),
        "hello\n"
    );
}

#[test]
fn output_fails_a_command_that_leaves_its_pipes_open() {
    // The shell exits at once, but the background sleep keeps stdout open: Neutron's agent
    // would block on that, so the helper must not accept it.
    let message = panic_message(|| {
        common::output_within(
            Command::new("/bin/sh").args(["-c", "/bin/sleep 5 & echo started"]),
            Duration::from_millis(500),
        );
    });
    assert!(message.contains("still holds"), "{message}");
    let message = panic_message(|| {
        common::output_within(
            Command::new("/bin/sleep").arg("5"),
            Duration::from_millis(200),
        );
    });
    assert!(message.contains("did not exit"), "{message}");
}

#[test]
fn netns_and_its_veths_are_deleted_on_drop() {
    if !common::privileged("harness: Netns guard") {
        return;
    }
    let a = Netns::new(&common::unique("harness-a"));
    let path_a = a.path();
    let (veth_a, veth_b);
    {
        let b = Netns::new(&common::unique("harness-b"));
        assert!(b.path().exists());
        let listed = common::run(Command::new("ip").args(["netns", "list"]));
        assert!(listed.contains(b.name()), "{listed}");
        // exec() really runs inside the namespace.
        let link = common::run(b.exec("readlink").arg("/proc/self/ns/net"));
        assert_eq!(link.trim(), format!("net:[{}]", b.inode()));

        (veth_b, veth_a) = b.veth_pair(&a);
        common::run(Command::new("ip").args(["-n", b.name(), "link", "show", &veth_b]));
        common::run(Command::new("ip").args(["-n", a.name(), "link", "show", &veth_a]));
        let b_path = b.path();
        drop(b);
        assert!(!b_path.exists(), "{} survived its guard", b_path.display());
    }
    // Deleting b's end removed the peer in a.
    let out = common::output(Command::new("ip").args(["-n", a.name(), "link", "show", &veth_a]));
    assert!(!out.status.success(), "{veth_a} survived");

    // Also when the test panics.
    let mut panicked = PathBuf::new();
    panic_message(|| {
        let ns = Netns::new(&common::unique("harness-p"));
        panicked = ns.path();
        panic!("test failure");
    });
    assert!(
        !panicked.exists(),
        "{} survived the panic",
        panicked.display()
    );
    assert!(path_a.exists());
}

#[test]
fn tmpfs_mount_is_size_limited_and_unmounted_on_drop() {
    if !common::privileged("harness: TmpfsMount guard") {
        return;
    }
    let tmpfs = TmpfsMount::new("64k");
    let path = tmpfs.path().to_owned();
    assert!(is_mounted(&path));
    assert!(tmpfs.available() <= 64 * 1024, "{}", tmpfs.available());

    let mut file = fs::File::create(path.join("filler")).expect("create filler");
    let mut written = 0usize;
    let err = loop {
        match file.write_all(&[0u8; 4096]) {
            Ok(()) => written += 4096,
            Err(e) => break e,
        }
        assert!(
            written <= 64 * 1024,
            "wrote {written} bytes into a 64k tmpfs"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
    assert_eq!(tmpfs.available(), 0);
    drop(file);

    drop(tmpfs);
    assert!(!is_mounted(&path), "{} still mounted", path.display());
    assert!(!path.exists(), "{} survived", path.display());
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

#[test]
fn container_guard_removes_its_container() {
    if !common::privileged("harness: Container guard") {
        return;
    }
    let images = common::ensure_images();
    let name = common::unique("sidespawn-harness");
    let exists = |name: &str| {
        common::output(common::podman().args(["container", "exists", name]))
            .status
            .success()
    };
    {
        let container = Container::run(
            &name,
            [
                "--network",
                "none",
                images.agent.as_str(),
                "sleep",
                "infinity",
            ],
        );
        assert!(exists(container.name()));
        let out = common::run(container.exec().args(["cat", "/etc/passwd"]));
        assert!(out.starts_with("root:x:0:0:"), "{out}");
    }
    assert!(!exists(&name), "{name} survived its guard");
}

#[test]
fn agent_image_runs_commands_inside_named_netns() {
    if !common::privileged("harness: agent image with ip netns exec") {
        return;
    }
    let images = common::ensure_images();
    let before = Netns::new(&format!("qdhcp-{}", common::uuid()));
    let agent = Container::run(
        &common::unique("sidespawn-harness-agent"),
        [
            "--privileged",
            "--pid",
            "host",
            "--network",
            "host",
            "-v",
            "/run/netns:/run/netns:shared",
            images.agent.as_str(),
            "sleep",
            "infinity",
        ],
    );
    // A namespace created after the agent started shows up in it too (shared propagation),
    // as Neutron's agents need.
    let after = Netns::new(&format!("qrouter-{}", common::uuid()));
    for ns in [&before, &after] {
        let link = common::run(agent.exec().args([
            "ip",
            "netns",
            "exec",
            ns.name(),
            "readlink",
            "/proc/self/ns/net",
        ]));
        assert_eq!(
            link.trim(),
            format!("net:[{}]", ns.inode()),
            "{}",
            ns.name()
        );
    }
    // The placeholders the wrapper is bind-mounted over exist, and do not run by themselves.
    for placeholder in [
        "/usr/sbin/dnsmasq",
        "/usr/sbin/haproxy",
        "/etc/neutron/kill_scripts/dnsmasq-kill",
        "/etc/neutron/kill_scripts/haproxy-kill",
    ] {
        common::run(agent.exec().args(["test", "-f", placeholder]));
        let out = common::output(agent.exec().arg(placeholder));
        assert!(!out.status.success(), "{placeholder} ran");
    }
}

#[test]
fn daemon_images_run_and_the_wrapper_image_has_nothing_else() {
    if !common::privileged("harness: dnsmasq, haproxy and wrapper-only images") {
        return;
    }
    let images = common::ensure_images();
    let version = common::run(common::podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        &images.dnsmasq,
        "/usr/sbin/dnsmasq",
        "--version",
    ]));
    assert!(version.starts_with("Dnsmasq version"), "{version}");
    let version = common::run(common::podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        &images.haproxy,
        "/usr/sbin/haproxy",
        "-v",
    ]));
    assert!(version.starts_with("HAProxy version"), "{version}");

    // No shell, no libc: only the wrapper.
    let name = common::unique("sidespawn-harness-only");
    let _guard = Container::new(&name);
    let mut sh = common::podman();
    sh.args([
        "run",
        "--rm",
        "--name",
        &name,
        "--network",
        "none",
        &images.wrapperonly,
        "/bin/sh",
        "-c",
        "true",
    ]);
    let out = common::output(&mut sh);
    assert!(!out.status.success(), "{}", common::explain(&sh, &out));
    let mount = ImageMount::new(&images.wrapperonly);
    let mut files = Vec::new();
    list_tree(&mount.path, &mount.path, &mut files);
    files.sort();
    assert_eq!(
        files,
        [
            "dev",
            "etc",
            "proc",
            "run",
            "sys",
            "tmp",
            "usr",
            "usr/sbin",
            "usr/sbin/dnsmasq"
        ]
    );
}

/// `podman image mount`, unmounted on drop.
struct ImageMount {
    image: String,
    path: PathBuf,
}

impl ImageMount {
    fn new(image: &str) -> ImageMount {
        let path = common::run(common::podman().args(["image", "mount", image]));
        ImageMount {
            image: image.to_owned(),
            path: PathBuf::from(path.trim()),
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        let _ = common::podman()
            .args(["image", "unmount", &self.image])
            .output();
    }
}

/// Every path under `dir`, relative to `root`, without following symlinks.
fn list_tree(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        let relative = path.strip_prefix(root).expect("under root");
        out.push(relative.to_string_lossy().into_owned());
        if fs::symlink_metadata(&path).expect("lstat").is_dir() {
            list_tree(root, &path, out);
        }
    }
}
