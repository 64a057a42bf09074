//! The real-podman parts' pieces: an isolated host whose queue the real
//! wrapper fills (one call at a time, or as a burst of concurrent callers),
//! the timed `sidespawn sync` and `sidespawn watch`, the baselines running
//! the same argv, and the breakdown read back from the `-v` log.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sidespawn::host::config::HostConfig;
use sidespawn::host::runtime::RunSpec;
use sidespawn::shared::ack::{Ack, Outcome};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;
use sidespawn::shared::record::Record;

use crate::host::{self, NetnsSet, TempDir};
use crate::report::{fmt_dur, median, percentile};
use crate::{HostSetup, SIDECAR_ARGS, s};

/// A random lowercase UUID (version-4 layout), like a Neutron network id.
pub fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The dnsmasq test image: `$SIDESPAWN_BENCH_IMAGE`, else built (or found
/// up to date) by `tests/scripts/build-images.sh`.
pub fn dnsmasq_image() -> Result<String, String> {
    if let Ok(img) = std::env::var("SIDESPAWN_BENCH_IMAGE") {
        return Ok(img);
    }
    let out = host::run(
        Command::new(host::repo_root().join("tests/scripts/build-images.sh"))
            .env("CONTAINERS_CONF", host::containers_conf()),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("dnsmasq="))
        .map(str::to_owned)
        .ok_or_else(|| format!("build-images.sh printed no dnsmasq=: {out}"))
}

/// One isolated host for one timed sync: config, queue and state.
pub struct SyncHost {
    pub dir: TempDir,
    pub cfg_path: PathBuf,
    pub cfg: HostConfig,
    run_label: String,
    parallelism: usize,
    podman: PathBuf,
}

/// Longest wait for a burst or a replacement (far above any healthy value).
const LONG: Duration = Duration::from_secs(600);

/// A running `sidespawn watch`, stopped with SIGTERM (then reaped) on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// The daemon's peak RSS so far (`VmHWM`), in KiB; 0 when unreadable.
    pub fn peak_rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then waits for the daemon to exit.
    pub fn stop(mut self) -> Result<(), String> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<(), String> {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).map_err(|e| e.to_string())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
    }
}

/// What one timed `sidespawn sync -v` did.
pub struct SyncRun {
    pub wall: Duration,
    pub started_unix: f64,
    pub stdout: String,
    pub log: String,
}

impl SyncHost {
    /// A host running `podman` (a name on `PATH` or a shim's path).
    pub fn new(
        image: &str,
        run_label: &str,
        parallelism: usize,
        podman: &Path,
    ) -> Result<SyncHost, String> {
        let dir = TempDir::new("sidespawn-syncbench-podman");
        let (cfg_path, cfg) = HostSetup {
            dir: dir.path(),
            image,
            podman,
            parallelism,
            run_label,
            max_queue_bytes: None,
        }
        .write()?;
        fs::create_dir_all(dir.join("queue/dnsmasq")).map_err(|e| e.to_string())?;
        fs::write(
            dir.join("wrapper.json"),
            serde_json::json!({ "queue_root": dir.join("queue") }).to_string(),
        )
        .map_err(|e| e.to_string())?;
        Ok(SyncHost {
            dir,
            cfg_path,
            cfg,
            run_label: run_label.to_owned(),
            parallelism,
            podman: podman.to_owned(),
        })
    }

    /// Rewrites the configuration with another image (what an operator does
    /// before `sidespawn upgrade`).
    pub fn set_image(&mut self, image: &str) -> Result<(), String> {
        let (cfg_path, cfg) = HostSetup {
            dir: self.dir.path(),
            image,
            podman: &self.podman,
            parallelism: self.parallelism,
            run_label: &self.run_label,
            max_queue_bytes: None,
        }
        .write()?;
        self.cfg_path = cfg_path;
        self.cfg = cfg;
        Ok(())
    }

