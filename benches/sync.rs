//! What a host sync costs: `cargo bench --bench sync`.
//!
//! Prints one table: for each figure the median (and p99 for latencies) of
//! several runs, a baseline measured in the same run, their ratio, the
//! target and PASS/MISS; then the scaling table of part 2 and notes with
//! the breakdown of where the time went.
//!
//! 1. **Empty queue.** The sync runs on every trigger and from a timer, so
//!    the common case is "nothing to do". Measured in-process (`sync::run`
//!    with the call-recording `FakeRuntime`) and through the release binary
//!    with a podman shim that logs its calls; both must make no podman
//!    call. The floor is an exec of `/bin/true`; `strace -c` (when
//!    installed) counts the fsyncs that make up most of the rest.
//! 2. **Fold and plan of a large backlog** (10,000 requests: 1,000 sidecars
//!    asked for 10 times each, with changed arguments, reloads, stops,
//!    leftovers and orphans mixed in) against 1,000 existing containers, and
//!    the full in-process sync of that backlog (claim, journal fsync, plan,
//!    fake podman, 10,000 acknowledgements). Each run is a fresh child
//!    process (this binary re-run with [`CHILD_FLAG`]) so its peak RSS can
//!    be read from `wait4`; 1k/10k/100k requests show whether the cost per
//!    request stays flat. Floors: a bare key→request fold, and the bare I/O
//!    of a durable claim plus one acknowledgement file per request.
//! 3. **A burst through `sidespawn watch`.** 200 start requests from 20
//!    concurrent callers (the real wrapper inside 200 real named
//!    namespaces), from the first call until all 200 are acknowledged and
//!    running, against the same 200 `podman run -d` through `xargs -P` at
//!    each parallelism of `SIDESPAWN_BENCH_XARGS_P`; each repeat pairs the
//!    burst with the best of them. The daemon runs with `-v`; its debug log
//!    gives the breakdown printed under the table.
//! 4. **Steady state.** 500 sidecars running: `sync --full` with nothing to
//!    change, and a sync of one repeated start request, each against the
//!    one `podman ps` it makes (podman calls counted by a logging shim).
//! 5. **Upgrade gap.** 10 running sidecars moved to another image by
//!    `sidespawn upgrade --max-parallel 1`: per sidecar, the time from its
//!    old dnsmasq's end to the new one running in the namespace, against
//!    the same replacement by hand (`podman stop`, `rm`, `run -d`).
//!
//! 6. **A busy node.** 100 and then 1,000 running dnsmasq sidecars, one per
//!    namespace, in a podman storage of the part's own: the burst that
//!    starts them all through `sidespawn watch` against the best `xargs -P`
//!    of the same argv; `sync --full` with nothing to change; an agent
//!    restart re-requesting every sidecar unchanged (until all are
//!    acknowledged; one `podman ps`, no run); one new request among them
//!    against a bare `podman run -d`; sidespawn's peak RSS in each, and how
//!    each figure grows from the smallest size to the largest (see
//!    `support/scale.rs`).
//!
//! It is a report, never a test: it exits 0 whatever the numbers are, 1
//! only when something could not be measured (a sync that fails or leaves a
//! sidecar not running counts as that, so a broken sync can never look
//! fast), 130 when interrupted. Without root, podman or `ip`, parts 3-5
//! print `SKIPPED`; without root the in-process syncs are skipped too (the claim
//! insists on root-owned queue and state directories). Everything it
//! creates is removed, also after a panic or a signal (see `support/host.rs`).
//!
//! Environment: `SIDESPAWN_BENCH_PARTS` (default `1,2,3,4,5,6`),
//! `SIDESPAWN_BENCH_EMPTY_RUNS` (300), `SIDESPAWN_BENCH_FOLD_RUNS` (5),
//! `SIDESPAWN_BENCH_SIZES` (`1000,10000,100000`), `SIDESPAWN_BENCH_RUNS`
//! (repeats of part 3, 3), `SIDESPAWN_BENCH_SIDECARS` (200),
//! `SIDESPAWN_BENCH_CALLERS` (20), `SIDESPAWN_BENCH_XARGS_P` (`4,8,16`),
//! `SIDESPAWN_BENCH_PARALLELISM` (the sync's; default: the product default here),
//! `SIDESPAWN_BENCH_STEADY` (500), `SIDESPAWN_BENCH_STEADY_RUNS` (20),
//! `SIDESPAWN_BENCH_UPGRADE_SIDECARS` (10), `SIDESPAWN_BENCH_SCALE` (sizes of part 6,
//! `100,1000`), `SIDESPAWN_BENCH_SCALE_RUNS` (5), `SIDESPAWN_BENCH_SCALE_SINGLES` (single new
//! requests per size, interleaved with bare runs; 3 × the runs), `SIDESPAWN_BENCH_SCALE_XARGS_P`
//! (`4,8,16`), `SIDESPAWN_BENCH_IMAGE` (skip building
//! the test images and use this one), `CONTAINERS_CONF` (default: the
//! test-only `tests/scripts/containers.conf`), `SIDESPAWN_BENCH_FIGURES`
//! (a file to append the tables to, for `tests/bench.sh`).
//!
//! The machine's load average is printed at the start, before each repeat
//! of part 3 and at the end: on a shared machine it moves these figures
//! more than anything in sidespawn does.

