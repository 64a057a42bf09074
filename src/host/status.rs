//! `sidespawn status`: what is queued, how the last sync of each kind went,
//! and which sidecars exist. Read-only: it never claims or changes anything.

use serde::Serialize;

use crate::host::claim::{Limits, SharedDir};
use crate::host::config::HostConfig;
use crate::host::desired::DesiredTable;
use crate::host::runtime::{ContainerInfo, Runtime, SidecarLabels, State, labels};
use crate::host::state::{KindStatus, StateDir};
use crate::shared::kind::Kind;
use crate::shared::record::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot list containers: {0}")]
    List(#[from] crate::host::runtime::RuntimeError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// One kind's queue and last sync (`--json`: `kinds[]`).
#[derive(Debug, Serialize)]
pub struct KindReport {
    pub kind: Kind,
    /// Requests waiting in the queue file.
    pub queue_depth: usize,
    /// Whether the pending marker is set.
    pub pending: bool,
    /// Age in seconds of the oldest queued request.
    pub oldest_pending_age_s: Option<u64>,
    /// The last sync's outcome, when one ran.
    pub last_sync: Option<KindStatus>,
    /// Why the queue could not be read, if it could not.
    pub error: Option<String>,
    /// Lines and requests rejected since the sync before the last one
    /// finished: the last sync's rejects and any logged after it.
    pub rejects_since_last_sync: Option<usize>,
    /// The kind's restart policy.
    pub restart: RestartReport,
    /// Desired sidecars of this kind, and how many of them run.
    pub desired: usize,
    pub desired_running: usize,
    /// The kind's `max_sidecars`, and its sidecars that count against it
    /// (desired or running, by key).
    pub max_sidecars: usize,
    pub sidecars: usize,
    /// Whether the limit is reached: a start of a new sidecar is rejected.
    pub at_limit: bool,
    /// Desired sidecars the host dropped on its own because their
    /// namespace vanished or was made anew, with why (the newest
    /// [`crate::host::dropped::MAX_DROPPED`], oldest first).
    pub dropped: Vec<crate::host::dropped::Dropped>,
}

/// A kind's restart policy and what it did (`kinds[].restart`).
#[derive(Debug, Serialize)]
pub struct RestartReport {
    pub enabled: bool,
    pub backoff_s: u64,
    pub max_restarts: u32,
    pub window_s: u64,
    /// Automatic restarts of this kind's sidecars inside the window.
    pub restarts_in_window: usize,
}

/// One sidecar (`--json`: `sidecars[]`).
#[derive(Debug, Serialize)]
pub struct SidecarReport {
    pub name: String,
    pub kind: Option<String>,
    pub netns: Option<String>,
    pub tag: Option<String>,
    pub state: String,
    pub pid: u32,
    pub uptime_s: Option<u64>,
    pub generation: Option<u64>,
    pub image: String,
    pub request_id: Option<String>,
    /// Whether an agent wants this sidecar (it is in the desired table).
    pub desired: bool,
    /// Automatic restarts inside the policy's window.
    pub restarts: usize,
    /// Why its last start or restart failed, or why it is left dead.
    pub last_error: Option<String>,
    /// `healthy`, or why the kind's `health_cmd` failed, as the last check
    /// found ([`NOT_CHECKED`] when none checked this container); `null`
    /// when the kind has no check or the sidecar is not a running desired
    /// one.
    pub health: Option<String>,
}

/// The whole report (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Report {
    /// True when every desired sidecar runs, every queue is readable, the
    /// state directory can be written and no last sync failed (the exit
    /// code: 0 when true).
    pub healthy: bool,
    /// This configuration's identity: the `io.sidespawn.instance` label
    /// (and name part) of its sidecars.
    pub instance: String,
    /// Why the host state directory cannot be written (full, out of inodes,
    /// read-only); `null` when it can. Every sync fails while it is set.
    pub state_error: Option<String>,
    pub kinds: Vec<KindReport>,
    pub sidecars: Vec<SidecarReport>,
    /// sidespawn containers without an instance label (made by a version
    /// before it): no configuration touches them; remove them by hand.
    /// They do not make the report unhealthy.
    pub unlabelled: Vec<String>,
}