    /// The wrapper call Neutron makes for namespace `ns`:
    /// `ip netns exec <ns> dnsmasq ARGS` with `PROCESS_TAG` set, the
    /// program being the release wrapper.
    fn wrapper_call(&self, ns: &str) -> Command {
        let uuid = ns.trim_start_matches("qdhcp-");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_sidespawn-wrapper"),
            "--kind",
            "dnsmasq",
            "--",
        ])
        .args(SIDECAR_ARGS)
        .env("SIDESPAWN_WRAPPER_CONFIG", self.dir.join("wrapper.json"))
        .env("PROCESS_TAG", format!("dnsmasq-{uuid}"));
        cmd
    }

    /// Queues one start request for namespace `ns`. Untimed.
    pub fn queue_one(&self, ns: &str) -> Result<(), String> {
        host::run(&mut self.wrapper_call(ns)).map(drop)
    }

    /// Queues one start request per namespace, one after another. Untimed.
    pub fn queue_all(&self, nss: &NetnsSet) -> Result<(), String> {
        for name in &nss.names {
            self.queue_one(name)?;
        }
        let queued = self.queued()?;
        if queued.len() != nss.names.len() {
            return Err(format!(
                "{} requests queued for {} namespaces",
                queued.len(),
                nss.names.len()
            ));
        }
        Ok(())
    }

    /// One start request per namespace from `callers` concurrent callers,
    /// each making its share of the calls one after another (as an agent's
    /// worker threads do). Returns when every caller is done.
    pub fn queue_burst(&self, nss: &NetnsSet, callers: usize) -> Result<(), String> {
        let callers = callers.clamp(1, nss.names.len().max(1));
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..callers)
                .map(|c| {
                    let mine: Vec<&String> = nss.names.iter().skip(c).step_by(callers).collect();
                    scope.spawn(move || mine.into_iter().try_for_each(|ns| self.queue_one(ns)))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| s("a caller panicked"))?)
        })
    }

    /// The acknowledgements written so far: (all, those with result ok).
    pub fn acks(&self) -> Result<(usize, usize), String> {
        let dir = self.cfg.queue_root.join("dnsmasq/acks");
        let mut all = 0;
        let mut ok = 0;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(".json") {
                continue;
            }
            all += 1;
            let ack: Ack = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| format!("unreadable acknowledgement {}", e.path().display()))?;
            ok += usize::from(ack.result == Outcome::Ok);
        }
        Ok((all, ok))
    }

    /// Waits (polling: this is a measurement, not a synchronisation) until
    /// `n` acknowledgements exist; fails unless all of them say ok.
    pub fn wait_acked(&self, n: usize) -> Result<(), String> {
        let dir = self.cfg.queue_root.join("dnsmasq/acks");
        let deadline = Instant::now() + LONG;
        // Acknowledgements only: the host writes each to a temporary file
        // first, which must not count.
        let acked = || {
            fs::read_dir(&dir).map_or(0, |d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
        };
        while acked() < n {
            host::check_interrupted()?;
            if Instant::now() > deadline {
                return Err(format!("fewer than {n} acknowledgements after {LONG:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match self.acks()? {
            (all, ok) if ok == n && all == n => Ok(()),
            (all, ok) => Err(format!("{all} acknowledgements, {ok} ok, want {n} ok")),
        }
    }

    /// Starts `sidespawn watch -v` for this host and waits for its
    /// `READY=1` (the queues are watched from then on).
    pub fn watch(&self) -> Result<Daemon, String> {
        host::check_interrupted()?;
        let sock_path = self.dir.join("notify.sock");
        // A daemon started before on this host left its socket's file.
        let _ = fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).map_err(|e| e.to_string())?;
        // Its first sync lists the containers before it is ready: on a busy
        // host, right after a thousand removals, podman can take minutes.
        sock.set_read_timeout(Some(LONG))
            .map_err(|e| e.to_string())?;
        let log = self.dir.join("watch.log");
        let child = self
            .sidespawn(&["watch", "-v", "--interval", "3600"])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start sidespawn watch: {e}"))?;
        let daemon = Daemon { child, log };
        let mut buf = [0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .map_err(|e| format!("no READY=1 from sidespawn watch: {e}"))?;
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok(daemon);
            }
        }
    }

    /// Runs `sidespawn -v ARGS` to exit: its wall time and its own peak RSS
    /// in KiB, as it logs it at exit (`wait4` would count the podman
    /// processes it ran as well).
    pub fn timed(&self, args: &[&str]) -> Result<(Duration, u64), String> {
        host::check_interrupted()?;
        let log_path = self.dir.join("timed.log");
        let log = File::create(&log_path).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let status = self
            .sidespawn(&["-v"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .map_err(|e| format!("cannot start sidespawn: {e}"))?;
        let took = t.elapsed();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "sidespawn {args:?} failed ({status}):\n{}",
                tail(&log, 20)
            ));
        }
        let rss = log
            .split_whitespace()
            .find_map(|w| w.strip_prefix("peak_rss_kib="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((took, rss))
    }

    pub fn queued(&self) -> Result<Vec<Record>, String> {
        let q = QueueDir::new(&self.cfg.queue_root, Kind::Dnsmasq).queue();
        let text = fs::read(&q).map_err(|e| format!("read {}: {e}", q.display()))?;
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Record::parse_line(l).map_err(|e| e.to_string()))
            .collect()
    }

    /// The run specs the sync makes of the queued requests, numbered from
    /// generation `first`.
    pub fn specs(&self, first: u64) -> Result<Vec<RunSpec>, String> {
        let profile = self.cfg.profile(Kind::Dnsmasq).map_err(|e| e.to_string())?;
        Ok(self
            .queued()?
            .iter()
            .zip(first..)
            .map(|(r, g)| sidespawn::host::plan::run_spec(profile, Path::new("/run/netns"), r, g))
            .collect())
    }

    /// The release `sidespawn --config <this host's> ARGS`, with the test
    /// podman configuration and plain log lines (for the profiles).
    fn sidespawn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidespawn"));
        cmd.arg("--config")
            .arg(&self.cfg_path)
            .args(args)
            .env("CONTAINERS_CONF", host::containers_conf())
            .env("NO_COLOR", "1");
        cmd
    }

    /// The `podman run` lines of `sync --dry-run` (changes nothing).
    pub fn dry_run(&self) -> Result<Vec<String>, String> {
        let out = host::run(&mut self.sidespawn(&["sync", "--dry-run"]))?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with("podman run "))
            .map(str::to_owned)
            .collect())
    }

    /// Times `sidespawn sync -v` from spawn to exit.
    pub fn sync(&self) -> Result<SyncRun, String> {
        let out_path = self.dir.join("sync.out");
        let log_path = self.dir.join("sync.log");
        host::check_interrupted()?;
        let stdout = File::create(&out_path).map_err(|e| e.to_string())?;
        let stderr = File::create(&log_path).map_err(|e| e.to_string())?;
        let started_unix = unix_now();
        let t = Instant::now();
        let mut child = self
            .sidespawn(&["sync", "-v"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start sidespawn: {e}"))?;
        let status = child.wait().map_err(|e| e.to_string())?;
        let wall = t.elapsed();
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "sidespawn sync failed ({status}):\n{stdout}\n{}",
                tail(&log, 20)
            ));
        }
        Ok(SyncRun {
            wall,
            started_unix,
            stdout,
            log,
        })
    }
}

