//! `sidespawn check`: inspects the host and reports, for each thing the
//! sync depends on, whether it is right and how to fix it when it is not.
//!
//! Every check yields one or more [`Finding`]s and never stops the others:
//! an operator wants the whole list at once. Status `error` means a sync
//! will fail or be unsafe (the command exits 1), `warn` that it works but
//! something deserves attention, `ok` that it is as it should be.
//!
//! Only reads: nothing is created, fixed or started. The engine is asked
//! through the runtime seam (its version, its `info`, whether each image is
//! present), with the configuration's engine timeout; everything else is
//! read from the filesystem, below `root` for the units and SELinux (so a
//! test or an offline image can be checked).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::config::{Engine, HostConfig};
use crate::host::runtime::{Runtime, RuntimeError};
use crate::host::units;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Error,
}

/// One finding: what was checked, how it came out, what was seen and, when
/// not ok, the command or change that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn error(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Error,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot write the findings: {0}")]
    Output(#[source] std::io::Error),
}

/// `sidespawn check`: prints the findings (a table, or a JSON array with
/// `json`) and returns whether none is an error.
pub fn run(cfg: &HostConfig, json: bool, root: &Path) -> Result<bool, CheckError> {
    let findings = inspect(cfg, root);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &findings)
            .map_err(|e| CheckError::Output(e.into()))?;
        writeln!(out).map_err(CheckError::Output)?;
    } else {
        out.write_all(render(&findings).as_bytes())
            .map_err(CheckError::Output)?;
    }
    Ok(findings.iter().all(|f| f.status != Status::Error))
}

/// The human-readable table: one line per finding, its fix indented below.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    let count = |st| findings.iter().filter(|f| f.status == st).count();
    for f in findings {
        let st = match f.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Error => "error",
        };
        s.push_str(&format!("{st:<6} {}: {}\n", f.check, f.detail));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("       fix: {fix}\n"));
        }
    }
    s.push_str(&format!(
        "{} ok, {} warnings, {} errors\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Error)
    ));
    s
}

/// Every check, in the order an operator would fix them.
pub fn inspect(cfg: &HostConfig, root: &Path) -> Vec<Finding> {
    let mut f = Vec::new();
    let rt = crate::host::runtime::for_config(cfg);
    let engine_ok = engine(cfg, rt.as_ref(), &mut f);
    if engine_ok {
        engine_info(cfg, rt.as_ref(), &mut f);
    }
    f.push(netns(cfg));
    f.extend(inotify(cfg, root));
    f.extend(queue_root(cfg));
    f.push(state_dir(cfg));
    if engine_ok {
        images(cfg, rt.as_ref(), &mut f);
    }
    f.extend(unit_files(cfg, root));
    f.extend(selinux(cfg, root));
    f
}

/// A command's exit code and stdout, or why it did not run; killed after
/// `timeout` (a hung podman must not hang the check).
fn run_cmd(program: &Path, args: &[&str], timeout: Duration) -> Result<(i32, String), String> {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("INVOCATION_ID")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} {} did not finish within {timeout:?}",
                    program.display(),
                    args.join(" ")
                ));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    let out = reader.join().unwrap_or_default();
    Ok((status.code().unwrap_or(-1), out))
}

const ENGINE: &str = "engine";

fn engine(cfg: &HostConfig, rt: &dyn Runtime, f: &mut Vec<Finding>) -> bool {
    let e = cfg.engine.as_str();
    let fix = format!(
        "install {e} (apt-get install {pkg} / dnf install {pkg}), or set \"engine_program\" in {} to the engine's path",
        cfg.path.display(),
        pkg = match cfg.engine {
            Engine::Podman => "podman",
            Engine::Docker => "docker.io",
        }
    );
    match rt.version() {
        Ok(out) => {
            f.push(Finding::ok(
                ENGINE,
                format!("{} ({})", out.trim(), cfg.engine_program.display()),
            ));
            true
        }
        Err(err) => {
            f.push(Finding::error(ENGINE, err.to_string(), fix));
            false
        }
    }
}