#[path = "support/backlog.rs"]
mod backlog;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/host.rs"]
mod host;
#[path = "support/real_podman.rs"]
mod real_podman;
#[path = "support/report.rs"]
mod report;
#[path = "support/scale.rs"]
mod scale;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use sidespawn::host::config::HostConfig;
use sidespawn::host::namespaces::FakeNamespaces;
use sidespawn::host::runtime::{Call, FakeRuntime, Podman, Runtime};
use sidespawn::host::sync::{self, Summary, SyncOptions};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;

use host::{LabelGuard, NetnsSet, TempDir};
use real_podman::{
    SyncHost, SyncRun, check_running, dnsmasq_image, profile_notes, profile_sync, random_uuid,
    unix_now, without_generation, xargs,
};
use report::{Table, fmt_dur, fmt_kib, median, percentile, ratio, verdict};

/// argv\[1\] that turns this binary into one measured phase of part 2.
const CHILD_FLAG: &str = "--sidespawn-sync-child";
/// Untimed runs before every latency series: page cache, dentries and the
/// allocator are warm for every contender alike.
const WARMUP: usize = 10;
/// Fewer samples make the p99 little more than the maximum.
const MIN_LATENCY_RUNS: usize = 200;

/// Targets from the design.
const EMPTY_TARGET: Duration = Duration::from_millis(3);
const PODMAN_TARGET_RATIO: f64 = 1.15;
/// Peak RSS of the fold and plan of 10,000 requests (20 MB).
const PLAN_RSS_TARGET_KB: u64 = 20_000;
/// "Linear": from the second-largest size to the largest (10×), the cost per
/// request may grow at most this much more than the floor's does (a
/// quadratic step would grow 10×).
const LINEAR_TOLERANCE: f64 = 2.0;

/// Label key put on everything part 3 starts, so cleanup finds exactly it.
const RUN_LABEL_KEY: &str = "bench.sidespawn.run";
/// An image name for parts 1-2, whose runtimes never start anything.
const UNUSED_IMAGE: &str = "localhost/sidespawn-bench-unused:none";
/// A podman that must never run (parts 1-2 use the fake runtime in-process).
const NO_PODMAN: &str = "/nonexistent/sidespawn-bench/podman";