/// Seconds since the epoch, as the log lines' timestamps count them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Removes the generation label, the one thing a dry run and a later
/// identical plan may number differently.
pub fn without_generation(line: &str) -> String {
    line.split(' ')
        .filter(|w| !w.starts_with("--label=io.sidespawn.generation="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Requires exactly `want` running containers under `label`.
pub fn check_running(label: &str, want: usize, phase: &str) -> Result<(), String> {
    let running = host::containers_with(label, Some("running"))?;
    if running.len() != want {
        let all = host::run(host::podman().args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Status}}",
            "--filter",
            &format!("label={label}"),
        ]))?;
        return Err(format!(
            "{phase}: {} of {want} sidecars running:\n{}",
            running.len(),
            tail(&all, 10)
        ));
    }
    Ok(())
}

/// The baseline: the same `podman run -d` through `xargs -P`, the argv
/// NUL-separated so nothing is re-split (every argv has the same length).
pub fn xargs(specs: &[RunSpec], parallelism: usize, dir: &Path) -> Result<Duration, String> {
    let argvs: Vec<Vec<String>> = specs.iter().map(RunSpec::argv).collect();
    let len = argvs.first().map_or(0, Vec::len);
    if argvs.iter().any(|a| a.len() != len) {
        return Err(s("argv lengths differ; xargs -n cannot split them"));
    }
    let mut input = Vec::new();
    for word in argvs.iter().flatten() {
        input.extend_from_slice(word.as_bytes());
        input.push(0);
    }
    let path = dir.join("xargs-input");
    fs::write(&path, &input).map_err(|e| e.to_string())?;
    let stdin = File::open(&path).map_err(|e| e.to_string())?;
    host::check_interrupted()?;
    let t = Instant::now();
    let status = Command::new("xargs")
        .args([
            "-0",
            "-P",
            &parallelism.to_string(),
            "-n",
            &len.to_string(),
            "podman",
        ])
        .env("CONTAINERS_CONF", host::containers_conf())
        .stdin(stdin)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start xargs: {e}"))?;
    let took = t.elapsed();
    if !status.success() {
        return Err(format!("xargs podman run exited with {status}"));
    }
    Ok(took)
}