/// The cgroup manager and the OCI runtime, from `podman info` (`docker
/// info`).
fn engine_info(cfg: &HostConfig, rt: &dyn Runtime, f: &mut Vec<Finding>) {
    let e = cfg.engine.as_str();
    let h = match rt.info() {
        Ok(i) => i,
        Err(err) => {
            f.push(Finding::error(
                "cgroup manager",
                err.to_string(),
                format!("run `{e} info` and fix what it reports"),
            ));
            return;
        }
    };
    if cfg.engine == Engine::Docker {
        // Docker's containers are children of containerd's shims, never of
        // the sync: whatever the cgroup driver, they outlive the oneshot.
        f.push(Finding::ok(
            "cgroup manager",
            format!(
                "{} (cgroups {}): sidecars run under containerd's shims, outside the sync service's cgroup",
                h.cgroup_manager, h.cgroup_version
            ),
        ));
    } else {
        f.push(match h.cgroup_manager.as_str() {
            "systemd" => Finding::ok(
                "cgroup manager",
                format!(
                    "systemd (cgroups {}): each sidecar's conmon gets a scope of its own and outlives the sync",
                    h.cgroup_version
                ),
            ),
            "cgroupfs" => Finding::warn(
                "cgroup manager",
                format!(
                    "cgroupfs (cgroups {}): sidecars stay in the cgroup of the sync service that started them; KillMode=process keeps them alive, but stopping that cgroup by hand kills them",
                    h.cgroup_version
                ),
                "set cgroup_manager = \"systemd\" in [engine] of /etc/containers/containers.conf (hosts with systemd as PID 1)",
            ),
            other => Finding::warn(
                "cgroup manager",
                format!("`podman info` names no known cgroup manager ({other:?})"),
                "run `podman info` and check host.cgroupManager",
            ),
        });
    }
    let Some((rt_name, rt_path)) = &h.oci_runtime else {
        f.push(Finding::error(
            "OCI runtime",
            format!("`{e} info` names no OCI runtime"),
            "install runc or crun",
        ));
        return;
    };
    struct Oci<'a> {
        name: &'a str,
        path: &'a str,
    }
    let rt = Oci {
        name: rt_name,
        path: rt_path,
    };
    let fix = format!(
        "install or repair {} (apt-get install {n} / dnf install {n}), or select another in [engine] runtime of containers.conf",
        rt.name,
        n = rt.name
    );
    f.push(
        match run_cmd(Path::new(&rt.path), &["--version"], cfg.engine_timeout) {
            Ok((0, out)) => Finding::ok(
                "OCI runtime",
                format!(
                    "{} ({}): {}",
                    rt.name,
                    rt.path,
                    out.lines().next().unwrap_or("").trim()
                ),
            ),
            Ok((code, _)) => Finding::error(
                "OCI runtime",
                format!("{} --version exited {code}", rt.path),
                fix,
            ),
            Err(e) => Finding::error("OCI runtime", e, fix),
        },
    );
}

/// The propagation of the mount at `dir`, from /proc/self/mountinfo:
/// `None` when `dir` is not a mount point, else whether it is shared.
/// Inotify instances every process of one user may hold, across the host.
const INOTIFY_INSTANCES: &str = "proc/sys/fs/inotify/max_user_instances";
/// Instances beside the dnsmasq sidecars: systemd's path units, `sidespawn
/// watch`, podman's event followers, the host's own services.
const INOTIFY_HEADROOM: u64 = 128;

/// Every dnsmasq serving DHCP holds an inotify instance as root, so the
/// kernel's per-user limit (128 by default) caps how many can run: the next
/// one dies at start with "failed to create inotify: Too many open files".
/// Checked against the dnsmasq profile's `max_sidecars`; nothing to say
/// without a dnsmasq profile or where the limit cannot be read (below a
/// test root).
fn inotify(cfg: &HostConfig, root: &Path) -> Option<Finding> {
    const C: &str = "inotify instances";
    let prof = cfg.kinds.get(&crate::shared::kind::Kind::Dnsmasq)?;
    let path = root.join(INOTIFY_INSTANCES);
    let have: u64 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
    let need = prof.max_sidecars as u64 + INOTIFY_HEADROOM;
    Some(if have >= need {
        Finding::ok(
            C,
            format!(
                "fs.inotify.max_user_instances is {have}, enough for the dnsmasq profile's max_sidecars ({})",
                prof.max_sidecars
            ),
        )
    } else {
        Finding::warn(
            C,
            format!(
                "fs.inotify.max_user_instances is {have}: every DHCP dnsmasq holds one, so past about {} sidecars dnsmasq fails to start (\"failed to create inotify: Too many open files\"); the dnsmasq profile allows {}",
                have.saturating_sub(INOTIFY_HEADROOM),
                prof.max_sidecars
            ),
            format!(
                "sysctl -w fs.inotify.max_user_instances={need}, and keep it with a line fs.inotify.max_user_instances = {need} in /etc/sysctl.d/90-sidespawn.conf"
            ),
        )
    })
}