/// What the real sidecars of part 3 run: a dnsmasq that serves nothing and
/// idles, the cheapest long-running process the test images have. The
/// empty `--pid-file=` turns the pid file off: the image has no
/// `/var/run`, and dnsmasq exits (status 3) when it cannot write one.
const SIDECAR_ARGS: &[&str] = &[
    "--no-hosts",
    "--port=0",
    "--conf-file=/dev/null",
    "--pid-file=",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD_FLAG) {
        return backlog::child::main(&args[2..]);
    }
    // `cargo test --all-targets` runs bench binaries too, without `--bench`:
    // eleven minutes of benchmark are no test, so skip.
    if !args.iter().any(|a| a == "--bench") {
        println!("sync bench: not run; `cargo bench --bench sync` runs it");
        return ExitCode::SUCCESS;
    }
    host::install_cleanup_handlers();

    let parts = std::env::var("SIDESPAWN_BENCH_PARTS").unwrap_or_else(|_| "1,2,3,4,5,6".into());
    let want = |p: &str| parts.split(',').any(|x| x.trim() == p);
    println!(
        "sidespawn sync benchmark — {} CPUs, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        host::loadavg()
    );

    let mut table = Table::figures();
    let mut extra_tables = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut failure = None;
    type Part = fn(&mut Table, &mut Vec<String>) -> Result<Option<Table>, String>;
    let all: [(&str, Part); 6] = [
        ("1", part1),
        ("2", part2),
        ("3", part3),
        ("4", fleet::part4),
        ("5", fleet::part5),
        ("6", scale::part6),
    ];
    for (name, part) in all {
        if !want(name) {
            continue;
        }
        match part(&mut table, &mut notes) {
            Ok(extra) => extra_tables.extend(extra),
            Err(e) => {
                failure = Some(format!("part {name} could not be measured: {e}"));
                break;
            }
        }
    }
    // Before printing: nothing of ours should outlive the measurements.
    host::cleanup_everything();

    println!();
    table.print();
    for extra in &extra_tables {
        println!();
        extra.print();
    }
    if !notes.is_empty() {
        println!();
        for n in &notes {
            println!("{n}");
        }
    }
    println!("\nload average at end {}", host::loadavg());
    match failure {
        Some(_) if host::was_interrupted() => {
            eprintln!("sync bench: interrupted; everything it created is removed");
            ExitCode::from(130)
        }
        Some(e) => {
            eprintln!("sync bench: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The sync's parallelism (`SIDESPAWN_BENCH_PARALLELISM`, default the
/// product's default here) and the `xargs -P` baselines to measure beside
/// it (comma-separated in `xargs_var`, default 4, 8 and 16; the sync's own
/// when none is valid).
fn parallelisms(xargs_var: &str) -> (usize, Vec<usize>) {
    let parallelism = env_usize(
        "SIDESPAWN_BENCH_PARALLELISM",
        sidespawn::host::config::default_parallelism(),
    )
    .clamp(1, 256);
    let mut xargs_p: Vec<usize> = std::env::var(xargs_var)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![4, 8, 16]);
    xargs_p.retain(|p| (1..=256).contains(p));
    if xargs_p.is_empty() {
        xargs_p.push(parallelism);
    }
    (parallelism, xargs_p)
}

fn s(x: impl Into<String>) -> String {
    x.into()
}

/// Runs `f` [`WARMUP`] times untimed, then `runs` times timed.
fn time_runs(
    runs: usize,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<Vec<Duration>, String> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Runs `cmd` with no input or output and requires exit 0.
fn exec_quiet(cmd: &mut Command) -> Result<(), String> {
    host::check_interrupted()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} exited with {status}"));
    }
    Ok(())
}

/// Reaps `pid` with `wait4`, returning its raw wait status and peak RSS in
/// KiB. Linux charges a child at least the RSS high-water mark of the
/// process that spawned it, which is why the parent stays small and the
/// `idle` child is printed as the floor.
fn wait4(pid: u32) -> Result<(libc::c_int, u64), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data, for which all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std only reaps in
        // `wait`, which is never called for it); both pointers are valid
        // for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0)));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4({pid}): {err}"));
        }
    }
}

fn exited_ok(status: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// Runs `cmd` once, quietly, and returns its peak RSS in KiB.
fn peak_rss(cmd: &mut Command) -> Result<u64, String> {
    host::check_interrupted()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let (status, rss) = wait4(child.id())?;
    if !exited_ok(status) {
        return Err(format!("{cmd:?} failed (wait status {status:#x})"));
    }
    Ok(rss)
}

/// The host configuration the benchmark uses, as JSON.
struct HostSetup<'a> {
    dir: &'a Path,
    image: &'a str,
    podman: &'a Path,
    parallelism: usize,
    run_label: &'a str,
    max_queue_bytes: Option<u64>,
}

impl HostSetup<'_> {
    fn json(&self) -> String {
        let mut v = serde_json::json!({
            "queue_root": self.dir.join("queue"),
            "state_dir": self.dir.join("state"),
            "netns_dir": "/run/netns",
            "podman": self.podman,
            "podman_timeout_ms": 120_000,
            "parallelism": self.parallelism,
            "kinds": {
                "dnsmasq": {
                    "image": self.image,
                    // The default mounts name host paths of a Neutron node,
                    // which this machine need not have.
                    "volumes": [],
                    "labels": { RUN_LABEL_KEY: self.run_label },
                    // The benches measure throughput at sizes past the
                    // default limit (100,000 requests for 3,000 sidecars).
                    "max_sidecars": 1_000_000
                }
            }
        });
        if let Some(m) = self.max_queue_bytes {
            v["max_queue_bytes"] = m.into();
        }
        v.to_string()
    }

    /// Writes `config.json` into the directory and parses it exactly as the
    /// binary will.
    fn write(&self) -> Result<(PathBuf, HostConfig), String> {
        let path = self.dir.join("config.json");
        let text = self.json();
        fs::write(&path, &text).map_err(|e| format!("write {}: {e}", path.display()))?;
        let cfg = HostConfig::from_str(&path, &text).map_err(|e| e.to_string())?;
        Ok((path, cfg))
    }
}

// ---------------------------------------------------------------------------
// Part 1: empty queue

