//! The packages: `packaging/build-deb.sh` builds a .deb that installs on this machine with
//! `dpkg -i`, whose units `systemd-analyze verify` accepts, whose `sidespawn --version`, static
//! wrapper, man pages and completions work, and which `dpkg --purge` removes again; the RPM
//! spec builds with `rpmbuild` and `rpm -qlp` lists the same files.
//!
//! Root only (dpkg installs into the real /usr). The package is purged by a guard even when an
//! assertion fails; a sidespawn package that was installed before the test is never touched
//! (the test fails instead).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, find_in_path, output, skip};

const PACKAGE: &str = "sidespawn";

/// The files both packages must install (besides directories and the generated pages).
const FILES: &[&str] = &[
    "/usr/bin/sidespawn",
    "/usr/bin/sidespawn-wrapper",
    "/usr/lib/systemd/system/sidespawn@.path",
    "/usr/lib/systemd/system/sidespawn@.service",
    "/usr/lib/systemd/system/sidespawn-backstop.service",
    "/usr/lib/systemd/system/sidespawn-backstop.timer",
    "/usr/lib/systemd/system/sidespawn-watch.service",
    "/usr/lib/systemd/system/sidespawn-restart.service",
    "/usr/lib/tmpfiles.d/sidespawn.conf",
    "/usr/share/doc/sidespawn/README.md",
    "/usr/share/doc/sidespawn/README.wrapper.md",
    "/usr/share/doc/sidespawn/examples/config.json",
    "/usr/share/doc/sidespawn/examples/wrapper.json",
    "/usr/share/man/man1/sidespawn.1.gz",
    "/usr/share/man/man1/sidespawn-sync.1.gz",
    "/usr/share/man/man1/sidespawn-check.1.gz",
    "/usr/share/man/man1/sidespawn-wrapper.1.gz",
    "/usr/share/bash-completion/completions/sidespawn",
    "/usr/share/zsh/vendor-completions/_sidespawn",
    "/usr/share/fish/vendor_completions.d/sidespawn.fish",
];

/// The directories the package's tmpfiles.d snippet creates, as far up as the first that
/// existed before the test, so that the guard removes (if empty) only what the test made.
const CREATED_DIRS: &[&str] = &["/var/lib/neutron/sidespawn", "/var/lib/sidespawn"];

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// Purges the package when dropped (also after a failed assertion), then removes the
/// directories its installation created if they are still there and empty.
struct Installed {
    new_dirs: Vec<PathBuf>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let out = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        if let Ok(o) = &out
            && !o.status.success()
        {
            eprintln!(
                "dpkg --purge {PACKAGE}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        for d in &self.new_dirs {
            // Deepest first; only empty directories go (remove_dir refuses others).
            for sub in [
                "dnsmasq/acks",
                "haproxy/acks",
                "keepalived/acks",
                "radvd/acks",
            ] {
                let _ = fs::remove_dir(d.join(sub));
                let _ = fs::remove_dir(d.join(sub).parent().unwrap());
            }
            let _ = fs::remove_dir(d);
        }
    }
}

/// `path` and its ancestors that do not exist yet, deepest first.
fn missing_ancestry(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (a dynamic
/// loader it needs to run).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == PT_INTERP
    })
}

fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the .deb from the binaries of this test run into `out`; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let stdout = run_ok(
        Command::new(common::repo_root().join("packaging/build-deb.sh"))
            .arg(out)
            .env("SIDESPAWN_HOST_BIN", env!("CARGO_BIN_EXE_sidespawn"))
            .env("SIDESPAWN_WRAPPER_BIN", common::static_wrapper()),
    );
    let deb = PathBuf::from(stdout.trim());
    assert!(deb.is_file(), "build-deb.sh printed {stdout:?}");
    deb
}