fn mount_shared(dir: &Path) -> Option<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = dir.to_str()?;
    // The last mount on a point is the one seen.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&dir)).then(|| {
            fields[6..]
                .iter()
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"))
        })
    })
}

fn netns(cfg: &HostConfig) -> Finding {
    const C: &str = "netns directory";
    let d = &cfg.netns_dir;
    if !d.is_dir() {
        return Finding::warn(
            C,
            format!("{} does not exist yet", d.display()),
            "none needed: the agent's first `ip netns add` creates it as a shared mount; agent containers must mount it with :shared",
        );
    }
    match mount_shared(d) {
        Some(true) => Finding::ok(C, format!("{} is a shared mount", d.display())),
        Some(false) => Finding::error(
            C,
            format!(
                "{} is a mount without shared propagation: namespaces the agent creates do not appear on the host",
                d.display()
            ),
            format!("mount --make-shared {}", d.display()),
        ),
        None => Finding::warn(
            C,
            format!("{} is not a mount point yet", d.display()),
            format!(
                "none needed if `ip netns add` runs first (it makes it one); else: mount --bind {d} {d} && mount --make-shared {d}",
                d = d.display()
            ),
        ),
    }
}

/// Why `meta` (of `path`) lets someone other than root replace or change
/// what is below it, or `None`.
fn not_root_only(path: &Path, meta: &std::fs::Metadata, is_leaf: bool) -> Option<(String, String)> {
    let p = path.display();
    if meta.uid() != 0 {
        return Some((
            format!("{p} is owned by uid {}, not root", meta.uid()),
            format!("chown root:root {p}"),
        ));
    }
    let mode = meta.mode();
    // A sticky directory (/tmp) lets nobody else rename or remove root's entries.
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && (is_leaf || !sticky) {
        let who = if mode & 0o002 != 0 { "world" } else { "group" };
        return Some((
            format!("{p} is {who}-writable (mode {:04o})", mode & 0o7777),
            format!("chmod go-w {p}"),
        ));
    }
    None
}