fn part1(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let runs = env_usize("SIDESPAWN_BENCH_EMPTY_RUNS", 300).max(1);
    eprintln!("sync bench: part 1, empty-queue syncs");
    t.section(format!(
        "1. Empty-queue sync (dnsmasq configured, queue empty; {runs} runs each after {WARMUP} warm-up)"
    ));
    if runs < MIN_LATENCY_RUNS {
        notes.push(format!(
            "note: only {runs} runs per latency figure (SIDESPAWN_BENCH_EMPTY_RUNS); the p99 is rough"
        ));
    }
    let floor = time_runs(runs, || exec_quiet(&mut Command::new("/bin/true")))?;
    let floor_med = median(&floor);
    t.row([
        s("exec /bin/true (baseline: process spawn floor)"),
        fmt_dur(floor_med),
        fmt_dur(percentile(&floor, 99.0)),
        fmt_kib(peak_rss(&mut Command::new("/bin/true"))?),
        s("-"),
        s("-"),
        s("-"),
        s("-"),
    ]);
    if !host::is_root() {
        let why = "needs root: the claim requires root-owned queue and state directories";
        t.skipped("sync::run in-process", why);
        t.skipped("sidespawn sync (release binary)", why);
        println!("SKIPPED (needs root): empty-queue sync");
        return Ok(None);
    }

    let dir = TempDir::new("sidespawn-syncbench-empty");
    // Every podman call the binary makes goes through this shim, which
    // logs it: the target is zero calls, and the log proves it.
    let (shim, calls_log) = podman_shim(dir.path())?;
    let (cfg_path, cfg) = HostSetup {
        dir: dir.path(),
        image: UNUSED_IMAGE,
        podman: &shim,
        parallelism: 8,
        run_label: "empty",
        max_queue_bytes: None,
    }
    .write()?;

    let fake = FakeRuntime::default();
    let ns = FakeNamespaces::default();
    let opts = SyncOptions::default();
    let once = || -> Result<(), String> {
        let summary = sync::run(&cfg, &fake, &ns, &opts).map_err(|e| e.to_string())?;
        if summary != Summary::default() {
            return Err(format!("an empty queue gave {summary}"));
        }
        Ok(())
    };
    // The steady state of a host: the first sync made the directories, and
    // the queue file exists (the first append made it; claims only empty it).
    once()?;
    let queue = QueueDir::new(&cfg.queue_root, Kind::Dnsmasq).queue();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&queue)
        .map_err(|e| format!("create {}: {e}", queue.display()))?;

    let inproc = time_runs(runs, once)?;
    let inproc_calls = fake.calls().len();
    let med = median(&inproc);
    t.row([
        s("sync::run in-process (call-recording FakeRuntime)"),
        fmt_dur(med),
        fmt_dur(percentile(&inproc, 99.0)),
        s("-"),
        fmt_dur(floor_med),
        format!("{:.2}×", ratio(med, floor_med)),
        s("≤ 3 ms, 0 podman calls"),
        format!(
            "{} ({inproc_calls} calls)",
            verdict(med <= EMPTY_TARGET && inproc_calls == 0)
        ),
    ]);

    let bin = env!("CARGO_BIN_EXE_sidespawn");
    let conf = host::containers_conf();
    let sync_cmd = || {
        let mut c = Command::new(bin);
        c.arg("--config")
            .arg(&cfg_path)
            .arg("sync")
            .env("CONTAINERS_CONF", &conf);
        c
    };
    let binary = time_runs(runs, || exec_quiet(&mut sync_cmd()))?;
    let bin_rss = peak_rss(&mut sync_cmd())?;
    let bin_calls = fs::read_to_string(&calls_log)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let med = median(&binary);
    t.row([
        s("sidespawn --config X sync (release binary, exec to exit)"),
        fmt_dur(med),
        fmt_dur(percentile(&binary, 99.0)),
        fmt_kib(bin_rss),
        fmt_dur(floor_med),
        format!("{:.2}×", ratio(med, floor_med)),
        s("≤ 3 ms, 0 podman calls"),
        format!(
            "{} ({bin_calls} calls)",
            verdict(med <= EMPTY_TARGET && bin_calls == 0)
        ),
    ]);

    // The empty sync still makes its state durable; what one fsync costs on
    // this disk explains most of the figure above.
    let probe = dir.join("fsync-probe");
    let fsyncs = time_runs(50, || {
        let mut f = File::create(&probe).map_err(|e| e.to_string())?;
        f.write_all(b"{\"x\":1}").map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())
    })?;
    notes.push(format!(
        "part 1: one small write + fsync in the same directory costs {} (median of 50)",
        fmt_dur(median(&fsyncs))
    ));
    if let Some(line) = strace_summary(bin, &cfg_path)? {
        notes.push(format!(
            "part 1: syscalls of one empty `sidespawn sync` (strace -f -c): {line}"
        ));
    }
    Ok(None)
}

