//! Parts 4 and 5: a host with many sidecars running (what one sync costs
//! when there is nothing or almost nothing to do), and the replacement of
//! running sidecars by `sidespawn upgrade` (how long each one is down).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sidespawn::host::runtime::{Call, call_args};
use sidespawn::shared::kind::Kind;

use crate::host::{self, LabelGuard, NetnsSet, TempDir};
use crate::real_podman::{SyncHost, check_running, dnsmasq_image};
use crate::report::{Table, fmt_dur, fmt_kib, median, percentile, ratio, verdict};
use crate::{
    RUN_LABEL_KEY, env_usize, exec_quiet, missing_for_podman, podman_shim, qdhcp_names, s,
    time_runs,
};

/// The calls logged by a [`podman_shim`] so far, each as its argv (one line
/// per call, arguments separated by 0x1f).
pub fn logged_calls(log: &Path) -> Vec<Vec<String>> {
    fs::read(log)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(|&b| b == 0x1f)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .collect()
}

fn all_one(calls: &[usize]) -> bool {
    calls.iter().all(|&c| c == 1)
}

fn calls_cell(calls: &[usize]) -> String {
    let (min, max) = (
        calls.iter().min().copied().unwrap_or(0),
        calls.iter().max().copied().unwrap_or(0),
    );
    if min == max {
        format!("{min} podman call(s) each")
    } else {
        format!("{min}-{max} podman calls")
    }
}

pub fn part4(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let n = env_usize("SIDESPAWN_BENCH_STEADY", 500).max(1);
    let runs = env_usize("SIDESPAWN_BENCH_STEADY_RUNS", 20).max(1);
    t.section(format!(
        "4. Steady state: {n} sidecars running, a sync with nothing or one repeated request to do; median of {runs} runs"
    ));
    if let Some(why) = missing_for_podman() {
        println!("SKIPPED (needs root + podman): steady state ({why})");
        t.skipped("steady state", &why);
        return Ok(None);
    }
    let image = dnsmasq_image()?;
    let run_value = host::unique("syncbench");
    let guard = LabelGuard::new(format!("{RUN_LABEL_KEY}={run_value}"));
    eprintln!("sync bench: part 4, creating {n} network namespaces");
    let nss = NetnsSet::create(qdhcp_names(n)?)?;
    let dir = TempDir::new("sidespawn-syncbench-steady");
    let (shim, log) = podman_shim(dir.path())?;
    let h = SyncHost::new(&image, &run_value, 8, &shim)?;
    h.queue_all(&nss)?;
    eprintln!("sync bench: part 4, starting {n} sidecars");
    let first = h.sync()?;
    if !first.stdout.contains(&format!("started {n},")) {
        return Err(format!("the sync did not start {n}: {}", first.stdout));
    }
    check_running(guard.label(), n, "steady state")?;
    notes.push(format!(
        "part 4: the setup's one sync started the {n} sidecars in {}",
        fmt_dur(first.wall)
    ));

    eprintln!("sync bench: part 4, {runs} full syncs");
    let mut full = Vec::new();
    let mut full_rss = Vec::new();
    let mut full_calls = Vec::new();
    for _ in 0..runs {
        let before = logged_calls(&log).len();
        let (took, rss) = h.timed(&["sync", "--full"])?;
        full.push(took);
        full_rss.push(rss);
        full_calls.push(logged_calls(&log).len() - before);
    }
    // The floor: the very `podman ps` the sync makes, through the same shim.
    let ps = logged_calls(&log)
        .into_iter()
        .rfind(|c| c.first().map(String::as_str) == Some("ps"))
        .ok_or("the full syncs made no `podman ps`")?;
    let ps_t = time_runs(runs, || {
        exec_quiet(
            Command::new(&shim)
                .args(&ps)
                .env("CONTAINERS_CONF", host::containers_conf()),
        )
    })?;
    let ps_med = median(&ps_t);

    eprintln!("sync bench: part 4, {runs} syncs of one repeated request");
    let mut one = Vec::new();
    let mut one_rss = Vec::new();
    let mut one_calls = Vec::new();
    for i in 0..runs {
        h.queue_one(&nss.names[i % n])?;
        let before = logged_calls(&log).len();
        let (took, rss) = h.timed(&["sync"])?;
        one.push(took);
        one_rss.push(rss);
        one_calls.push(logged_calls(&log).len() - before);
    }
    check_running(guard.label(), n, "steady state, after the syncs")?;

    for (what, v, rss, calls) in [
        (
            format!("sync --full, {n} running, nothing to change"),
            &full,
            &full_rss,
            &full_calls,
        ),
        (
            format!("sync of one repeated start request, {n} running"),
            &one,
            &one_rss,
            &one_calls,
        ),
    ] {
        let m = median(v);
        t.row([
            what,
            fmt_dur(m),
            fmt_dur(percentile(v, 99.0)),
            fmt_kib(crate::report::median_u64(rss)),
            format!("{} (its podman ps alone)", fmt_dur(ps_med)),
            format!("{:.2}×", ratio(m, ps_med)),
            s("1 podman call"),
            format!("{} ({})", verdict(all_one(calls)), calls_cell(calls)),
        ]);
    }
    notes.push(format!(
        "part 4: the podman ps of a sync: podman {}",
        ps.join(" ")
    ));
    drop(nss);
    drop(guard);
    Ok(None)
}