/// Where the time of one sync went, from its `-v` log.
#[derive(Default, Clone)]
pub struct SyncProfile {
    lock_held: String,
    ps_ms: Vec<u64>,
    run_ms: Vec<u64>,
    /// Other engine calls (inspections, the event stream), by subcommand.
    others: std::collections::BTreeMap<String, usize>,
    /// Spawn to the start of the first `podman run`.
    to_first_run: f64,
    /// First `podman run` start to last `podman run` end.
    run_span: f64,
    /// Last `podman run` end to exit.
    tail: f64,
}

/// Seconds since the epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-11-21T13:16:45.433537Z`), ignoring leap seconds.
pub fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

pub fn profile_sync(run: &SyncRun) -> SyncProfile {
    let mut p = SyncProfile::default();
    let mut first_run_start: Option<f64> = None;
    let mut last_run_end: Option<f64> = None;
    for line in run.log.lines() {
        let Some(ts) = log_time(line) else { continue };
        if let Some(i) = line.find("lock held ") {
            p.lock_held = line[i + 10..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
        }
        if !line.contains("engine call finished") {
            continue;
        }
        let Some(ms) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("elapsed_ms="))
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(argv) = line.split_once("argv=").map(|x| x.1) else {
            continue;
        };
        let sub = argv.split_whitespace().nth(1).unwrap_or("");
        match sub {
            "ps" => p.ps_ms.push(ms),
            "run" => {
                p.run_ms.push(ms);
                let start = ts - ms as f64 / 1000.0;
                first_run_start = Some(first_run_start.map_or(start, |f: f64| f.min(start)));
                last_run_end = Some(last_run_end.map_or(ts, |l: f64| l.max(ts)));
            }
            other => *p.others.entry(other.to_owned()).or_default() += 1,
        }
    }
    let t0 = run.started_unix;
    let end = t0 + run.wall.as_secs_f64();
    if let (Some(a), Some(b)) = (first_run_start, last_run_end) {
        p.to_first_run = a - t0;
        p.run_span = b - a;
        p.tail = end - b;
    }
    p
}

/// The breakdown of the syncs from their `-v` logs, as a note.
pub fn profile_notes(profiles: &[SyncProfile], parallelism: usize) -> String {
    let secs = |v: Vec<f64>| {
        let d: Vec<Duration> = v
            .into_iter()
            .map(|x| Duration::from_secs_f64(x.max(0.0)))
            .collect();
        fmt_dur(median(&d))
    };
    let ms_all: Vec<Duration> = profiles
        .iter()
        .flat_map(|p| p.run_ms.iter().map(|m| Duration::from_millis(*m)))
        .collect();
    let ps: Vec<String> = profiles
        .iter()
        .map(|p| {
            p.ps_ms
                .iter()
                .map(|m| format!("{m} ms"))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    let mut c: Vec<f64> = profiles
        .iter()
        .map(|p| p.run_ms.iter().sum::<u64>() as f64 / 1000.0 / p.run_span.max(1e-9))
        .collect();
    c.sort_by(f64::total_cmp);
    format!(
        "profile (from the `-v` log; medians over repeats):\n\
         \x20 podman ps per run: [{}]; other engine calls per run: [{}]; claim lock held {}\n\
         \x20 start → first podman run starts {}; runs span {}; last run end → done {}\n\
         \x20 podman run: {} calls per run, per call median {} / p90 {} / max {}\n\
         \x20 effective concurrency of the runs (sum of call times ÷ span): {:.2} (limit {parallelism})",
        ps.join("; "),
        profiles
            .iter()
            .map(|p| p
                .others
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "))
            .collect::<Vec<_>>()
            .join("; "),
        profiles
            .iter()
            .map(|p| p.lock_held.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        secs(profiles.iter().map(|p| p.to_first_run).collect()),
        secs(profiles.iter().map(|p| p.run_span).collect()),
        secs(profiles.iter().map(|p| p.tail).collect()),
        ms_all.len() / profiles.len().max(1),
        fmt_dur(median(&ms_all)),
        fmt_dur(percentile(&ms_all, 90.0)),
        fmt_dur(ms_all.iter().max().copied().unwrap_or_default()),
        c.get(c.len() / 2).copied().unwrap_or(0.0),
    )
}
