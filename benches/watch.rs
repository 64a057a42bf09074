//! How long a start request takes to become a running sidecar, through the
//! `sidespawn watch` daemon and through the `sidespawn@dnsmasq.path` unit
//! under a real systemd manager, beside a bare `podman run -d` of the same
//! container; and what the daemon costs while idle.
//!
//! `cargo bench --bench watch` (as root, with podman and iproute2) builds
//! the local test images, makes a network namespace and two separate
//! deployments (queue root, state directory, configuration): one served by
//! the daemon, one by the generated path and service units under
//! `systemd --user` (tests/systemd; test-only drop-in
//! `Environment=CONTAINERS_CONF=` as in the tests). Then, in rounds so that
//! load changes hit all three alike, it starts one new sidecar per method
//! per round: the daemon and the path unit get a real wrapper call in the
//! namespace, the bare run gets the same container's `podman run -d`; the
//! daemon and the path unit take turns going first.
//! Latency ends when dnsmasq has written its pid file — Neutron's own
//! "alive" test — and starts when the wrapper exited (for the bare run:
//! when podman was started). Each sidecar is removed before the next round.
//! `SIDESPAWN_BENCH_RUNS` sets the rounds (default 50).
//!
//! Death → running again: in the same rounds, once a sidecar runs, its
//! dnsmasq is killed with SIGKILL from the host and timed until a new
//! dnsmasq has written its pid file — through the daemon, and through
//! `sidespawn-restart.service` (the engine's events) beside the path unit.
//! Each sidecar is then stopped through the agent's kill script (an
//! intentional stop, which is never restarted).
//!
//! Idle cost: utime+stime of the daemon from `/proc/<pid>/stat` over 60 s
//! with nothing queued (`SIDESPAWN_BENCH_IDLE_SECS` to change).
//!
//! It is a report, not a test: it exits 0 whatever the numbers are and fails
//! only when it cannot measure. `cargo test --all-targets` also runs this
//! file; without `--bench` it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "support/report.rs"]
mod report;
#[path = "../tests/systemd/mod.rs"]
mod systemd;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, TempDir};
use systemd::Manager;

const DEFAULT_RUNS: usize = 50;
const DEFAULT_IDLE_SECS: u64 = 60;
/// Longest wait for one sidecar (far above any healthy value).
const TIMEOUT: Duration = Duration::from_secs(120);
const PATH_UNIT: &str = "sidespawn@dnsmasq.path";
/// What sidespawn may add to a bare `podman run -d`, in milliseconds.
const LATENCY_BUDGET_MS: f64 = 50.0;
const SERVICE: &str = "sidespawn@dnsmasq.service";
const RESTART_SERVICE: &str = "sidespawn-restart.service";

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("watch bench: not run; `cargo bench --bench watch` runs it");
        return ExitCode::SUCCESS;
    }
    let missing = common::missing_privileges();
    if !missing.is_empty() {
        println!("SKIPPED: the watch bench needs {}", missing.join(", "));
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watch bench: cannot measure: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One deployment: its own queue root, state and configuration.
struct Deployment {
    root: PathBuf,
    config: PathBuf,
    wrapper_config: PathBuf,
}

impl Deployment {
    fn new(dir: &Path, name: &str, image: &str, label: &str) -> Result<Deployment, Error> {
        let root = dir.join(name);
        std::fs::create_dir_all(&root)?;
        let data = dir.join("data");
        let config = root.join("config.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "queue_root": root.join("queue"),
                "state_dir": root.join("state"),
                "kinds": {"dnsmasq": {
                    "image": image,
                    "volumes": [format!("{}:{}", data.display(), data.display())],
                    "labels": {"test.sidespawn.run": label},
                    "stop_timeout_s": 2
                }}
            })
            .to_string(),
        )?;
        let wrapper_config = root.join("wrapper.json");
        std::fs::write(
            &wrapper_config,
            serde_json::json!({"queue_root": root.join("queue")}).to_string(),
        )?;
        Ok(Deployment {
            root,
            config,
            wrapper_config,
        })
    }

    fn acks(&self) -> usize {
        std::fs::read_dir(self.root.join("queue/dnsmasq/acks")).map_or(0, |d| d.count())
    }
}

/// The daemon under test, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(d: &Deployment) -> Result<Daemon, Error> {
    let sock_path = d.root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    let child = Command::new(env!("CARGO_BIN_EXE_sidespawn"))
        .arg("--config")
        .arg(&d.config)
        .args(["watch", "--interval", "3600"])
        .env("CONTAINERS_CONF", common::containers_conf())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.root.join("daemon.log"))?)
        .spawn()?;
    let daemon = Daemon(child);
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("no READY=1 from the daemon: {e}"))?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Ok(daemon);
        }
    }
}