fn queue_root(cfg: &HostConfig) -> Vec<Finding> {
    const C: &str = "queue root";
    let q = &cfg.queue_root;
    let meta = match std::fs::symlink_metadata(q) {
        Ok(m) => m,
        Err(e) => {
            return vec![Finding::error(
                C,
                format!("{}: {e}", q.display()),
                "systemd-tmpfiles --create /etc/tmpfiles.d/sidespawn.conf (after `sidespawn units install`), or the package's /usr/lib/tmpfiles.d/sidespawn.conf",
            )];
        }
    };
    let mut out = Vec::new();
    // Every ancestor: a symlink or a directory someone else may write lets
    // an agent (or anyone) swap the queues the host trusts.
    let mut ancestors: Vec<&Path> = q.ancestors().skip(1).collect();
    ancestors.reverse();
    for a in ancestors.iter().chain(std::iter::once(&q.as_path())) {
        let is_leaf = *a == q.as_path();
        let Ok(m) = std::fs::symlink_metadata(a) else {
            continue;
        };
        if m.file_type().is_symlink() {
            out.push(Finding::error(
                C,
                format!(
                    "{} is under the symlink {}: whoever can change the link can redirect the queues",
                    q.display(),
                    a.display()
                ),
                format!(
                    "set queue_root in {} to the real path ({})",
                    cfg.path.display(),
                    std::fs::canonicalize(q)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "resolve it with readlink -f".into())
                ),
            ));
            return out;
        }
        if let Some((detail, fix)) = not_root_only(a, &m, is_leaf) {
            out.push(Finding::error(C, detail, fix));
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            C,
            format!(
                "{} owned by root, mode {:04o}, no symlink or writable directory above it",
                q.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    out
}

fn state_dir(cfg: &HostConfig) -> Finding {
    const C: &str = "state directory";
    let s = &cfg.state_dir;
    let meta = match std::fs::symlink_metadata(s) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::warn(
                C,
                format!("{} does not exist yet", s.display()),
                "none needed: the first sync creates it (mode 0700); or systemd-tmpfiles --create",
            );
        }
        Err(e) => {
            return Finding::error(
                C,
                format!("{}: {e}", s.display()),
                "check the path and its parents",
            );
        }
    };
    if meta.uid() != 0 {
        return Finding::error(
            C,
            format!("{} is owned by uid {}, not root", s.display(), meta.uid()),
            format!("chown root:root {}", s.display()),
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Finding::error(
            C,
            format!(
                "{} has mode {mode:04o}: others can read the host's journal of claimed requests",
                s.display()
            ),
            format!("chmod 0700 {}", s.display()),
        );
    }
    Finding::ok(C, format!("{} root-only (mode {mode:04o})", s.display()))
}

fn images(cfg: &HostConfig, rt: &dyn Runtime, f: &mut Vec<Finding>) {
    let kinds = cfg.enabled_kinds();
    if kinds.is_empty() {
        f.push(Finding::warn(
            "images",
            format!("no kind is configured in {}", cfg.path.display()),
            "add kinds.<kind>.image for each kind this host serves (README, \"Host configuration\")",
        ));
    }
    let e = cfg.engine.as_str();
    for kind in kinds {
        let c = format!("image {kind}");
        let Some(image) = cfg.kinds.get(&kind).and_then(|p| p.image.clone()) else {
            f.push(Finding::error(
                c,
                "no image configured",
                format!("set kinds.{kind}.image in {}", cfg.path.display()),
            ));
            continue;
        };
        f.push(match rt.ensure_image(&image, false) {
            Ok(()) => Finding::ok(c, format!("{image} present")),
            Err(RuntimeError::NoSuchImage(_)) => Finding::error(
                c,
                format!("{image} is not in {e}'s storage: sidecars cannot start"),
                format!("{e} pull {image} (or build and tag it locally)"),
            ),
            Err(err) => Finding::error(
                c,
                err.to_string(),
                format!("run `{e} images` and fix what it reports"),
            ),
        });
    }
}

/// Where installed units are looked for, below the root: the
/// administrator's (`sidespawn units install`) before the package's.
const UNIT_DIRS: [&str; 3] = [
    units::UNIT_DIR,
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

fn unit_files(cfg: &HostConfig, root: &Path) -> Vec<Finding> {
    const C: &str = "units";
    let find = |name: &str| -> Option<PathBuf> {
        UNIT_DIRS
            .iter()
            .map(|d| root.join(d).join(name))
            .find(|p| p.is_file())
    };
    let wanted = |target: &str, name: &str| {
        root.join(units::UNIT_DIR)
            .join(format!("{target}.wants"))
            .join(name)
            .exists()
    };
    let names = [
        "sidespawn@.path",
        "sidespawn@.service",
        "sidespawn-backstop.service",
        units::BACKSTOP_TIMER,
    ];
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find(n).is_none())
        .collect();
    if !missing.is_empty() {
        return vec![Finding::error(
            C,
            format!("not installed: {}", missing.join(", ")),
            "install the sidespawn package, or run `sidespawn units install`",
        )];
    }
    let mut out = Vec::new();
    // The service runs whatever binary its ExecStart= names: a hand install
    // removed, or units generated by a binary since moved, fail every sync.
    if let Some(service) = find("sidespawn@.service")
        && let Some(bin) = exec_start_program(&service)
    {
        let on_root = root.join(bin.strip_prefix("/").unwrap_or(&bin));
        let runs = std::fs::metadata(&on_root).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
        if !runs {
            out.push(Finding::error(
                C,
                format!(
                    "{} runs {}, which is not an executable file",
                    service.display(),
                    bin.display()
                ),
                "run `sidespawn units install` with the binary to use (or reinstall the package)",
            ));
        }
    }
    let watch = wanted("multi-user.target", "sidespawn-watch.service");
    let mut not_enabled: Vec<String> = Vec::new();
    if !watch {
        for kind in cfg.enabled_kinds() {
            let unit = units::path_unit(kind);
            if !wanted("paths.target", &unit) {
                not_enabled.push(unit);
            }
        }
    }
    if !wanted("timers.target", units::BACKSTOP_TIMER) {
        not_enabled.push(units::BACKSTOP_TIMER.to_owned());
    }
    // Beside the path units, the follower of the engine's events; the
    // watch daemon follows them itself.
    if !watch && !wanted("multi-user.target", units::RESTART_SERVICE) {
        not_enabled.push(units::RESTART_SERVICE.to_owned());
    }
    if not_enabled.is_empty() {
        out.push(Finding::ok(
            C,
            if watch {
                "installed; sidespawn-watch.service and the backstop timer enabled".to_owned()
            } else {
                "installed; the path units of every enabled kind, the backstop timer and sidespawn-restart.service enabled"
                    .to_owned()
            },
        ));
    } else {
        out.push(Finding::warn(
            C,
            format!(
                "installed but not enabled: {}: queued requests or dead sidecars wait",
                not_enabled.join(", ")
            ),
            format!("systemctl enable --now {}", not_enabled.join(" ")),
        ));
    }
    out
}

/// The program of a unit's `ExecStart=` line: its first word, with the
/// quoting and `%%` escapes [`units`] writes undone.
fn exec_start_program(unit: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(unit).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))?
        .trim_start_matches(['-', '@', ':', '+', '!']);
    Some(PathBuf::from(first_word(value).replace("%%", "%")))
}