#[test]
fn deb_installs_verifies_runs_and_purges() {
    const TEST: &str = "packages: the .deb installs, its units verify, it runs and purges";
    if !common::privileged_root(TEST) {
        return;
    }
    for tool in ["dpkg", "dpkg-deb", "systemd-analyze"] {
        if find_in_path(tool).is_none() {
            return skip(TEST, &format!("`{tool}` on PATH"));
        }
    }
    assert!(
        !installed(),
        "a {PACKAGE} package is already installed on this machine; the test does not touch it \
         (dpkg --purge {PACKAGE} first if it is a leftover)"
    );
    let tmp = TempDir::new("sidespawn-deb");
    let deb = build_deb(&tmp.path().join("out"));

    let new_dirs: Vec<PathBuf> = CREATED_DIRS
        .iter()
        .flat_map(|d| missing_ancestry(Path::new(d)))
        .collect();
    let guard = Installed { new_dirs };
    run_ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed(), "dpkg -i left {PACKAGE} not installed");
    for f in FILES {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }

    // The installed units as systemd reads them (template instances through their template);
    // verify exits 0 on warnings, so stderr must be empty.
    let unit_dir = Path::new("/usr/lib/systemd/system");
    let units = [
        "sidespawn@dnsmasq.path",
        "sidespawn@dnsmasq.service",
        "sidespawn-backstop.timer",
        "sidespawn-backstop.service",
        "sidespawn-watch.service",
        "sidespawn-restart.service",
    ];
    let out = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(units.iter().map(|u| unit_dir.join(u))),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    let service = fs::read_to_string(unit_dir.join("sidespawn@.service")).unwrap();
    assert!(
        service.contains(
            "\nExecStart=/usr/bin/sidespawn --config /etc/sidespawn/config.json sync --kind %I"
        ),
        "{service}"
    );
    // The postinst created the queues of the tmpfiles.d snippet.
    assert!(Path::new("/var/lib/neutron/sidespawn/dnsmasq/acks").is_dir());

    let version = run_ok(Command::new("/usr/bin/sidespawn").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("sidespawn {}", env!("CARGO_PKG_VERSION"))
    );
    let version = run_ok(Command::new("/usr/bin/sidespawn-wrapper").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("sidespawn-wrapper {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed wrapper is the static one: no program header asks for a dynamic loader.
    assert!(
        !has_interpreter(&fs::read("/usr/bin/sidespawn-wrapper").unwrap()),
        "the installed wrapper is dynamically linked"
    );
    // ...which the check can tell: the host tool is linked dynamically.
    assert!(has_interpreter(&fs::read("/usr/bin/sidespawn").unwrap()));
    // Man pages and completions are what the installed binary's clap definitions say.
    let page = fs::read("/usr/share/man/man1/sidespawn-check.1.gz").unwrap();
    assert_eq!(&page[..2], b"\x1f\x8b", "not gzip");
    let bash = fs::read_to_string("/usr/share/bash-completion/completions/sidespawn").unwrap();
    assert!(
        bash.contains("check") && bash.contains("--dry-run"),
        "{bash}"
    );

    // `sidespawn check` on the fresh install: the units are there but not enabled.
    let out = output(
        Command::new("/usr/bin/sidespawn")
            .args(["--config", "/usr/share/doc/sidespawn/examples/config.json"])
            .args(["check", "--json"]),
    );
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let units_finding = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "units")
        .expect("a units finding");
    assert_eq!(units_finding["status"], "warn", "{units_finding}");

    drop(guard);
    assert!(!installed(), "dpkg --purge left {PACKAGE} installed");
    assert!(!Path::new("/usr/bin/sidespawn").exists());
    assert!(!Path::new("/usr/lib/systemd/system/sidespawn@.service").exists());
}

#[test]
fn rpm_builds_and_lists_the_files_of_the_deb() {
    const TEST: &str = "packages: the RPM builds and `rpm -qlp` lists the package's files";
    for tool in ["rpmbuild", "rpm"] {
        if find_in_path(tool).is_none() {
            return skip(TEST, &format!("`{tool}` on PATH (apt-get install rpm)"));
        }
    }
    let tmp = TempDir::new("sidespawn-rpm");
    let stdout = run_ok(
        Command::new(common::repo_root().join("packaging/build-rpm.sh"))
            .arg(tmp.join("out"))
            .env("SIDESPAWN_HOST_BIN", env!("CARGO_BIN_EXE_sidespawn"))
            .env("SIDESPAWN_WRAPPER_BIN", common::static_wrapper()),
    );
    let rpm = PathBuf::from(stdout.trim());
    assert!(rpm.is_file(), "build-rpm.sh printed {stdout:?}");
    let listed = run_ok(Command::new("rpm").arg("-qlp").arg(&rpm));
    let listed: Vec<&str> = listed.lines().collect();
    for f in FILES {
        assert!(
            listed.contains(f),
            "{f} not in the RPM:\n{}",
            listed.join("\n")
        );
    }
    assert!(
        listed.iter().all(|f| f.starts_with("/usr/")),
        "files outside /usr: {listed:?}"
    );
    let info = run_ok(Command::new("rpm").arg("-qip").arg(&rpm));
    assert!(
        info.contains(&format!("Version     : {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    let requires = run_ok(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(
        requires.lines().any(|l| l.trim() == "podman >= 4"),
        "{requires}"
    );
}
