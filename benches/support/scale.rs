//! Part 6: a host at a DHCP node's size. For each size in
//! `SIDESPAWN_BENCH_SCALE` (default `100,1000`): that many running dnsmasq
//! sidecars, one per named namespace, with real podman, and
//!
//! - the burst of all of them started from nothing through `sidespawn watch`,
//!   against the best `xargs -P` of the same `podman run -d` argv;
//! - a full reconcile with nothing to change (`sync --full`): time, podman
//!   calls, peak RSS, against its own `podman ps`;
//! - an agent restart: every sidecar asked for again, unchanged, by
//!   concurrent callers, then the sync the trigger fires: time from the
//!   first call until every request is acknowledged, and its podman calls
//!   (one listing, no run);
//! - one new request among them: request → acknowledged running through
//!   `sidespawn watch`,
//!   against a bare `podman run -d` of the same argv on the same busy host;
//!
//! with sidespawn's own peak RSS for each, and a table of how each figure
//! grows from the smallest size to the largest.
//!
//! Everything runs against a podman storage of its own (a `storage.conf`
//! with its own graphroot and runroot under a temporary directory, named by
//! `CONTAINERS_STORAGE_CONF` for this process and everything it starts,
//! sidespawn's podman included), into which the test image is copied with
//! `podman save | podman load`: a thousand containers then slow no one else's
//! podman on the machine. The part checks that the default storage sees none
//! of its containers, and removes the storage (after its containers, image
//! and mounts) at the end, also after a panic or a signal.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::host::{self, LabelGuard, NetnsSet, TempDir};
use crate::real_podman::{SyncHost, check_running, dnsmasq_image, xargs};
use crate::report::{Table, fmt_dur, fmt_kib, median, percentile, ratio, verdict};
use crate::{
    PODMAN_TARGET_RATIO, RUN_LABEL_KEY, env_usize, exec_quiet, missing_for_podman, parallelisms,
    podman_shim, qdhcp_names, s,
};

/// Peak RSS of sidespawn itself at any size (50 MB).
const RSS_TARGET_KB: u64 = 50_000;
/// Request → running of one new sidecar on a busy host: a bare `podman run -d`
/// plus this much.
const ONE_TARGET_EXTRA: Duration = Duration::from_millis(50);

/// The environment variable podman reads its storage configuration from.
const STORAGE_ENV: &str = "CONTAINERS_STORAGE_CONF";

/// A podman storage of this process's own: set up with the test image in
/// it, named in this process's environment while it lives, and removed
/// (containers, image, mounts, directory) when dropped.
struct PrivateStorage {
    dir: PathBuf,
    image: String,
    previous: Option<std::ffi::OsString>,
}

impl PrivateStorage {
    fn new(image: &str) -> Result<PrivateStorage, String> {
        let dir = TempDir::new("sidespawn-scalebench-storage").keep();
        // Registered before anything is made in it, so a panic or a signal
        // removes it too (after the containers: see `host::cleanup_everything`).
        host::adopt_dir(dir.clone());
        let conf = dir.join("storage.conf");
        fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("graph").display(),
                dir.join("run").display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
        // podman save (default storage) | podman load (this one).
        host::check_interrupted()?;
        let mut save = host::podman()
            .args(["save", image])
            .env_remove(STORAGE_ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("podman save: {e}"))?;
        let out = save.stdout.take().ok_or("podman save has no stdout")?;
        let load = host::podman()
            .arg("load")
            .env(STORAGE_ENV, &conf)
            .stdin(out)
            .output()
            .map_err(|e| format!("podman load: {e}"))?;
        let saved = save.wait().map_err(|e| e.to_string())?;
        if !saved.success() || !load.status.success() {
            return Err(format!(
                "podman save {image} | podman load into {}: {}",
                dir.display(),
                String::from_utf8_lossy(&load.stderr).trim()
            ));
        }
        let previous = std::env::var_os(STORAGE_ENV);
        // SAFETY: the bench's only other thread waits for signals and reads
        // no environment until the main thread is gone or hung; nothing else
        // runs while the variable changes.
        unsafe { std::env::set_var(STORAGE_ENV, &conf) };
        Ok(PrivateStorage {
            dir,
            image: image.to_owned(),
            previous,
        })
    }
}