fn state_name(s: &State) -> String {
    match s {
        State::Running => "running".into(),
        State::Created => "created".into(),
        State::Exited => "exited".into(),
        State::Other(o) => o.clone(),
    }
}

/// The last sync of `kind`: its JSON status, unless the failure mark (which
/// needs no free block) is newer, i.e. the syncs since could not write it.
fn last_sync(state: &StateDir, kind: Kind) -> Option<KindStatus> {
    let st = state.status(kind).ok().flatten();
    let Some((failures, at)) = state.failure_mark(kind) else {
        return st;
    };
    match st {
        Some(st) if st.is_current((failures, at)) => Some(st),
        st if failures == 0 => st,
        st => {
            let prev = st.unwrap_or_default();
            Some(KindStatus {
                last_sync_ms: at,
                ok: false,
                error: Some(format!(
                    "the sync failed and could not record why in {}: the state directory is not writable (full?); free space there",
                    state.path().display()
                )),
                consecutive_failures: failures,
                previous_sync_ms: prev.last_sync_ms,
                total_claimed: prev.total_claimed,
                total_rejected: prev.total_rejected,
                ..KindStatus::default()
            })
        }
    }
}

/// Builds the report.
pub fn report(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    only: &[Kind],
) -> Result<Report, StatusError> {
    report_checked(cfg, runtime, only, false)
}

/// What `health` says of a running desired sidecar that the checker has
/// not checked since it started.
pub const NOT_CHECKED: &str = "not checked yet";

