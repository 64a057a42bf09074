//! `sidespawn status`: what is queued, how the last sync of each kind went,
//! and which sidecars exist. Read-only: it never claims or changes anything.

use serde::Serialize;

use crate::claim::{Limits, SharedDir};
use crate::config::HostConfig;
use crate::kind::Kind;
use crate::record::now_ms;
use crate::runtime::{ContainerInfo, Runtime, State, labels};
use crate::state::{KindStatus, StateDir};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot list containers: {0}")]
    List(#[from] crate::runtime::RuntimeError),
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
}

/// The whole report (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Report {
    /// True when every sidecar runs and no last sync failed.
    pub healthy: bool,
    pub kinds: Vec<KindReport>,
    pub sidecars: Vec<SidecarReport>,
}

fn state_name(s: &State) -> String {
    match s {
        State::Running => "running".into(),
        State::Created => "created".into(),
        State::Exited => "exited".into(),
        State::Other(o) => o.clone(),
    }
}

/// Builds the report.
pub fn report(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    only: &[Kind],
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
            last_sync: state.status(kind).ok().flatten(),
            error: None,
        };
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
    let containers: Vec<ContainerInfo> = runtime.list()?;
    let now_s = (now / 1000) as i64;
    let sidecars: Vec<SidecarReport> = containers
        .into_iter()
        .filter(|c| {
            only.is_empty()
                || c.labels
                    .get(labels::KIND)
                    .is_some_and(|k| only.iter().any(|o| o.as_str() == k))
        })
        .map(|c| SidecarReport {
            kind: c.labels.get(labels::KIND).cloned(),
            netns: c.labels.get(labels::NETNS).cloned(),
            tag: c.labels.get(labels::TAG).cloned(),
            state: state_name(&c.state),
            pid: c.pid,
            uptime_s: (c.state == State::Running && c.started_at > 0)
                .then(|| now_s.saturating_sub(c.started_at).max(0) as u64),
            generation: c
                .labels
                .get(labels::GENERATION)
                .and_then(|g| g.parse().ok()),
            image: c.image,
            request_id: c.labels.get(labels::REQUEST_ID).cloned(),
            name: c.name,
        })
        .collect();
    let healthy = sidecars.iter().all(|s| s.state == "running")
        && kreps
            .iter()
            .all(|k| k.error.is_none() && k.last_sync.as_ref().is_none_or(|s| s.ok));
    Ok(Report {
        healthy,
        kinds: kreps,
        sidecars,
    })
}

/// Prints the report; returns whether everything is healthy.
pub fn run(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    only: &[Kind],
    json: bool,
) -> Result<bool, StatusError> {
    use std::io::Write;
    let rep = report(cfg, runtime, only)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rep).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(rep.healthy);
    }
    writeln!(
        out,
        "{:<11} {:>6} {:>8} {:>10}  LAST SYNC",
        "KIND", "QUEUED", "PENDING", "OLDEST"
    )?;
    for k in &rep.kinds {
        let last = match (&k.error, &k.last_sync) {
            (Some(e), _) => format!("queue unreadable: {e}"),
            (None, None) => "never".into(),
            (None, Some(s)) => {
                let ago = now_ms().saturating_sub(s.last_sync_ms) / 1000;
                match &s.error {
                    None => format!(
                        "ok {ago}s ago (claimed {}, failed {}, rejected {})",
                        s.claimed, s.failed, s.rejected
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
    writeln!(out)?;
    writeln!(
        out,
        "{:<48} {:<9} {:>8} {:>8} {:>4}  NETNS / TAG",
        "SIDECAR", "STATE", "PID", "UPTIME", "GEN"
    )?;
    for s in &rep.sidecars {
        writeln!(
            out,
            "{:<48} {:<9} {:>8} {:>8} {:>4}  {} {}",
            s.name,
            s.state,
            s.pid,
            s.uptime_s
                .map(|u| format!("{u}s"))
                .unwrap_or_else(|| "-".into()),
            s.generation
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            s.netns.as_deref().unwrap_or("-"),
            s.tag.as_deref().unwrap_or("-"),
        )?;
    }
    if rep.sidecars.is_empty() {
        writeln!(out, "(no sidecars)")?;
    }
    Ok(rep.healthy)
}