impl Drop for PrivateStorage {
    fn drop(&mut self) {
        // The image, then podman's own mounts under the directory (the
        // adopted-directory removal unmounts whatever is left).
        let _ = exec_quiet(host::podman().args(["rmi", "-f", &self.image]));
        // SAFETY: as in `new`.
        unsafe {
            match self.previous.take() {
                Some(v) => std::env::set_var(STORAGE_ENV, v),
                None => std::env::remove_var(STORAGE_ENV),
            }
        }
        host::remove_adopted_dir(&self.dir);
    }
}

/// Podman calls by subcommand (`ps`, `run`, ...), from a shim's log.
fn calls_by_sub(log: &Path, from: usize) -> (usize, BTreeMap<String, usize>) {
    let calls = crate::fleet::logged_calls(log);
    let mut by = BTreeMap::new();
    for c in calls.iter().skip(from) {
        *by.entry(c.first().cloned().unwrap_or_default())
            .or_insert(0) += 1;
    }
    (calls.len(), by)
}

fn calls_cell(by: &BTreeMap<String, usize>) -> String {
    if by.is_empty() {
        return s("0 podman calls");
    }
    by.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the shim's log has not grown for half a second: the daemon
/// is done with what it does at start.
fn wait_idle(log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (crate::fleet::logged_calls(log).len(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(500) {
        host::check_interrupted()?;
        if Instant::now() > deadline {
            return Err(s(
                "sidespawn watch still calling podman 10 minutes after its start",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = crate::fleet::logged_calls(log).len();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    Ok(())
}

/// Removes the acknowledgements the host wrote, so the next phase waits for
/// its own.
fn clear_acks(h: &SyncHost) -> Result<(), String> {
    let dir = h.cfg.queue_root.join("dnsmasq/acks");
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// `peak_rss_kib=` of a `-v` log.
fn logged_rss(log: &str) -> u64 {
    log.split_whitespace()
        .find_map(|w| w.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What one size measured.
struct Size {
    n: usize,
    burst: Duration,
    burst_rss: u64,
    burst_calls: BTreeMap<String, usize>,
    xargs: Vec<(usize, Duration)>,
    full: Vec<Duration>,
    full_rss: u64,
    full_calls: BTreeMap<String, usize>,
    ps: Duration,
    restart: Vec<Duration>,
    restart_sync: Vec<Duration>,
    restart_rss: u64,
    restart_calls: BTreeMap<String, usize>,
    one: Vec<Duration>,
    one_rss: u64,
    one_calls: BTreeMap<String, usize>,
    bare: Vec<Duration>,
}

impl Size {
    fn best_xargs(&self) -> (usize, Duration) {
        self.xargs
            .iter()
            .copied()
            .min_by_key(|x| x.1)
            .unwrap_or_default()
    }
}

pub fn part6(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let mut sizes: Vec<usize> = std::env::var("SIDESPAWN_BENCH_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1000]);
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable();
    sizes.dedup();
    let runs = env_usize("SIDESPAWN_BENCH_SCALE_RUNS", 5).max(1);
    let callers = env_usize("SIDESPAWN_BENCH_CALLERS", 20).max(1);
    let (parallelism, xargs_p) = parallelisms("SIDESPAWN_BENCH_SCALE_XARGS_P");
    let Some(&largest) = sizes.last() else {
        return Ok(None);
    };
    t.section(format!(
        "6. A busy node: {largest} dnsmasq sidecars running, one per namespace (parallelism {parallelism}, {callers} callers; podman storage of its own)"
    ));
    if let Some(why) = missing_for_podman() {
        println!("SKIPPED (needs root + podman): a busy node ({why})");
        t.skipped("a busy node", &why);
        return Ok(None);
    }
    let image = dnsmasq_image()?;
    eprintln!("sync bench: part 6, copying {image} into a podman storage of its own");
    let storage = PrivateStorage::new(&image)?;
    let mut measured = Vec::new();
    for &n in &sizes {
        measured.push(measure(
            n,
            &image,
            runs,
            callers,
            parallelism,
            &xargs_p,
            notes,
        )?);
    }
    drop(storage);

    let Some(big) = measured.last() else {
        return Ok(None);
    };
    let n = big.n;
    let (p, best) = big.best_xargs();
    let r = ratio(big.burst, best);
    t.row([
        format!("burst: {n} new start requests -> all acknowledged running (sidespawn watch)"),
        fmt_dur(big.burst),
        s("-"),
        fmt_kib(big.burst_rss),
        format!("{} (best xargs -P, -P {p})", fmt_dur(best)),
        format!("{r:.2}×"),
        format!("≤ {PODMAN_TARGET_RATIO:.2}×, ≤ {} MB", RSS_TARGET_KB / 1000),
        format!(
            "{} ({})",
            verdict(r <= PODMAN_TARGET_RATIO && big.burst_rss * 1024 <= RSS_TARGET_KB * 1000),
            calls_cell(&big.burst_calls)
        ),
    ]);
    for (p, d) in &big.xargs {
        t.row([
            format!("  xargs -P {p} of the same {n} podman run -d"),
            fmt_dur(*d),
            s("-"),
            s("-"),
            s("-"),
            format!("{:.2}× of best", ratio(*d, best)),
            s("-"),
            s("-"),
        ]);
    }
    let fm = median(&big.full);
    let full_ok = big.full_calls.get("ps") == Some(&runs) && big.full_calls.len() == 1;
    t.row([
        format!("sync --full, {n} running, nothing to change"),
        fmt_dur(fm),
        fmt_dur(percentile(&big.full, 99.0)),
        fmt_kib(big.full_rss),
        format!("{} (its podman ps alone)", fmt_dur(big.ps)),
        format!("{:.2}×", ratio(fm, big.ps)),
        format!("1 podman ps, ≤ {} MB", RSS_TARGET_KB / 1000),
        format!(
            "{} ({} in {runs} runs)",
            verdict(full_ok && big.full_rss * 1024 <= RSS_TARGET_KB * 1000),
            calls_cell(&big.full_calls)
        ),
    ]);
    let rm = median(&big.restart);
    let restarts = big.restart.len();
    let restart_ok = big.restart_calls.get("ps") == Some(&restarts)
        && big.restart_calls.len() == 1
        && big.restart_rss * 1024 <= RSS_TARGET_KB * 1000;
    t.row([
        format!("agent restart: {n} unchanged requests -> all acknowledged"),
        fmt_dur(rm),
        fmt_dur(percentile(&big.restart, 99.0)),
        fmt_kib(big.restart_rss),
        format!("{} (its sync alone)", fmt_dur(median(&big.restart_sync))),
        format!("{:.2}×", ratio(rm, median(&big.restart_sync))),
        s("1 podman ps, no run"),
        format!(
            "{} ({} in {restarts} restarts)",
            verdict(restart_ok),
            calls_cell(&big.restart_calls)
        ),
    ]);
    let om = median(&big.one);
    let bm = median(&big.bare);
    t.row([
        format!("one new request among {n}: request -> running (sidespawn watch)"),
        fmt_dur(om),
        fmt_dur(percentile(&big.one, 99.0)),
        fmt_kib(big.one_rss),
        format!("{} (bare podman run -d)", fmt_dur(bm)),
        format!("+{}", fmt_dur(om.saturating_sub(bm))),
        format!("≤ +{}", fmt_dur(ONE_TARGET_EXTRA)),
        format!(
            "{} ({} in {} runs)",
            verdict(om <= bm + ONE_TARGET_EXTRA),
            calls_cell(&big.one_calls),
            big.one.len()
        ),
    ]);

    // How each figure grows with the number of sidecars.
    let mut header = vec![s("Figure")];
    header.extend(measured.iter().map(|m| format!("{} sidecars", m.n)));
    header.push(s("Growth"));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut g = Table::new("sidecars", &header);
    let first = &measured[0];
    g.section(format!(
        "Growth with the number of running sidecars (medians; growth = last ÷ first, for {}× the sidecars)",
        big.n / first.n.max(1)
    ));
    type Pick<'a> = &'a dyn Fn(&Size) -> Duration;
    let dur_rows: [(&str, Pick); 8] = [
        ("burst through sidespawn watch", &|m| m.burst),
        ("best xargs -P of the same podman run -d", &|m| {
            m.best_xargs().1
        }),
        ("sync --full, nothing to change", &|m| median(&m.full)),
        ("  its podman ps alone", &|m| m.ps),
        ("agent restart -> all acknowledged", &|m| median(&m.restart)),
        ("  of which the sync", &|m| median(&m.restart_sync)),
        ("one new request -> running", &|m| median(&m.one)),
        ("  bare podman run -d", &|m| median(&m.bare)),
    ];
    for (what, pick) in dur_rows {
        let mut row = vec![s(what)];
        row.extend(measured.iter().map(|m| fmt_dur(pick(m))));
        row.push(format!("{:.2}×", ratio(pick(big), pick(first))));
        g.row(row);
    }
    type PickK<'a> = &'a dyn Fn(&Size) -> u64;
    let rss_rows: [(&str, PickK); 4] = [
        ("peak RSS, watch during the burst", &|m| m.burst_rss),
        ("peak RSS, sync --full", &|m| m.full_rss),
        ("peak RSS, agent restart's sync", &|m| m.restart_rss),
        ("peak RSS, watch during the new requests", &|m| m.one_rss),
    ];
    for (what, pick) in rss_rows {
        let mut row = vec![s(what)];
        row.extend(measured.iter().map(|m| fmt_kib(pick(m))));
        row.push(format!(
            "{:.2}×",
            pick(big) as f64 / pick(first).max(1) as f64
        ));
        g.row(row);
    }
    let mut row = vec![s("podman calls: burst / full / restart / one new")];
    row.extend(measured.iter().map(|m| {
        format!(
            "{} / {} / {} / {}",
            calls_cell(&m.burst_calls),
            calls_cell(&m.full_calls),
            calls_cell(&m.restart_calls),
            calls_cell(&m.one_calls)
        )
    }));
    row.push(s("-"));
    g.row(row);
    Ok(Some(g))
}

/// Every figure of one size, from nothing to `n` sidecars and back.
fn measure(
    n: usize,
    image: &str,
    runs: usize,
    callers: usize,
    parallelism: usize,
    xargs_p: &[usize],
    notes: &mut Vec<String>,
) -> Result<Size, String> {
    let run_value = host::unique("scalebench");
    let guard = LabelGuard::new(format!("{RUN_LABEL_KEY}={run_value}"));
    let label = guard.label().to_owned();
    eprintln!("sync bench: part 6, {n} sidecars: creating {n} network namespaces");
    let nss = NetnsSet::create(qdhcp_names(n)?)?;
    // Namespaces for the single new requests: one per run for sidespawn,
    // one per run for the bare podman run.
    // A single start on a host this busy varies by tens of milliseconds
    // from one to the next (podman's own run): more rounds than the other
    // figures, each cheap.
    let singles = env_usize("SIDESPAWN_BENCH_SCALE_SINGLES", 3 * runs).max(1);
    let extra = NetnsSet::create(qdhcp_names(2 * singles)?)?;
    let dir = TempDir::new("sidespawn-scalebench");
    let (shim, log) = podman_shim(dir.path())?;

    // The baselines run exactly the argv the sync runs: built by the same
    // function from the same queued records.
    let probe = SyncHost::new(image, &run_value, parallelism, Path::new("podman"))?;
    eprintln!("sync bench: part 6, {n} sidecars: queueing the baseline's requests");
    probe.queue_burst(&nss, callers)?;
    let specs = probe.specs(1)?;
    if specs.len() != n {
        return Err(format!("{} run specs for {n} namespaces", specs.len()));
    }
    let probe_queue = sidespawn::shared::queue::QueueDir::new(
        &probe.cfg.queue_root,
        sidespawn::shared::kind::Kind::Dnsmasq,
    )
    .queue();
    fs::write(&probe_queue, b"").map_err(|e| e.to_string())?;
    if let Some(first) = specs.first() {
        // Untimed: pages podman, runc, conmon and the image in.
        exec_quiet(host::podman().args(first.argv()))?;
    }
    host::remove_containers(&label)?;

    let mut xargs_t = Vec::new();
    for &p in xargs_p {
        eprintln!("sync bench: part 6, {n} sidecars: xargs -P {p}");
        let took = xargs(&specs, p, dir.path())?;
        check_running(&label, n, "xargs -P")?;
        xargs_t.push((p, took));
        host::remove_containers(&label)?;
    }

    eprintln!("sync bench: part 6, {n} sidecars: burst through sidespawn watch");
    let h = SyncHost::new(image, &run_value, parallelism, &shim)?;
    let daemon = h.watch()?;
    let (before, _) = calls_by_sub(&log, 0);
    let t0 = Instant::now();
    h.queue_burst(&nss, callers)?;
    h.wait_acked(n)?;
    let burst = t0.elapsed();
    let burst_rss = daemon.peak_rss_kib();
    daemon.stop()?;
    let (_, burst_calls) = calls_by_sub(&log, before);
    check_running(&label, n, "burst through sidespawn watch")?;
    // No container of this part in the default storage: sidespawn's podman
    // used the part's own.
    let default_store = host::run(host::podman().env_remove(STORAGE_ENV).args([
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label={label}"),
    ]))?;
    if !default_store.trim().is_empty() {
        return Err(format!(
            "containers with {label} in the default podman storage: sidespawn's podman did not inherit {STORAGE_ENV}"
        ));
    }

    eprintln!("sync bench: part 6, {n} sidecars: {runs} full syncs");
    let mut full = Vec::new();
    let mut full_rss = 0;
    let (before, _) = calls_by_sub(&log, 0);
    for _ in 0..runs {
        let (took, rss) = h.timed(&["sync", "--full"])?;
        full.push(took);
        full_rss = full_rss.max(rss);
    }
    let (_, full_calls) = calls_by_sub(&log, before);
    let ps_argv = crate::fleet::logged_calls(&log)
        .into_iter()
        .rfind(|c| c.first().map(String::as_str) == Some("ps"))
        .ok_or("the full syncs made no `podman ps`")?;
    let ps = crate::time_runs(runs, || exec_quiet(host::podman().args(&ps_argv)))?;

    let restarts = runs.min(3);
    eprintln!("sync bench: part 6, {n} sidecars: {restarts} agent restarts");
    let mut restart = Vec::new();
    let mut restart_sync = Vec::new();
    let mut restart_rss = 0;
    let (before, _) = calls_by_sub(&log, 0);
    for _ in 0..restarts {
        clear_acks(&h)?;
        let t0 = Instant::now();
        h.queue_burst(&nss, callers)?;
        let sync = h.sync()?;
        h.wait_acked(n)?;
        restart.push(t0.elapsed());
        restart_sync.push(sync.wall);
        restart_rss = restart_rss.max(logged_rss(&sync.log));
    }
    let (_, restart_calls) = calls_by_sub(&log, before);
    check_running(&label, n, "after the agent restarts")?;

    eprintln!("sync bench: part 6, {n} sidecars: {singles} single new requests");
    let mut one = Vec::new();
    let mut bare = Vec::new();
    let daemon = h.watch()?;
    // What the daemon does when it starts (a first sync) is not the request's.
    wait_idle(&log)?;
    let (before, _) = calls_by_sub(&log, 0);
    for i in 0..singles {
        // The bare run's argv, made as the sync makes it.
        probe.queue_one(&extra.names[2 * i + 1])?;
        let spec = probe
            .specs(1_000_000 + i as u64)?
            .pop()
            .ok_or("no run spec for the bare run")?;
        fs::write(&probe_queue, b"").map_err(|e| e.to_string())?;
        let sidespawn_first = i % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == sidespawn_first {
                clear_acks(&h)?;
                let t0 = Instant::now();
                h.queue_one(&extra.names[2 * i])?;
                h.wait_acked(1)?;
                one.push(t0.elapsed());
            } else {
                let t0 = Instant::now();
                exec_quiet(host::podman().args(spec.argv()))?;
                bare.push(t0.elapsed());
            }
        }
    }
    let one_rss = daemon.peak_rss_kib();
    daemon.stop()?;
    let (_, one_calls) = calls_by_sub(&log, before);
    check_running(&label, n + 2 * singles, "after the single new requests")?;

    notes.push(format!(
        "part 6, {n} sidecars: burst {} (xargs: {}); restarts: {}; load average now {}",
        fmt_dur(burst),
        xargs_t
            .iter()
            .map(|(p, d)| format!("-P {p} {}", fmt_dur(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        restart
            .iter()
            .map(|d| fmt_dur(*d))
            .collect::<Vec<_>>()
            .join(", "),
        host::loadavg()
    ));
    eprintln!("sync bench: part 6, {n} sidecars: removing them");
    drop(guard);
    drop(extra);
    drop(nss);
    Ok(Size {
        n,
        burst,
        burst_rss,
        burst_calls,
        xargs: xargs_t,
        full,
        full_rss,
        full_calls,
        ps: median(&ps),
        restart,
        restart_sync,
        restart_rss,
        restart_calls,
        one,
        one_rss,
        one_calls,
        bare,
    })
}