/// Median, p99 (nearest rank) and extremes, in milliseconds.
fn stats(v: &mut [Duration]) -> (f64, f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = v.len();
    let median = if n % 2 == 1 {
        ms(v[n / 2])
    } else {
        (ms(v[n / 2 - 1]) + ms(v[n / 2])) / 2.0
    };
    let p99 = ms(v[(n * 99).div_ceil(100).saturating_sub(1)]);
    (median, p99, ms(v[0]), ms(v[n - 1]))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("unexpected /proc/pid/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok(f.get(11).ok_or("short stat")?.parse::<u64>()?
        + f.get(12).ok_or("short stat")?.parse::<u64>()?)
}

/// The pid in `pid_file` when it is a live dnsmasq of sidecar `tag` other
/// than `not` (Neutron's liveness check).
fn alive_pid(pid_file: &Path, tag: &str, not: Option<u32>) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (Some(pid) != not && String::from_utf8_lossy(&cmdline).contains(tag)).then_some(pid)
}

/// The round's dnsmasq pid, awaited: the pid file exists as soon as
/// dnsmasq creates it, a moment before the pid is written into it.
fn live_pid(pid_file: &Path, tag: &str, how: &str) -> Result<u32, Error> {
    let mut pid = None;
    wait_for(
        &format!("a live dnsmasq via {how} in {}", pid_file.display()),
        || {
            pid = alive_pid(pid_file, tag, None);
            pid.is_some()
        },
    )?;
    pid.ok_or_else(|| "no live dnsmasq".into())
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The local dnsmasq test image (tests/scripts/build-images.sh; no static
/// wrapper needed for it).
fn dnsmasq_image() -> Result<String, Error> {
    let out = Command::new(common::repo_root().join("tests/scripts/build-images.sh"))
        .env("CONTAINERS_CONF", common::containers_conf())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("build-images.sh: {}", out.status).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("dnsmasq=").map(str::to_owned))
        .ok_or_else(|| "build-images.sh printed no dnsmasq=".into())
}

fn remove(name: &str) {
    let _ = common::podman()
        .args(["rm", "-f", "-t", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn bench() -> Result<(), Error> {
    let runs = env_num("SIDESPAWN_BENCH_RUNS", DEFAULT_RUNS).max(1);
    let idle_secs = env_num("SIDESPAWN_BENCH_IDLE_SECS", DEFAULT_IDLE_SECS);
    let load_before = std::fs::read_to_string("/proc/loadavg")?;
    let images = dnsmasq_image()?;
    let label = common::unique("wbench");
    let dir = TempDir::new("sidespawn-wbench");
    std::fs::create_dir_all(dir.join("data"))?;
    let uuid = common::uuid();
    let ns = Netns::new(&format!("qdhcp-{uuid}"));
    let link = dir.join("dnsmasq");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sidespawn-wrapper"), &link)?;
    let watched = Deployment::new(dir.path(), "watch", &images, &label)?;
    let pathed = Deployment::new(dir.path(), "path", &images, &label)?;
    // Containers of this run go whatever happens (declared after the
    // manager and the daemon, so dropped before them).
    let manager = systemd::UserManager::start().map_err(|e| format!("needs {e}"))?;
    let cfg = sidespawn::host::config::HostConfig::load(&pathed.config, true)?;
    let files = sidespawn::host::units::generate(&cfg, Path::new(env!("CARGO_BIN_EXE_sidespawn")))?;
    manager.install(&files);
    for unit in ["sidespawn@.service", RESTART_SERVICE] {
        manager.drop_in(
            unit,
            "bench-podman",
            &format!(
                "[Service]\nEnvironment=CONTAINERS_CONF={}\n",
                common::containers_conf().display()
            ),
        );
    }
    std::fs::create_dir_all(pathed.root.join("queue/dnsmasq"))?;
    manager.systemctl_ok(&["enable", "--now", PATH_UNIT]);
    manager.systemctl_ok(&["enable", "--now", RESTART_SERVICE]);
    manager
        .wait_for(RESTART_SERVICE, "ActiveState", "active", TIMEOUT)
        .map_err(|e| e.to_string())?;
    let kill_link = dir.join("dnsmasq-kill");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sidespawn-wrapper"), &kill_link)?;
    let daemon = start_daemon(&watched)?;
    let _cleanup = Cleanup(label.clone());

    let mut bare = Vec::new();
    // The sync's own container listing, timed on its own: every sync asks
    // podman what runs before it acts.
    let list_args = sidespawn::host::runtime::call_args(&sidespawn::host::runtime::Call::List(
        cfg.instance.clone(),
    ));
    let mut floor = Vec::new();
    let mut via_watch = Vec::new();
    let mut via_path = Vec::new();
    let mut death_watch = Vec::new();
    let mut death_path = Vec::new();
    for i in 0..runs {
        // Bare podman: the same container as the sync would start.
        let tag = format!("dnsmasq-{}", common::uuid());
        let pid_file = dir.join(format!("data/{tag}.pid"));
        let name = format!("bench-bare-{tag}");
        let t0 = Instant::now();
        let st = common::podman()
            .args(["run", "-d", "--name", &name, "--label"])
            .arg(format!("test.sidespawn.run={label}"))
            .arg(format!("--network=ns:{}", ns.path().display()))
            .args(["--pid", "host", "--cgroupns", "host"])
            .arg(format!(
                "--volume={}:{}",
                dir.join("data").display(),
                dir.join("data").display()
            ))
            .args(["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"])
            .args(["--entrypoint", "dnsmasq", &images, "-k", "--no-hosts", ""])
            .args(["--port=0", "--conf-file=/dev/null"])
            .arg(format!("--pid-file={}", pid_file.display()))
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err(format!("podman run -d {name}: {st}").into());
        }
        wait_for("the bare container's dnsmasq runs", || pid_file.exists())?;
        let run = t0.elapsed();
        bare.push(run);
        let t1 = Instant::now();
        let st = common::podman()
            .args(&list_args)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err(format!("podman {list_args:?}: {st}").into());
        }
        floor.push(run + t1.elapsed());
        remove(&name);

        // Alternate which goes first, so that the cleanup still running
        // after the previous round's `podman rm` weighs on both alike.
        let mut order = [
            (&watched, &mut via_watch, &mut death_watch, "watch"),
            (&pathed, &mut via_path, &mut death_path, "path"),
        ];
        if i % 2 == 1 {
            order.reverse();
        }
        for (d, out, deaths, how) in order {
            let tag = format!("dnsmasq-{}", common::uuid());
            let pid_file = dir.join(format!("data/{tag}.pid"));
            let acks = d.acks();
            let st = ns
                .exec(&link)
                .args(["--no-hosts", "", "--port=0", "--conf-file=/dev/null"])
                .arg(format!("--pid-file={}", pid_file.display()))
                .env("SIDESPAWN_WRAPPER_CONFIG", &d.wrapper_config)
                .env("PROCESS_TAG", &tag)
                .stdin(Stdio::null())
                .status()?;
            let t0 = Instant::now();
            if !st.success() {
                return Err(format!("wrapper call ({how}): {st}").into());
            }
            wait_for(&format!("the sidecar via {how} runs"), || pid_file.exists())?;
            out.push(t0.elapsed());
            // Idle again before the next round: acknowledged, and the
            // oneshot service gone.
            wait_for(&format!("the {how} sync is acknowledged"), || {
                d.acks() > acks
            })?;
            if how == "path" {
                manager
                    .wait_for(SERVICE, "ActiveState", "inactive", TIMEOUT)
                    .map_err(|e| e.to_string())?;
            }
            // Death → running again.
            let pid = live_pid(&pid_file, &tag, how)?;
            let t0 = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            wait_for(&format!("the killed sidecar via {how} runs again"), || {
                alive_pid(&pid_file, &tag, Some(pid)).is_some()
            })?;
            deaths.push(t0.elapsed());
            // An intentional stop: the agent's kill script, which returns
            // once the host acknowledged it (and takes the acknowledgement).
            let pid = live_pid(&pid_file, &tag, how)?;
            // A shared machine can run out of inotify instances for a
            // moment (the script waits for its answer with one): try again;
            // "No such process" means an earlier try did stop it.
            let mut tries = 0;
            loop {
                let out = ns
                    .exec(&kill_link)
                    .args(["15", &pid.to_string()])
                    .env("SIDESPAWN_WRAPPER_CONFIG", &d.wrapper_config)
                    .stdin(Stdio::null())
                    .output()?;
                let said = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.status.success() || said.contains("No such process") {
                    break;
                }
                tries += 1;
                if tries == 10 {
                    return Err(format!("kill script ({how}): {}: {said}", out.status).into());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            if how == "path" {
                manager
                    .wait_for(SERVICE, "ActiveState", "inactive", TIMEOUT)
                    .map_err(|e| e.to_string())?;
            }
            remove(&sidespawn::host::plan::container_name(
                &cfg.instance,
                sidespawn::shared::kind::Kind::Dnsmasq,
                Some(&tag),
                None,
            ));
        }
        if (i + 1) % 10 == 0 {
            eprintln!("watch bench: {} of {runs} rounds", i + 1);
        }
    }

    // Idle: nothing queued, nothing to do.
    let pid = daemon.0.id();
    let ticks_per_s =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or("no CLK_TCK")? as f64;
    let c0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = (cpu_ticks(pid)? - c0) as f64 / ticks_per_s;
    let idle_wall = t0.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let rss = field("VmRSS:");
    let hwm_kib: u64 = field("VmHWM:")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let load_after = std::fs::read_to_string("/proc/loadavg")?;

    println!();
    println!("request → running dnsmasq (pid file written), {runs} rounds, interleaved");
    println!(
        "{:<48} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "path", "runs", "median", "p99", "min", "max"
    );
    for (name, v) in [
        ("bare `podman run -d` (podman start → pid)", &mut bare),
        ("sidespawn watch (wrapper exit → pid)", &mut via_watch),
        (
            "path unit, systemd --user (wrapper exit → pid)",
            &mut via_path,
        ),
    ] {
        let (med, p99, min, max) = stats(v);
        println!(
            "{name:<48} {:>6} {med:>7.0}ms {p99:>7.0}ms {min:>7.0}ms {max:>7.0}ms",
            v.len()
        );
    }
    println!();
    println!(
        "daemon idle: {:.3} s CPU (utime+stime) over {idle_wall:.0} s = {:.3} % of one CPU; VmRSS {rss}",
        idle_cpu,
        100.0 * idle_cpu / idle_wall
    );
    println!(
        "load average before: {}  after: {}",
        load_before.trim(),
        load_after.trim()
    );
    if runs < 100 {
        println!("(with fewer than 100 runs the p99 is the maximum)");
    }
    let mut t = report::Table::figures();
    t.section(format!(
        "Latency: one start request -> dnsmasq running (pid file written); {runs} interleaved rounds"
    ));
    let ms = |x: f64| report::fmt_dur(Duration::from_secs_f64(x / 1e3));
    let (bare_med, bare_p99, _, _) = stats(&mut bare);
    t.row([
        "bare podman run -d (baseline)".to_owned(),
        ms(bare_med),
        ms(bare_p99),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let (floor_med, floor_p99, _, _) = stats(&mut floor);
    t.row([
        "its podman ps + bare podman run -d (floor of a sync)".to_owned(),
        ms(floor_med),
        ms(floor_p99),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    for (name, v, rss) in [
        ("sidespawn watch", &mut via_watch, hwm_kib),
        ("sidespawn@dnsmasq.path unit", &mut via_path, 0),
    ] {
        let (med, p99, _, _) = stats(v);
        t.row([
            format!("{name}: wrapper exit -> running"),
            ms(med),
            ms(p99),
            report::fmt_kib(rss),
            ms(bare_med),
            format!("{:.2}× (+{:.0} ms)", med / bare_med, med - bare_med),
            format!("≤ podman + {LATENCY_BUDGET_MS} ms"),
            format!(
                "{} (+{:.0} ms over the floor)",
                report::verdict(med - bare_med <= LATENCY_BUDGET_MS),
                med - floor_med
            ),
        ]);
    }
    t.section(format!(
        "Death -> running again: dnsmasq SIGKILLed from the host, no agent asking; {runs} interleaved rounds"
    ));
    for (name, v) in [
        (
            "sidespawn watch: kill -9 -> running again",
            &mut death_watch,
        ),
        (
            "path unit + sidespawn-restart.service: kill -9 -> running again",
            &mut death_path,
        ),
    ] {
        let (med, p99, _, _) = stats(v);
        t.row([
            name.to_owned(),
            ms(med),
            ms(p99),
            "-".into(),
            "-".into(),
            "-".into(),
            "≤ 2 s".into(),
            report::verdict(med <= 2000.0),
        ]);
    }
    t.row([
        format!("sidespawn watch idle, {idle_wall:.0} s: CPU time"),
        format!("{idle_cpu:.3} s"),
        "-".into(),
        report::fmt_kib(hwm_kib),
        "-".into(),
        format!("{:.3} % of a CPU", 100.0 * idle_cpu / idle_wall),
        "-".into(),
        "-".into(),
    ]);
    println!();
    t.print();
    drop(daemon);
    drop(manager);
    Ok(())
}

/// Removes every container of this run, also when the bench fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = common::podman()
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=test.sidespawn.run={}", self.0))
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                remove(id);
            }
        }
    }
}