/// The first word of a systemd command line: up to a space, or a
/// double-quoted string with backslash escapes.
fn first_word(value: &str) -> String {
    let Some(rest) = value.strip_prefix('"') else {
        return value.split_whitespace().next().unwrap_or("").to_owned();
    };
    let mut word = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => word.extend(chars.next()),
            c => word.push(c),
        }
    }
    word
}

fn selinux(cfg: &HostConfig, root: &Path) -> Vec<Finding> {
    const C: &str = "SELinux";
    let enforce = root.join("sys/fs/selinux/enforce");
    let mode = match std::fs::read_to_string(&enforce) {
        Err(_) => return vec![Finding::ok(C, "not enabled")],
        Ok(s) if s.trim() == "1" => "enforcing",
        Ok(_) => {
            return vec![Finding::ok(
                C,
                "permissive: nothing is denied (labels are checked only when enforcing)",
            )];
        }
    };
    let mut out = Vec::new();
    // Agent containers write the queues: the shared directory needs a
    // label containers may write, and it must survive a relabel.
    {
        let dir = &cfg.queue_root;
        let label = run_cmd(
            Path::new("stat"),
            &["-c", "%C", &dir.to_string_lossy()],
            Duration::from_secs(5),
        )
        .map(|(_, s)| s.trim().to_owned())
        .unwrap_or_default();
        if label.contains(":container_file_t:") {
            out.push(Finding::ok(
                C,
                format!("{mode}; {} labelled {label}", dir.display()),
            ));
        } else {
            out.push(Finding::error(
                C,
                format!(
                    "{mode}; {} is labelled {label:?}: agent containers cannot queue requests",
                    dir.display()
                ),
                format!(
                    "semanage fcontext -a -t container_file_t '{d}(/.*)?' && restorecon -Rv {d} (never :Z on the mount)",
                    d = dir.display()
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_each_fix_and_counts() {
        let f = vec![
            Finding::ok("engine", "podman version 4.3.1"),
            Finding::error("queue root", "/q is group-writable", "chmod go-w /q"),
        ];
        let s = render(&f);
        assert!(s.contains("ok     engine: podman version 4.3.1\n"), "{s}");
        assert!(s.contains("error  queue root: /q is group-writable\n       fix: chmod go-w /q\n"));
        assert!(s.ends_with("1 ok, 0 warnings, 1 errors\n"));
    }

    #[test]
    fn exec_start_words() {
        assert_eq!(
            first_word(r#""/opt/side spawn/bin $1 \"x\"/sidespawn" --config "/etc/c.json" sync"#),
            r#"/opt/side spawn/bin $1 "x"/sidespawn"#
        );
        assert_eq!(
            first_word("/usr/bin/sidespawn --config /etc/c.json"),
            "/usr/bin/sidespawn"
        );
    }

    #[test]
    fn json_fields() {
        let v = serde_json::to_value(Finding::warn("a", "b", "c")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"check": "a", "status": "warn", "detail": "b", "fix": "c"})
        );
    }
}