/// Writes a podman shim into `dir` that logs each call (one line per call,
/// its arguments NUL-terminated) and then runs podman. Returns the shim and
/// the log.
fn podman_shim(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let log = dir.join("podman-calls");
    let shim = dir.join("podman-shim");
    fs::write(
        &shim,
        format!(
            // One line per call, written by one printf (one write(2) to an
            // O_APPEND file), so calls made at once never interleave; the
            // arguments joined by the unit separator (0x1f), which no argv
            // here contains.
            "#!/bin/sh\nIFS=$(printf '\\037')\nprintf '%s\\n' \"$*\" >> '{}'\nunset IFS\nexec podman \"$@\"\n",
            log.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    Ok((shim, log))
}

/// The fsync-like calls and the total syscall count of one empty sync,
/// when strace is installed.
fn strace_summary(bin: &str, cfg: &Path) -> Result<Option<String>, String> {
    host::check_interrupted()?;
    if host::find_in_path("strace").is_none() {
        return Ok(None);
    }
    let out = Command::new("strace")
        .args(["-f", "-c", "-o", "/dev/stdout"])
        .arg(bin)
        .arg("--config")
        .arg(cfg)
        .arg("sync")
        .env("CONTAINERS_CONF", host::containers_conf())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            // % time, seconds, usecs/call, calls, [errors,] syscall
            [.., calls, name]
                if ["fsync", "fdatasync", "renameat2", "rename", "flock"].contains(name) =>
            {
                parts.push(format!("{name} ×{calls}"));
            }
            [_, _, _, calls, .., "total"] => total = Some((*calls).to_owned()),
            _ => {}
        }
    }
    if let Some(t) = total {
        parts.push(format!("{t} syscalls in all"));
    }
    Ok((!parts.is_empty()).then(|| parts.join(", ")))
}

// ---------------------------------------------------------------------------
// Part 2: fold + plan and the in-process sync of a large backlog

/// One measured child: its own timing, its peak RSS, and what it printed.
struct ChildRun {
    time: Duration,
    rss_kib: u64,
    extra: String,
}