/// The ids of the network namespaces' inodes → the pids of the dnsmasq
/// processes in them, read from `/proc`.
fn dnsmasq_by_netns() -> HashMap<u64, Vec<u32>> {
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let is_dnsmasq = fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == "dnsmasq");
        if !is_dnsmasq {
            continue;
        }
        // "net:[4026532345]"
        let ino = fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| {
                l.to_str()?
                    .strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            });
        if let Some(ino) = ino {
            out.entry(ino).or_default().push(pid);
        }
    }
    out
}

/// Runs `action` while watching the dnsmasq of each namespace (by inode):
/// per namespace, the time from its old dnsmasq's end to a new dnsmasq
/// running there. Polls every 2 ms: a measurement, not a synchronisation.
fn measure_gaps(
    inos: &[u64],
    action: impl FnOnce() -> Result<(), String> + Send,
) -> Result<Vec<Duration>, String> {
    let live = dnsmasq_by_netns();
    let old = inos
        .iter()
        .map(|i| match live.get(i).map(Vec::as_slice) {
            Some([pid]) => Ok(*pid),
            other => Err(format!(
                "want one dnsmasq in namespace inode {i}, found {other:?}"
            )),
        })
        .collect::<Result<Vec<u32>, String>>()?;
    let n = inos.len();
    std::thread::scope(|scope| {
        let worker = scope.spawn(action);
        let mut gone: Vec<Option<Instant>> = vec![None; n];
        let mut back: Vec<Option<Instant>> = vec![None; n];
        let mut finished_at = None;
        while back.iter().any(Option::is_none) {
            host::check_interrupted()?;
            let now = Instant::now();
            let live = dnsmasq_by_netns();
            for i in 0..n {
                let pids = live.get(&inos[i]).map_or(&[][..], Vec::as_slice);
                if gone[i].is_none() && !pids.contains(&old[i]) {
                    gone[i] = Some(now);
                }
                if back[i].is_none() && pids.iter().any(|p| *p != old[i]) {
                    back[i] = Some(now);
                    gone[i].get_or_insert(now);
                }
            }
            if worker.is_finished() {
                let at = *finished_at.get_or_insert(now);
                if now.duration_since(at) > Duration::from_secs(60) {
                    let missing = back.iter().filter(|b| b.is_none()).count();
                    return Err(format!(
                        "{missing} of {n} sidecars not running again 60 s after the replacement ended"
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        worker.join().map_err(|_| s("the replacement panicked"))??;
        Ok(gone
            .iter()
            .zip(&back)
            .map(|(g, b)| match (g, b) {
                (Some(g), Some(b)) => b.saturating_duration_since(*g),
                _ => Duration::ZERO,
            })
            .collect())
    })
}

/// Extra tags of the test image, removed again on drop.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for t in &self.0 {
            // `podman untag IMAGE` alone would remove every name of the
            // image, the test image's own included.
            let _ = exec_quiet(host::podman().args(["untag", t, t]));
        }
    }
}

pub fn part5(t: &mut Table, notes: &mut Vec<String>) -> Result<Option<Table>, String> {
    let n = env_usize("SIDESPAWN_BENCH_UPGRADE_SIDECARS", 10).max(1);
    t.section(format!(
        "5. Upgrade: {n} running dnsmasq sidecars moved to another image one at a time; gap = old dnsmasq gone -> new dnsmasq running in the namespace"
    ));
    if let Some(why) = missing_for_podman() {
        println!("SKIPPED (needs root + podman): upgrade ({why})");
        t.skipped("upgrade gap", &why);
        return Ok(None);
    }
    let image = dnsmasq_image()?;
    let base = format!("localhost/{}", host::unique("sidespawn-bench-upgrade"));
    let (a, b) = (format!("{base}:a"), format!("{base}:b"));
    let _tags = Tags(vec![a.clone(), b.clone()]);
    for tag in [&a, &b] {
        exec_quiet(host::podman().args(["tag", &image, tag]))?;
    }
    let run_value = host::unique("syncbench");
    let guard = LabelGuard::new(format!("{RUN_LABEL_KEY}={run_value}"));
    let nss = NetnsSet::create(qdhcp_names(n)?)?;
    let inos = nss
        .names
        .iter()
        .map(|name| {
            fs::metadata(Path::new("/run/netns").join(name))
                .map(|m| m.ino())
                .map_err(|e| format!("/run/netns/{name}: {e}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    let mut h = SyncHost::new(&a, &run_value, 8, Path::new("podman"))?;
    h.queue_all(&nss)?;
    // The same sidecars on image a again, numbered past anything the
    // syncs and the upgrade use: what an operator would replace by hand.
    let by_hand = h.specs(1_000)?;
    let stop_timeout = h
        .cfg
        .profile(Kind::Dnsmasq)
        .map_err(|e| e.to_string())?
        .stop_timeout;
    h.sync()?;
    check_running(guard.label(), n, "before the upgrade")?;

    eprintln!("sync bench: part 5, sidespawn upgrade of {n} sidecars");
    h.set_image(&b)?;
    let up = measure_gaps(&inos, || {
        h.timed(&["upgrade", "--kind", "dnsmasq", "--max-parallel", "1"])
            .map(drop)
    })?;
    check_running(guard.label(), n, "after the upgrade")?;
    let on_b = host::run(host::podman().args([
        "ps",
        "--format",
        "{{.Image}}",
        "--filter",
        &format!("label={}", guard.label()),
    ]))?;
    if on_b.lines().filter(|l| *l == b).count() != n {
        return Err(format!("after the upgrade, not all {n} run {b}:\n{on_b}"));
    }

    eprintln!("sync bench: part 5, the same replacement by hand");
    let hand = measure_gaps(&inos, || {
        for spec in &by_hand {
            exec_quiet(
                host::podman().args(call_args(&Call::Stop(spec.name.clone(), stop_timeout))),
            )?;
            exec_quiet(host::podman().args(call_args(&Call::Remove(spec.name.clone()))))?;
            exec_quiet(host::podman().args(spec.argv()))?;
        }
        Ok(())
    })?;
    check_running(guard.label(), n, "after the replacement by hand")?;

    let (um, hm) = (median(&up), median(&hand));
    t.row([
        s("sidespawn upgrade --max-parallel 1: gap per sidecar"),
        fmt_dur(um),
        fmt_dur(percentile(&up, 99.0)),
        s("-"),
        format!("{} (by hand: podman stop, rm, run -d)", fmt_dur(hm)),
        format!("{:.2}×", ratio(um, hm)),
        s("< 1 s"),
        verdict(percentile(&up, 99.0) < Duration::from_secs(1)),
    ]);
    let list = |v: &[Duration]| v.iter().map(|d| fmt_dur(*d)).collect::<Vec<_>>().join(", ");
    notes.push(format!(
        "part 5: gaps — upgrade: {}; by hand: {}",
        list(&up),
        list(&hand)
    ));
    drop(nss);
    drop(guard);
    Ok(None)
}