/// [`report`]; with `check`, the kinds' health checks run now (and their
/// results are stored) instead of the last stored results being shown.
pub fn report_checked(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    only: &[Kind],
    check: bool,
) -> Result<Report, StatusError> {
    let kinds: Vec<Kind> = if only.is_empty() {
        cfg.enabled_kinds()
    } else {
        only.to_vec()
    };
    let state = StateDir::new(&cfg.state_dir);
    let limits = Limits {
        max_queue_bytes: cfg.max_queue_bytes,
        lock_timeout: cfg.lock_timeout,
        ..Limits::default()
    };
    let now = now_ms();
    let mut kreps = Vec::new();
    for &kind in &kinds {
        let mut r = KindReport {
            kind,
            queue_depth: 0,
            pending: false,
            oldest_pending_age_s: None,
            last_sync: last_sync(&state, kind),
            error: None,
            rejects_since_last_sync: None,
            restart: RestartReport {
                enabled: false,
                backoff_s: 0,
                max_restarts: 0,
                window_s: 0,
                restarts_in_window: 0,
            },
            desired: 0,
            desired_running: 0,
            max_sidecars: 0,
            sidecars: 0,
            at_limit: false,
            dropped: crate::host::dropped::load(&state, kind).unwrap_or_default(),
        };
        if let Some(p) = cfg.kinds.get(&kind) {
            r.restart.enabled = p.restart.enabled;
            r.restart.backoff_s = p.restart.backoff.as_secs();
            r.restart.max_restarts = p.restart.max_restarts;
            r.restart.window_s = p.restart.window.as_secs();
        }
        if let Some(st) = &r.last_sync {
            r.rejects_since_last_sync = crate::host::claim::RejectLog::open(&cfg.state_dir, kind)
                .and_then(|log| log.count_since(st.previous_sync_ms.saturating_add(1)))
                .ok();
        }
        match SharedDir::open(&cfg.queue_root, kind, false, limits.clone()).and_then(|s| {
            let pending = s.is_pending();
            s.peek().map(|p| (pending, p))
        }) {
            Ok((pending, (records, bad))) => {
                r.pending = pending;
                r.queue_depth = records.len() + bad.len();
                r.oldest_pending_age_s = records
                    .iter()
                    .map(|x| x.ts)
                    .min()
                    .map(|t| now.saturating_sub(t) / 1000);
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        kreps.push(r);
    }
    let containers: Vec<ContainerInfo> = runtime.list(&cfg.instance)?;
    // Sidecars counted against each kind's limit, as the sync counts them.
    for kr in &mut kreps {
        if let (Some(p), Ok(table)) = (cfg.kinds.get(&kr.kind), DesiredTable::load(&state, kr.kind))
        {
            kr.max_sidecars = p.max_sidecars;
            kr.sidecars = crate::host::limit::sidecar_keys(p, &table, &containers).len();
            kr.at_limit = kr.sidecars >= p.max_sidecars;
        }
    }
    let now_s = (now / 1000) as i64;
    let listed = containers.clone();
    let mut sidecars: Vec<SidecarReport> = containers
        .into_iter()
        // Only this configuration's sidecars: another configuration
        // sharing this podman has its own desired table and status.
        .filter(|c| crate::host::gc::in_scope(cfg, c))
        .filter(|c| {
            only.is_empty()
                || c.labels
                    .get(labels::KIND)
                    .is_some_and(|k| only.iter().any(|o| o.as_str() == k))
        })
        .map(|c| SidecarReport {
            kind: SidecarLabels::of(&c).kind().map(str::to_owned),
            netns: SidecarLabels::of(&c).netns().map(str::to_owned),
            tag: SidecarLabels::of(&c).tag().map(str::to_owned),
            state: state_name(&c.state),
            pid: c.pid,
            uptime_s: (c.state == State::Running && c.started_at > 0)
                .then(|| now_s.saturating_sub(c.started_at).max(0) as u64),
            generation: SidecarLabels::of(&c).generation(),
            request_id: SidecarLabels::of(&c).request_id().map(str::to_owned),
            image: c.image,
            name: c.name,
            desired: false,
            restarts: 0,
            last_error: None,
            health: None,
        })
        .collect();
    // Desired against actual: each desired sidecar marks its container, or
    // is listed as `missing` when podman has none.
    let mut all_desired_run = true;
    for kr in &mut kreps {
        let kind = kr.kind;
        let table = match DesiredTable::peek(&state, kind) {
            Ok(t) => t,
            Err(e) => {
                kr.error.get_or_insert(e.to_string());
                continue;
            }
        };
        let window_ms = kr.restart.window_s.saturating_mul(1000);
        let sick = match cfg.kinds.get(&kind) {
            Some(p) if p.health_cmd.is_some() => {
                let running: Vec<&ContainerInfo> = listed
                    .iter()
                    .filter(|c| {
                        c.state == State::Running
                            && table.sidecars.values().any(|d| d.container == c.name)
                    })
                    .collect();
                // By container name: whether healthy, and what to show.
                let results: std::collections::BTreeMap<String, (bool, String)> = if check {
                    let failed = crate::host::health::check_and_store(cfg, p, runtime, &running);
                    running
                        .iter()
                        .map(|c| match failed.get(&c.name) {
                            Some(why) => (c.name.clone(), (false, why.clone())),
                            None => (c.name.clone(), (true, "healthy".to_owned())),
                        })
                        .collect()
                } else {
                    // The checker's last word on each container as it is
                    // now; a sidecar started since is not checked yet.
                    let rec = crate::host::health::HealthRecord::load(&state, kind)
                        .map_err(|e| kr.error.get_or_insert(e.to_string()).clone())
                        .unwrap_or_default();
                    running
                        .iter()
                        .map(|c| match rec.of(c) {
                            Some(r) => (c.name.clone(), (r.healthy, r.result.clone())),
                            None => (c.name.clone(), (true, NOT_CHECKED.to_owned())),
                        })
                        .collect()
                };
                for s in sidecars.iter_mut() {
                    if let Some((_, text)) = results.get(&s.name) {
                        s.health = Some(text.clone());
                    }
                }
                results
                    .into_iter()
                    .filter(|(_, (ok, _))| !ok)
                    .map(|(name, (_, why))| (name, why))
                    .collect::<std::collections::BTreeMap<String, String>>()
            }
            _ => Default::default(),
        };
        for d in table.sidecars.values() {
            let restarts = d
                .restarts
                .iter()
                .filter(|&&t| now.saturating_sub(t) < window_ms)
                .count();
            kr.restart.restarts_in_window += restarts;
            kr.desired += 1;
            let existing = sidecars
                .iter_mut()
                .find(|s| s.name == d.container && s.kind.as_deref() == Some(kind.as_str()));
            let running = match existing {
                Some(s) => {
                    s.desired = true;
                    s.restarts = restarts;
                    s.last_error = d.last_error.clone();
                    s.state == "running" && !sick.contains_key(&s.name)
                }
                None => {
                    sidecars.push(SidecarReport {
                        name: d.container.clone(),
                        kind: Some(kind.as_str().to_owned()),
                        netns: d.record.netns.as_ref().map(|n| n.name.clone()),
                        tag: d.record.tag.clone(),
                        state: "missing".into(),
                        pid: 0,
                        uptime_s: None,
                        generation: Some(d.generation),
                        image: d.image.clone(),
                        request_id: Some(d.record.id.clone()),
                        desired: true,
                        restarts,
                        last_error: d.last_error.clone(),
                        health: None,
                    });
                    false
                }
            };
            if running {
                kr.desired_running += 1;
            } else {
                all_desired_run = false;
            }
        }
    }
    let state_error = state.unwritable();
    let healthy = all_desired_run
        && state_error.is_none()
        && kreps
            .iter()
            .all(|k| k.error.is_none() && k.last_sync.as_ref().is_none_or(|s| s.ok));
    // Informational: a podman that cannot answer this already failed the
    // listing above, and an operator still wants the rest of the report.
    let unlabelled = runtime.list_unlabelled().unwrap_or_else(|e| {
        tracing::warn!("cannot list containers without an instance label: {e}");
        Vec::new()
    });
    Ok(Report {
        healthy,
        instance: cfg.instance.clone(),
        state_error,
        kinds: kreps,
        sidecars,
        unlabelled,
    })
}

/// The sidecar table: the header and a line per sidecar (and its last
/// error). Each column is as wide as its widest cell, so names of any
/// length (Neutron's are up to 64 characters) keep the columns aligned.
pub fn sidecar_table(sidecars: &[SidecarReport]) -> String {
    const HEADER: [&str; 7] = [
        "SIDECAR", "STATE", "PID", "UPTIME", "GEN", "DESIRED", "RESTARTS",
    ];
    let rows: Vec<[String; 7]> = sidecars
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.state.clone(),
                s.pid.to_string(),
                s.uptime_s
                    .map(|u| format!("{u}s"))
                    .unwrap_or_else(|| "-".into()),
                s.generation
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                (if s.desired { "yes" } else { "no" }).into(),
                s.restarts.to_string(),
            ]
        })
        .collect();
    // The old fixed widths are the minimum, so short tables look as before.
    let mut width = [48, 9, 8, 8, 4, 7, 8];
    for cells in rows.iter().map(|r| r.each_ref().map(|c| c.chars().count())) {
        for (w, c) in width.iter_mut().zip(cells) {
            *w = (*w).max(c);
        }
    }
    let line = |cells: [&str; 7], rest: &str| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            // Names and states read left to right; numbers line up right.
            if i < 2 {
                l.push_str(&format!("{c:<w$} "));
            } else {
                l.push_str(&format!("{c:>w$} "));
            }
        }
        l.push(' ');
        l.push_str(rest);
        l.push('\n');
        l
    };
    let mut out = line(HEADER, "NETNS / TAG");
    for (s, cells) in sidecars.iter().zip(&rows) {
        let rest = format!(
            "{} {}",
            s.netns.as_deref().unwrap_or("-"),
            s.tag.as_deref().unwrap_or("-")
        );
        out.push_str(&line(cells.each_ref().map(String::as_str), &rest));
        if let Some(e) = &s.last_error {
            out.push_str(&format!("    last error: {e}\n"));
        }
        if let Some(h) = s.health.as_deref().filter(|h| *h != "healthy") {
            out.push_str(&format!("    health: {h}\n"));
        }
    }
    out
}