/// Runs one phase in a fresh child. The phases that need a host directory
/// get a new one, which stays until the end of part 2: deleting 100,000
/// acknowledgement files between runs would slow the next run's file
/// creation (ext4 scans past recently deleted inodes when it allocates new
/// ones — `recently_deleted` tops the `perf` profile then — and this disk
/// is mounted with `discard`).
fn run_child(phase: &str, n: usize) -> Result<ChildRun, String> {
    host::check_interrupted()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_FLAG).arg(phase).arg(n.to_string());
    if matches!(phase, "sync" | "floor") {
        let dir = TempDir::new("sidespawn-syncbench-backlog").keep();
        host::adopt_dir(dir.clone());
        cmd.arg(dir);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot re-run the bench as a child: {e}"))?;
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out).map_err(|e| e.to_string())?;
    }
    let (status, rss_kib) = wait4(child.id())?;
    if !exited_ok(status) {
        return Err(format!(
            "child `{phase} {n}` failed (wait status {status:#x})"
        ));
    }
    let line = out.trim();
    let nanos: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nanos="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("child `{phase} {n}` printed {line:?}"))?;
    Ok(ChildRun {
        time: Duration::from_nanos(nanos),
        rss_kib,
        extra: line
            .split_whitespace()
            .filter(|w| !w.starts_with("nanos="))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// `runs` children of one phase: times, median peak RSS, the first extra.
struct Series {
    times: Vec<Duration>,
    rss: Vec<u64>,
    extra: String,
}

impl Series {
    fn median(&self) -> Duration {
        median(&self.times)
    }
    fn rss(&self) -> u64 {
        report::median_u64(&self.rss)
    }
    fn per_request(&self, n: usize) -> Duration {
        self.median() / u32::try_from(n.max(1)).unwrap_or(u32::MAX)
    }
}

/// One size of part 2: each phase's series.
struct ScaleRow {
    n: usize,
    plan: Series,
    fold: Series,
    sync: Option<Series>,
    floor: Option<Series>,
}

fn series(phase: &str, n: usize, runs: usize) -> Result<Series, String> {
    let mut s = Series {
        times: Vec::new(),
        rss: Vec::new(),
        extra: String::new(),
    };
    for _ in 0..runs {
        let r = run_child(phase, n)?;
        s.times.push(r.time);
        s.rss.push(r.rss_kib);
        if s.extra.is_empty() {
            s.extra = r.extra;
        }
    }
    Ok(s)
}

fn part2(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let runs = env_usize("SIDESPAWN_BENCH_FOLD_RUNS", 5).max(1);
    let mut sizes: Vec<usize> = std::env::var("SIDESPAWN_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    // The fixture's mix repeats every 10 sidecars of 10 requests each.
    for n in &mut sizes {
        *n = (*n).div_ceil(100).max(1) * 100;
    }
    sizes.sort_unstable();
    sizes.dedup();
    let headline = sizes
        .iter()
        .copied()
        .min_by_key(|n| n.abs_diff(10_000))
        .unwrap_or(10_000);
    let root = host::is_root();
    t.section(format!(
        "2. Fold + plan and in-process sync of {headline} queued requests ({} sidecars × 10, {} containers); median of {runs} runs, each in a fresh process",
        headline / 10,
        headline / 10
    ));

    let idle = series("idle", 0, runs)?;
    let mut rows = Vec::new();
    for &n in &sizes {
        eprintln!("sync bench: part 2, {n} requests");
        let plan = series("plan", n, runs)?;
        let fold = series("fold", n, runs)?;
        let (sync, floor) = if root {
            (
                Some(series("sync", n, runs)?),
                Some(series("floor", n, runs)?),
            )
        } else {
            (None, None)
        };
        rows.push(ScaleRow {
            n,
            plan,
            fold,
            sync,
            floor,
        });
    }

    // Only now: see `run_child`.
    eprintln!("sync bench: part 2, removing the backlog directories");
    host::remove_adopted_dirs();

    // Linear: the cost per request at the largest size over the cost per
    // request at the next smaller one, divided by the same growth of the
    // phase's floor (an O(n) pass over the same data by construction, so
    // its growth is the memory hierarchy's and the file system's, not the
    // algorithm's). The two largest sizes, because at the smallest the
    // fixed costs (a dozen fsyncs, process start-up) hide the per-request
    // cost entirely.
    let per_req = |r: &ScaleRow, pick: &dyn Fn(&ScaleRow) -> Option<Duration>| {
        Some(pick(r)? / u32::try_from(r.n).ok()?)
    };
    let pair = rows.len().checked_sub(2).map(|i| (&rows[i], &rows[i + 1]));
    let growth = |pick: &dyn Fn(&ScaleRow) -> Option<Duration>| {
        let (a, b) = pair?;
        Some(ratio(per_req(b, pick)?, per_req(a, pick)?))
    };
    let linear = |phase: Option<f64>, floor: Option<f64>| match (phase, floor, pair) {
        (Some(g), Some(f), Some((a, b))) => {
            let net = g / f;
            format!(
                "{} (per request ×{g:.2} from {} to {}, floor ×{f:.2}: net ×{net:.2})",
                verdict(net <= LINEAR_TOLERANCE),
                a.n,
                b.n
            )
        }
        _ => s("- (needs two sizes)"),
    };
    let plan_linear = linear(
        growth(&|r| Some(r.plan.median())),
        growth(&|r| Some(r.fold.median())),
    );
    let sync_linear = linear(
        growth(&|r| r.sync.as_ref().map(Series::median)),
        growth(&|r| r.floor.as_ref().map(Series::median)),
    );

    let Some(h) = rows.iter().find(|r| r.n == headline) else {
        return Err(s("no headline size"));
    };
    t.row([
        format!(
            "fold + plan, {headline} requests vs {} containers",
            headline / 10
        ),
        fmt_dur(h.plan.median()),
        s("-"),
        fmt_kib(h.plan.rss()),
        format!("{} (bare key fold)", fmt_dur(h.fold.median())),
        format!("{:.1}×", ratio(h.plan.median(), h.fold.median())),
        format!("≤ {} MB RSS", PLAN_RSS_TARGET_KB / 1000),
        format!(
            "{} (RSS)",
            verdict(h.plan.rss() * 1024 <= PLAN_RSS_TARGET_KB * 1000)
        ),
    ]);
    t.row([
        s("  cost per request, 10× more requests"),
        fmt_dur(h.plan.per_request(headline)),
        s("-"),
        s("-"),
        s("-"),
        s("-"),
        s("linear in requests"),
        plan_linear,
    ]);
    match (&h.sync, &h.floor) {
        (Some(sync_s), Some(floor_s)) => t.row([
            format!("sync::run, {headline} queued, FakeRuntime"),
            fmt_dur(sync_s.median()),
            s("-"),
            fmt_kib(sync_s.rss()),
            format!("{} (bare claim + acks I/O)", fmt_dur(floor_s.median())),
            format!("{:.1}×", ratio(sync_s.median(), floor_s.median())),
            s("linear in requests"),
            sync_linear,
        ]),
        _ => t.skipped(
            "sync::run in-process",
            "needs root: the claim requires root-owned queue and state directories",
        ),
    }
    notes.push(format!(
        "part 2: peak RSS floor (a child that does nothing, charged the parent's high-water mark): {}; plan at {headline}: {}",
        fmt_kib(idle.rss()),
        h.plan.extra
    ));
    if sizes.iter().any(|&n| n > 60_000) {
        notes.push(s(
            "part 2: the 100k backlog is ~110 MiB of queue; the host config raises max_queue_bytes to 1 GiB for it \
             (with the default 64 MiB cap one claim takes ~60k such requests and rejects the rest)",
        ));
    }

    let mut sc = Table::new(
        "scaling",
        &[
            "Requests",
            "plan",
            "plan/req",
            "bare fold",
            "plan RSS",
            "sync::run",
            "sync/req",
            "claim+acks floor",
            "sync RSS",
        ],
    );
    sc.section(s("Scaling (medians; /req = median ÷ requests)"));
    for r in &rows {
        let opt = |x: &Option<Series>, g: &dyn Fn(&Series) -> String| x.as_ref().map_or(s("-"), g);
        sc.row(vec![
            r.n.to_string(),
            fmt_dur(r.plan.median()),
            fmt_dur(r.plan.per_request(r.n)),
            fmt_dur(r.fold.median()),
            fmt_kib(r.plan.rss()),
            opt(&r.sync, &|x| fmt_dur(x.median())),
            opt(&r.sync, &|x| fmt_dur(x.per_request(r.n))),
            opt(&r.floor, &|x| fmt_dur(x.median())),
            opt(&r.sync, &|x| fmt_kib(x.rss())),
        ]);
    }
    Ok(Some(sc))
}

// ---------------------------------------------------------------------------
// Part 3: real podman

fn part3(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let sidecars = env_usize("SIDESPAWN_BENCH_SIDECARS", 200).max(1);
    let callers = env_usize("SIDESPAWN_BENCH_CALLERS", 20).max(1);
    let repeats = env_usize("SIDESPAWN_BENCH_RUNS", 3).max(1);
    let (parallelism, xargs_p) = parallelisms("SIDESPAWN_BENCH_XARGS_P");
    t.section(format!(
        "3. Burst: {sidecars} start requests from {callers} concurrent callers -> all running, through `sidespawn watch` (parallelism {parallelism}), vs the best direct `podman run -d` of the same {sidecars}; median of {repeats} repeats"
    ));
    if let Some(why) = missing_for_podman() {
        println!("SKIPPED (needs root + podman): burst ({why})");
        t.skipped("burst through sidespawn watch", &why);
        return Ok(None);
    }

    eprintln!("sync bench: part 3, building or finding the dnsmasq test image");
    let image = dnsmasq_image()?;
    let run_value = host::unique("syncbench");
    let guard = LabelGuard::new(format!("{RUN_LABEL_KEY}={run_value}"));
    let label = guard.label().to_owned();
    eprintln!("sync bench: part 3, creating {sidecars} network namespaces");
    let nss = NetnsSet::create(qdhcp_names(sidecars)?)?;

    // The baselines run exactly the argv the sync runs: built by the same
    // function from the same queued records, and checked against what
    // `sync --dry-run` prints (generation numbers aside).
    let probe = SyncHost::new(&image, &run_value, parallelism, Path::new("podman"))?;
    probe.queue_all(&nss)?;
    let specs = probe.specs(1)?;
    let describer = Podman::new(probe.cfg.engine_program.clone(), probe.cfg.engine_timeout);
    let mut ours: Vec<String> = specs
        .iter()
        .map(|sp| without_generation(&describer.describe(&Call::Run(sp.clone()))))
        .collect();
    let mut theirs: Vec<String> = probe
        .dry_run()?
        .iter()
        .map(|l| without_generation(l))
        .collect();
    ours.sort();
    theirs.sort();
    if ours != theirs {
        return Err(format!(
            "baseline argv differs from `sync --dry-run`:\nours:   {:?}\ntheirs: {:?}",
            ours.first(),
            theirs.first()
        ));
    }
    drop(probe);
    notes.push(format!(
        "part 3: baselines run the same argv as the sync (checked against `sync --dry-run`), e.g.\n  {}",
        ours.first().map_or("", String::as_str)
    ));

    // Untimed: the first container after a while pays for paging in podman,
    // runc, conmon and the image; no contender should get that bill.
    eprintln!("sync bench: part 3, warm-up container");
    if let Some(first) = specs.first() {
        exec_quiet(host::podman().args(first.argv()))?;
    }
    host::remove_containers(&label)?;

    let mut sync_t = Vec::new();
    let mut calls_t = Vec::new();
    let mut rss = Vec::new();
    let mut xargs_t: Vec<Vec<Duration>> = vec![Vec::new(); xargs_p.len()];
    let mut profiles = Vec::new();
    let mut loads = Vec::new();
    let contenders = 1 + xargs_p.len();
    for rep in 0..repeats {
        loads.push(host::loadavg());
        // Rotated, so drift of the machine's load over the run does not
        // always favour the same contender.
        for c in (0..contenders).map(|i| (i + rep) % contenders) {
            if c == 0 {
                eprintln!("sync bench: part 3, repeat {}: burst", rep + 1);
                let h = SyncHost::new(&image, &run_value, parallelism, Path::new("podman"))?;
                let daemon = h.watch()?;
                let started_unix = unix_now();
                let t0 = Instant::now();
                h.queue_burst(&nss, callers)?;
                calls_t.push(t0.elapsed());
                h.wait_acked(sidecars)?;
                let wall = t0.elapsed();
                rss.push(daemon.peak_rss_kib());
                let log_path = daemon.log.clone();
                daemon.stop()?;
                check_running(&label, sidecars, "burst through sidespawn watch")?;
                sync_t.push(wall);
                profiles.push(profile_sync(&SyncRun {
                    wall,
                    started_unix,
                    stdout: String::new(),
                    log: fs::read_to_string(log_path).unwrap_or_default(),
                }));
            } else {
                let p = xargs_p[c - 1];
                eprintln!("sync bench: part 3, repeat {}: xargs -P {p}", rep + 1);
                let dir = TempDir::new("sidespawn-syncbench-xargs");
                xargs_t[c - 1].push(xargs(&specs, p, dir.path())?);
                check_running(&label, sidecars, "xargs -P")?;
            }
            host::remove_containers(&label)?;
        }
    }

    let medians: Vec<Duration> = xargs_t.iter().map(|v| median(v)).collect();
    let best = medians.iter().copied().min().unwrap_or_default();
    let sm = median(&sync_t);
    // The verdict pairs each repeat's burst with the best baseline of the
    // same repeat (measured within a minute of it): on a shared machine the
    // load drifts between repeats far more than the contenders differ, and
    // a ratio of medians taken from different repeats would mostly measure
    // that drift. The ratio of the medians is shown beside it.
    let paired: Vec<f64> = (0..sync_t.len())
        .map(|i| {
            let b = xargs_t.iter().map(|v| v[i]).min().unwrap_or_default();
            ratio(sync_t[i], b)
        })
        .collect();
    let mut sorted = paired.clone();
    sorted.sort_by(f64::total_cmp);
    let r = sorted[sorted.len() / 2];
    let list = |v: &[Duration]| v.iter().map(|d| fmt_dur(*d)).collect::<Vec<_>>().join(", ");
    t.row([
        s("sidespawn watch: first call -> all acknowledged running"),
        fmt_dur(sm),
        s("-"),
        fmt_kib(report::median_u64(&rss)),
        format!("{} (best xargs -P)", fmt_dur(best)),
        format!("{r:.2}× paired ({:.2}× of medians)", ratio(sm, best)),
        format!("≤ {PODMAN_TARGET_RATIO:.2}×"),
        verdict(r <= PODMAN_TARGET_RATIO),
    ]);
    for (p, m) in xargs_p.iter().zip(&medians) {
        t.row([
            format!("  xargs -P {p} of the same {sidecars} podman run -d"),
            fmt_dur(*m),
            s("-"),
            s("-"),
            s("-"),
            format!("{:.2}× of best", ratio(*m, best)),
            s("-"),
            s("-"),
        ]);
    }
    notes.push(format!(
        "part 3: per repeat — burst: {}; xargs: {}; burst / best xargs of the repeat: {}; \
         the {callers} callers' {sidecars} wrapper calls all returned within: {}; load average before each repeat: {}",
        list(&sync_t),
        xargs_p
            .iter()
            .zip(&xargs_t)
            .map(|(p, v)| format!("-P {p} [{}]", list(v)))
            .collect::<Vec<_>>()
            .join(" "),
        paired
            .iter()
            .map(|x| format!("{x:.2}×"))
            .collect::<Vec<_>>()
            .join(", "),
        list(&calls_t),
        loads.join("; ")
    ));
    notes.push(profile_notes(&profiles, parallelism));
    drop(nss);
    drop(guard);
    Ok(None)
}

/// Why the real-podman parts cannot run here, if they cannot.
fn missing_for_podman() -> Option<String> {
    let mut missing = Vec::new();
    if !host::is_root() {
        missing.push(s("root"));
    }
    for tool in ["podman", "ip", "xargs"] {
        if host::find_in_path(tool).is_none() {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

/// `n` fresh `qdhcp-<uuid>` namespace names.
fn qdhcp_names(n: usize) -> Result<Vec<String>, String> {
    (0..n)
        .map(|_| random_uuid().map(|u| format!("qdhcp-{u}")))
        .collect()
}
