//! The figures of `status --json`, per kind, in the Prometheus text
//! exposition format (version 0.0.4): `sidespawn status --metrics` prints
//! them, and `sidespawn watch --metrics-file PATH` rewrites a file with them
//! after every sync, for node_exporter's textfile collector.
//!
//! Rendered from the same [`Report`] as the table and the JSON, so the three
//! never disagree. Every family is written with its `# HELP` and `# TYPE`
//! once, and every kind of the report gets a sample in each per-kind family
//! (0 when it has none), so an alert on a missing series is not needed. The
//! file is replaced atomically (a hidden temporary file renamed into place),
//! as the collector reads it at any moment and ignores names not ending in
//! `.prom`.

use std::fmt::Write as _;
use std::path::Path;

use crate::host::atomic::{WriteError, write_file};
use crate::host::status::Report;

/// A sidecar's usual states (podman's, and `missing`: desired without a
/// container), always written (0 when no sidecar is in it), so their series
/// do not come and go. Other states the engine reports are written when
/// they occur.
const STATES: [&str; 5] = ["running", "exited", "created", "paused", "missing"];

/// Writes one metric family: its HELP and TYPE, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP sidespawn_{name} {help}");
    let _ = writeln!(out, "# TYPE sidespawn_{name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "sidespawn_{name} {v}");
        } else {
            let _ = writeln!(out, "sidespawn_{name}{{{labels}}} {v}");
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report in the Prometheus text format.
pub fn render(rep: &Report) -> String {
    let mut out = String::new();
    let per_kind = |f: &dyn Fn(&crate::host::status::KindReport) -> f64| -> Vec<(String, f64)> {
        rep.kinds
            .iter()
            .map(|k| (format!("kind=\"{}\"", k.kind.as_str()), f(k)))
            .collect()
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    family(
        &mut out,
        "healthy",
        "gauge",
        "1 when every desired sidecar runs, every queue is readable, the state directory is writable and no last sync failed (status's exit code 0).",
        &[(String::new(), b(rep.healthy))],
    );
    family(
        &mut out,
        "state_writable",
        "gauge",
        "1 when the host state directory can be written; every sync fails while it is 0.",
        &[(String::new(), b(rep.state_error.is_none()))],
    );
    family(
        &mut out,
        "queue_readable",
        "gauge",
        "1 when the kind's queue and desired table could be read.",
        &per_kind(&|k| b(k.error.is_none())),
    );
    family(
        &mut out,
        "queue_depth",
        "gauge",
        "Requests waiting in the kind's queue file.",
        &per_kind(&|k| k.queue_depth as f64),
    );
    family(
        &mut out,
        "queue_pending",
        "gauge",
        "1 when the kind's pending marker is set.",
        &per_kind(&|k| b(k.pending)),
    );
    family(
        &mut out,
        "oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest queued request (0 when none is queued).",
        &per_kind(&|k| k.oldest_pending_age_s.unwrap_or(0) as f64),
    );
    family(
        &mut out,
        "last_sync_timestamp_seconds",
        "gauge",
        "When the kind's last sync finished, Unix time (0: never).",
        &per_kind(&|k| {
            k.last_sync
                .as_ref()
                .map_or(0.0, |s| s.last_sync_ms as f64 / 1000.0)
        }),
    );
    family(
        &mut out,
        "last_sync_ok",
        "gauge",
        "1 when the kind's last sync ran (per-request failures do not count), 0 when it failed or none ran.",
        &per_kind(&|k| b(k.last_sync.as_ref().is_some_and(|s| s.ok))),
    );
    family(
        &mut out,
        "sync_consecutive_failures",
        "gauge",
        "Failed syncs of the kind in a row.",
        &per_kind(&|k| {
            k.last_sync
                .as_ref()
                .map_or(0.0, |s| f64::from(s.consecutive_failures))
        }),
    );
    family(
        &mut out,
        "claimed_total",
        "counter",
        "Requests claimed by every sync of the kind so far.",
        &per_kind(&|k| k.last_sync.as_ref().map_or(0.0, |s| s.total_claimed as f64)),
    );
    family(
        &mut out,
        "rejected_total",
        "counter",
        "Requests rejected by every sync of the kind so far.",
        &per_kind(&|k| {
            k.last_sync
                .as_ref()
                .map_or(0.0, |s| s.total_rejected as f64)
        }),
    );
    family(
        &mut out,
        "last_sync_failed_requests",
        "gauge",
        "Requests the kind's last sync answered failed.",
        &per_kind(&|k| k.last_sync.as_ref().map_or(0.0, |s| s.failed as f64)),
    );
    family(
        &mut out,
        "restarts_in_window",
        "gauge",
        "Automatic restarts of the kind's sidecars inside the restart policy's window.",
        &per_kind(&|k| k.restart.restarts_in_window as f64),
    );
    family(
        &mut out,
        "desired_sidecars",
        "gauge",
        "Sidecars of the kind that agents want (the desired table).",
        &per_kind(&|k| k.desired as f64),
    );
    family(
        &mut out,
        "desired_running_sidecars",
        "gauge",
        "Desired sidecars of the kind that run.",
        &per_kind(&|k| k.desired_running as f64),
    );
    family(
        &mut out,
        "max_sidecars",
        "gauge",
        "The kind's max_sidecars limit.",
        &per_kind(&|k| k.max_sidecars as f64),
    );
    let mut by_state = Vec::new();
    for k in &rep.kinds {
        let mut states: Vec<&str> = STATES.to_vec();
        for s in &rep.sidecars {
            if s.kind.as_deref() == Some(k.kind.as_str()) && !states.contains(&s.state.as_str()) {
                states.push(&s.state);
            }
        }
        for st in states {
            let n = rep
                .sidecars
                .iter()
                .filter(|s| s.kind.as_deref() == Some(k.kind.as_str()) && s.state == st)
                .count();
            by_state.push((
                format!("kind=\"{}\",state=\"{}\"", k.kind.as_str(), escape(st)),
                n as f64,
            ));
        }
    }
    family(
        &mut out,
        "sidecars",
        "gauge",
        "This configuration's sidecar containers of the kind, by state.",
        &by_state,
    );
    out
}

/// Replaces `path` with the metrics atomically; `tmp_tag` makes the
/// temporary name unique per writer (the watch daemon's workers write in
/// parallel), and it is hidden and not `*.prom`, so the collector skips it.
pub fn write(path: &Path, rep: &Report, tmp_tag: &str) -> Result<(), WriteError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.{tmp_tag}.tmp");
    write_file(path, &tmp, render(rep).as_bytes(), 0o644, false)
}

/// Parses the text format as a scraper would, strictly: every sample's
/// family has one `# HELP` and one `# TYPE` before it, names and labels are
/// well formed, values are numbers. Returns `name{labels}` to value.
/// Shared with the integration tests (through `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn parse(text: &str) -> Result<std::collections::BTreeMap<String, f64>, String> {
    use std::collections::{BTreeMap, BTreeSet};
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let (mut help, mut types) = (BTreeSet::new(), BTreeSet::new());
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !name_ok(name) || !help.insert(name.to_owned()) {
                return Err(bad("bad or repeated HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if !["counter", "gauge"].contains(&ty) || !types.insert(name.to_owned()) {
                return Err(bad("bad or repeated TYPE"));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = value.parse().map_err(|_| bad("value not a number"))?;
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                for pair in labels.split("\",") {
                    let (k, v) = pair.split_once("=\"").ok_or_else(|| bad("bad label"))?;
                    let unescaped = v
                        .trim_end_matches('"')
                        .replace("\\\\", "")
                        .replace("\\\"", "");
                    if !name_ok(k) || unescaped.contains('"') {
                        return Err(bad("bad label"));
                    }
                }
                name
            }
            None => series,
        };
        if !name_ok(name) || !help.contains(name) || !types.contains(name) {
            return Err(bad("sample before its HELP and TYPE"));
        }
        if out.insert(series.to_owned(), value).is_some() {
            return Err(bad("repeated series"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state::KindStatus;
    use crate::host::status::{KindReport, RestartReport, SidecarReport};
    use crate::shared::kind::Kind;

    fn kind(k: Kind, last: Option<KindStatus>) -> KindReport {
        KindReport {
            kind: k,
            queue_depth: 3,
            pending: true,
            oldest_pending_age_s: Some(42),
            last_sync: last,
            error: None,
            rejects_since_last_sync: None,
            restart: RestartReport {
                enabled: true,
                backoff_s: 5,
                max_restarts: 5,
                window_s: 600,
                restarts_in_window: 2,
            },
            desired: 4,
            desired_running: 3,
            max_sidecars: 1000,
            sidecars: 4,
            at_limit: false,
            dropped: Vec::new(),
        }
    }

    fn sidecar(k: &str, state: &str) -> SidecarReport {
        SidecarReport {
            name: format!("{k}-x"),
            kind: Some(k.into()),
            netns: None,
            tag: None,
            state: state.into(),
            pid: 1,
            uptime_s: None,
            generation: None,
            image: "img".into(),
            request_id: None,
            desired: true,
            restarts: 0,
            last_error: None,
            health: None,
        }
    }

    #[test]
    fn every_figure_of_the_report_is_a_parsable_sample() {
        let synced = KindStatus {
            last_sync_ms: 1_700_000_000_500,
            ok: false,
            error: Some("podman missing".into()),
            consecutive_failures: 2,
            failed: 1,
            total_claimed: 17,
            total_rejected: 5,
            ..KindStatus::default()
        };
        let rep = Report {
            healthy: false,
            instance: "i".into(),
            state_error: None,
            kinds: vec![kind(Kind::Dnsmasq, Some(synced)), kind(Kind::Haproxy, None)],
            sidecars: vec![
                sidecar("dnsmasq", "running"),
                sidecar("dnsmasq", "running"),
                sidecar("dnsmasq", "exited"),
                sidecar("dnsmasq", "weird\"state"),
            ],
            unlabelled: Vec::new(),
        };
        let text = render(&rep);
        let m = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |s: &str| *m.get(s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
        assert_eq!(get("sidespawn_healthy"), 0.0);
        assert_eq!(get("sidespawn_state_writable"), 1.0);
        assert_eq!(get("sidespawn_queue_depth{kind=\"dnsmasq\"}"), 3.0);
        assert_eq!(get("sidespawn_queue_pending{kind=\"haproxy\"}"), 1.0);
        assert_eq!(
            get("sidespawn_oldest_pending_age_seconds{kind=\"dnsmasq\"}"),
            42.0
        );
        assert_eq!(
            get("sidespawn_last_sync_timestamp_seconds{kind=\"dnsmasq\"}"),
            1_700_000_000.5
        );
        assert_eq!(
            get("sidespawn_last_sync_timestamp_seconds{kind=\"haproxy\"}"),
            0.0
        );
        assert_eq!(get("sidespawn_last_sync_ok{kind=\"dnsmasq\"}"), 0.0);
        assert_eq!(
            get("sidespawn_sync_consecutive_failures{kind=\"dnsmasq\"}"),
            2.0
        );
        assert_eq!(get("sidespawn_claimed_total{kind=\"dnsmasq\"}"), 17.0);
        assert_eq!(get("sidespawn_rejected_total{kind=\"dnsmasq\"}"), 5.0);
        assert_eq!(get("sidespawn_restarts_in_window{kind=\"dnsmasq\"}"), 2.0);
        assert_eq!(get("sidespawn_desired_sidecars{kind=\"dnsmasq\"}"), 4.0);
        assert_eq!(
            get("sidespawn_desired_running_sidecars{kind=\"dnsmasq\"}"),
            3.0
        );
        assert_eq!(
            get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"running\"}"),
            2.0
        );
        assert_eq!(
            get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"exited\"}"),
            1.0
        );
        assert_eq!(
            get("sidespawn_sidecars{kind=\"haproxy\",state=\"running\"}"),
            0.0
        );
        assert_eq!(
            get("sidespawn_sidecars{kind=\"dnsmasq\",state=\"weird\\\"state\"}"),
            1.0
        );
        assert!(parse("sidespawn_x 1\n").is_err(), "a sample without HELP");
    }

    #[test]
    fn the_file_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("sidespawn-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidespawn.prom");
        std::fs::write(&path, "old").unwrap();
        let rep = Report {
            healthy: true,
            instance: "i".into(),
            state_error: None,
            kinds: vec![kind(Kind::Radvd, None)],
            sidecars: Vec::new(),
            unlabelled: Vec::new(),
        };
        let written = write(&path, &rep, "radvd");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        written.unwrap();
        assert_eq!(names, ["sidespawn.prom"]);
        assert_eq!(text, render(&rep));
    }
}