/// How `status` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The tables, for people.
    Text,
    /// `--json`: the [`Report`] itself.
    Json,
    /// `--metrics`: the Prometheus text format ([`crate::host::metrics`]).
    Metrics,
}

/// Prints the report; returns whether everything is healthy.
pub fn run(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    only: &[Kind],
    format: Format,
    check: bool,
) -> Result<bool, StatusError> {
    use std::io::Write;
    let rep = report_checked(cfg, runtime, only, check)?;
    let mut out = std::io::stdout().lock();
    if format == Format::Metrics {
        out.write_all(crate::host::metrics::render(&rep).as_bytes())?;
        return Ok(rep.healthy);
    }
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut out, &rep).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(rep.healthy);
    }
    if let Some(e) = &rep.state_error {
        writeln!(out, "STATE NOT WRITABLE: {e}")?;
    }
    writeln!(
        out,
        "{:<11} {:>6} {:>8} {:>10}  LAST SYNC",
        "KIND", "QUEUED", "PENDING", "OLDEST"
    )?;
    for k in &rep.kinds {
        let last = match (&k.error, &k.last_sync) {
            // The queue or the desired table: the error names which.
            (Some(e), _) => format!("UNREADABLE: {e}"),
            (None, None) => "never".into(),
            (None, Some(s)) => {
                let ago = now_ms().saturating_sub(s.last_sync_ms) / 1000;
                match &s.error {
                    None => format!(
                        "ok {ago}s ago (claimed {}, failed {}, rejected {}); desired {}, running {}, restarts {} in {}s",
                        s.claimed,
                        s.failed,
                        s.rejected,
                        k.desired,
                        k.desired_running,
                        k.restart.restarts_in_window,
                        k.restart.window_s
                    ),
                    Some(e) => format!(
                        "FAILED {ago}s ago, {} in a row: {e}",
                        s.consecutive_failures
                    ),
                }
            }
        };
        let oldest = k
            .oldest_pending_age_s
            .map(|a| format!("{a}s"))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<11} {:>6} {:>8} {:>10}  {last}",
            k.kind.as_str(),
            k.queue_depth,
            k.pending,
            oldest
        )?;
    }
    for k in &rep.kinds {
        // The latest few; --json has them all.
        for d in k.dropped.iter().rev().take(5) {
            let ago = now_ms().saturating_sub(d.at_ms) / 1000;
            writeln!(
                out,
                "{}: dropped {} {ago}s ago: {}",
                k.kind.as_str(),
                d.key,
                d.reason
            )?;
        }
    }
    for k in rep.kinds.iter().filter(|k| k.at_limit) {
        writeln!(
            out,
            "{}: {} of {} sidecars, at the limit: new ones are rejected (kinds.{}.max_sidecars in {})",
            k.kind.as_str(),
            k.sidecars,
            k.max_sidecars,
            k.kind.as_str(),
            cfg.path.display()
        )?;
    }
    writeln!(out)?;
    out.write_all(sidecar_table(&rep.sidecars).as_bytes())?;
    if rep.sidecars.is_empty() {
        writeln!(out, "(no sidecars)")?;
    }
    writeln!(out, "\ninstance {}", rep.instance)?;
    if !rep.unlabelled.is_empty() {
        writeln!(
            out,
            "{} sidespawn container(s) without an io.sidespawn.instance label (made before it existed; no configuration touches them, remove them by hand once their networks are served again, see README \"Upgrading\"):",
            rep.unlabelled.len()
        )?;
        for n in &rep.unlabelled {
            writeln!(out, "  {n}")?;
        }
    }
    Ok(rep.healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(name: &str) -> SidecarReport {
        SidecarReport {
            name: name.into(),
            kind: Some("dnsmasq".into()),
            netns: Some("qdhcp-x".into()),
            tag: Some("dnsmasq-x".into()),
            state: "running".into(),
            pid: 4242,
            uptime_s: Some(12),
            generation: Some(3),
            image: "img".into(),
            request_id: None,
            desired: true,
            restarts: 0,
            last_error: None,
            health: None,
        }
    }

    /// A 64-character name (and a longer one) widens the first column for
    /// every line, so the other columns stay under their headers.
    #[test]
    fn sidecar_table_stays_aligned_with_long_names() {
        let long = format!("dnsmasq-{}", "a".repeat(56));
        assert_eq!(long.len(), 64);
        let rows = [sidecar("short"), sidecar(&long), sidecar(&"b".repeat(70))];
        let table = sidecar_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        for col in ["STATE", "RESTARTS", "NETNS"] {
            let at = lines[0].find(col).unwrap();
            for l in &lines[1..] {
                let cell = match col {
                    "STATE" => "running",
                    "RESTARTS" => "       0",
                    _ => "qdhcp-x",
                };
                assert_eq!(l.find(cell), Some(at), "{col} in:\n{table}");
            }
        }
        // Short names keep the old layout.
        let short = sidecar_table(&[sidecar("short")]);
        assert_eq!(short.lines().next().unwrap().find("STATE"), Some(49));
    }
}
