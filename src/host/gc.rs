//! `sidespawn gc`: removes what no agent wants any more — our containers
//! that are exited or only created and not desired, sidecars (in any state)
//! whose namespace vanished or was recreated, and acknowledgements older than
//! `ack_max_age_s`. A desired sidecar that died is left alone: it is the
//! restart policy's to start again, and `status` shows it.
//!
//! Deciding is pure ([`decide`]); [`collect`] lists, decides, removes and
//! keeps the desired table consistent, with the kinds' sync locks held by
//! its caller: the backstop's `sync --full` calls it under the locks it
//! already holds. [`run`], the `gc` command, is the layer above: it takes
//! the locks, collects and prints. So the sync depends on the collection,
//! never on the command.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::host::claim::{Limits, SharedDir};
use crate::host::config::HostConfig;
use crate::host::desired::DesiredTable;
use crate::host::namespaces::Namespaces;
use crate::host::runtime::{ContainerInfo, Runtime, RuntimeError, SidecarLabels, State, labels};
use crate::host::state::{StateDir, StateError};
use crate::shared::kind::Kind;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("cannot list containers: {0}")]
    List(#[source] RuntimeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0} container(s) could not be removed")]
    NotRemoved(usize),
    #[error("garbage of {} kind(s) could not be collected: {}", .0.len(), describe_kinds(.0))]
    Kinds(Vec<(Kind, StateError)>),
}

fn describe_kinds(failed: &[(Kind, StateError)]) -> String {
    failed
        .iter()
        .map(|(k, e)| format!("{k}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One container to remove, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub kind: Kind,
    pub container: String,
    pub reason: String,
    /// The desired key it held, when the namespace is gone.
    pub forget_key: Option<String>,
}

/// Decides which of `kind`'s containers go. Only containers carrying
/// every label in `scope` (the profile's own `labels`) are considered: the
/// desired table belongs to one state directory, and a second configuration
/// sharing this podman (a staging setup, a test) must never have its
/// sidecars collected as "not desired" by ours.
pub fn decide(
    kind: Kind,
    scope: &BTreeMap<String, String>,
    actual: &[ContainerInfo],
    desired: &DesiredTable,
    namespaces: &dyn Namespaces,
) -> Vec<Removal> {
    let mut out = Vec::new();
    for c in actual
        .iter()
        .filter(|c| SidecarLabels::of(c).is_profiles(kind, scope))
    {
        let l = SidecarLabels::of(c);
        let key = l.key();
        if let (Some(ns), Some(ino)) = (l.netns(), l.netns_ino()) {
            let now = namespaces.inode(ns);
            if now.map(|i| i.to_string()).as_deref() != Some(ino) {
                let reason = match now {
                    None => format!("namespace {ns} is gone"),
                    Some(i) => format!("namespace {ns} was recreated (inode {ino}, now {i})"),
                };
                let forget_key = key
                    .filter(|k| {
                        desired
                            .sidecars
                            .get(*k)
                            .is_some_and(|d| d.container == c.name)
                    })
                    .map(str::to_owned);
                out.push(Removal {
                    kind,
                    container: c.name.clone(),
                    reason,
                    forget_key,
                });
                continue;
            }
        }
        if !matches!(c.state, State::Exited | State::Created) {
            continue;
        }
        let wanted = key
            .and_then(|k| desired.sidecars.get(k))
            .is_some_and(|d| d.container == c.name);
        if !wanted {
            let state = if c.state == State::Exited {
                "exited"
            } else {
                "created"
            };
            out.push(Removal {
                kind,
                container: c.name.clone(),
                reason: format!("{state} and no longer desired"),
                forget_key: None,
            });
        }
    }
    out
}

/// Whether `c` belongs to this configuration: it carries its instance
/// label and every label of its kind's profile `labels` (a kind not
/// configured here: not ours).
pub fn in_scope(cfg: &HostConfig, c: &ContainerInfo) -> bool {
    let l = SidecarLabels::of(c);
    l.instance() == Some(cfg.instance.as_str())
        && l.kind()
            .and_then(|k| cfg.kinds.values().find(|p| p.kind.as_str() == k))
            .is_some_and(|p| l.has_all(&p.labels))
}

/// What one gc did (or, dry, would do).
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    /// Removals that failed, with the error.
    pub failed: Vec<(Removal, String)>,
    /// Acknowledgements pruned (or that would be), per kind.
    pub acks: Vec<(Kind, usize)>,
    /// Kinds whose desired table could not be read or written: left out,
    /// while the other kinds are collected (one kind's broken state is its
    /// own).
    pub kinds_failed: Vec<(Kind, StateError)>,
}

/// Old acknowledgements in a kind's `acks/`, counted without changing
/// anything (for `--dry-run`). Reads metadata only, never following a link.
fn count_old_acks(queue_root: &Path, kind: Kind, max_age: Duration) -> usize {
    let Some(cutoff) = SystemTime::now().checked_sub(max_age) else {
        return 0;
    };
    let dir = queue_root
        .join(kind.as_str())
        .join(crate::shared::queue::ACKS_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter(|e| {
            std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| !m.is_dir() && m.modified().is_ok_and(|t| t < cutoff))
        })
        .count()
}

/// `sidespawn gc`: collects garbage for `kinds` (empty: every enabled
/// kind) under their sync locks (none for a dry run, which changes
/// nothing), prints what it removed, and fails when a removal failed.
pub fn run(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    kinds: &[Kind],
    dry_run: bool,
) -> Result<GcReport, GcError> {
    let kinds = if kinds.is_empty() {
        cfg.enabled_kinds()
    } else {
        kinds.to_vec()
    };
    // The same locks as a sync of these kinds: gc edits their desired
    // tables and must not remove a container a sync is about to reuse.
    let _locks = if dry_run {
        Vec::new()
    } else {
        StateDir::new(&cfg.state_dir).sync_locks(&kinds, crate::host::state::SYNC_LOCK_TIMEOUT)?
    };
    let mut report = collect(cfg, runtime, namespaces, &kinds, dry_run, None)?;
    print(&report, dry_run, cfg.ack_max_age);
    if !report.kinds_failed.is_empty() {
        Err(GcError::Kinds(std::mem::take(&mut report.kinds_failed)))
    } else if report.failed.is_empty() {
        Ok(report)
    } else {
        Err(GcError::NotRemoved(report.failed.len()))
    }
}

/// Collects garbage for `kinds`: the step both `gc` ([`run`]) and the
/// backstop's `sync --full` call. The caller holds their sync locks unless
/// `dry_run`. `listed` is a container list the caller took under those
/// locks with nothing started or removed since; without one, podman is
/// asked.
pub fn collect(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    kinds: &[Kind],
    dry_run: bool,
    listed: Option<Vec<ContainerInfo>>,
) -> Result<GcReport, GcError> {
    let state = StateDir::new(&cfg.state_dir);
    let actual = match listed {
        Some(a) => a,
        None => runtime.list(&cfg.instance).map_err(GcError::List)?,
    };
    let mut report = GcReport::default();
    for &kind in kinds {
        // A dry run holds no lock, so it must not migrate the table.
        let loaded = if dry_run {
            DesiredTable::peek(&state, kind)
        } else {
            DesiredTable::load_meta(&state, kind)
        };
        let mut desired = match loaded {
            Ok(t) => t,
            Err(e) => {
                warn!(kind = %kind, "cannot collect {kind}'s garbage: {e}");
                report.kinds_failed.push((kind, e));
                continue;
            }
        };
        // The list is already this configuration's (the runtime filters on
        // the instance); the instance is in the scope too so that no list
        // handed in can widen it.
        let mut scope = cfg
            .kinds
            .get(&kind)
            .map(|p| p.labels.clone())
            .unwrap_or_default();
        scope.insert(labels::INSTANCE.to_owned(), cfg.instance.clone());
        let removals = decide(kind, &scope, &actual, &desired, namespaces);
        let mut forgot = false;
        let mut dropped = Vec::new();
        for r in removals {
            if dry_run {
                report.removed.push(r);
                continue;
            }
            match runtime.remove(&r.container) {
                Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => {
                    info!(kind = %kind, container = %r.container, "removed: {}", r.reason);
                    if let Some(k) = &r.forget_key
                        && desired.sidecars.remove(k).is_some()
                    {
                        forgot = true;
                        dropped.push((k.clone(), r.reason.clone()));
                    }
                    report.removed.push(r);
                }
                Err(e) => {
                    warn!(kind = %kind, container = %r.container, "cannot remove: {e}");
                    report.failed.push((r, e.to_string()));
                }
            }
        }
        if forgot {
            match desired.store(&state, kind) {
                Ok(()) => crate::host::dropped::record(&state, kind, dropped),
                Err(e) => {
                    warn!(kind = %kind, "cannot record the sidecars gc forgot: {e}");
                    report.kinds_failed.push((kind, e));
                }
            }
        }
        if dry_run {
            report
                .acks
                .push((kind, count_old_acks(&cfg.queue_root, kind, cfg.ack_max_age)));
            continue;
        }
        let limits = Limits {
            max_queue_bytes: cfg.max_queue_bytes,
            lock_timeout: cfg.lock_timeout,
            ..Limits::default()
        };
        match SharedDir::open(&cfg.queue_root, kind, false, limits)
            .and_then(|s| s.prune_acks(cfg.ack_max_age))
        {
            Ok(n) => report.acks.push((kind, n)),
            // No queue directory yet means no acknowledgements either.
            Err(crate::host::claim::ClaimError::NoQueueDir(_)) => report.acks.push((kind, 0)),
            Err(e) => warn!(kind = %kind, "cannot prune old acknowledgements: {e}"),
        }
    }
    Ok(report)
}

/// Prints the report the way `sidespawn gc` does.
pub fn print(report: &GcReport, dry_run: bool, max_age: Duration) {
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in &report.removed {
        println!("{verb} {} ({})", r.container, r.reason);
    }
    for (r, e) in &report.failed {
        println!("could not remove {} ({}): {e}", r.container, r.reason);
    }
    for (kind, n) in &report.acks {
        if *n > 0 {
            let verb = if dry_run { "would prune" } else { "pruned" };
            println!(
                "{verb} {n} {kind} acknowledgement(s) older than {}s",
                max_age.as_secs()
            );
        }
    }
    for (kind, e) in &report.kinds_failed {
        println!("could not collect {kind}: {e}");
    }
    if report.removed.is_empty() && report.failed.is_empty() && report.kinds_failed.is_empty() {
        println!("gc: no container to remove");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::namespaces::FakeNamespaces;
    use crate::host::runtime::FakeRuntime;

    fn c(name: &str, state: State, ns: &str, ino: &str) -> ContainerInfo {
        FakeRuntime::container(
            name,
            state,
            &[
                (labels::KIND, "dnsmasq"),
                (labels::KEY, &format!("dnsmasq/tag/{name}")),
                (labels::NETNS, ns),
                (labels::NETNS_INO, ino),
            ],
        )
    }

    fn desired_of(names: &[&str]) -> DesiredTable {
        let mut t = DesiredTable::default();
        for n in names {
            t.sidecars.insert(
                format!("dnsmasq/tag/{n}"),
                crate::host::desired::DesiredSidecar {
                    container: (*n).to_owned(),
                    record: crate::shared::record::Record {
                        v: 1,
                        id: "x".into(),
                        kind: Kind::Dnsmasq,
                        action: crate::shared::record::Action::Start,
                        argv: vec![],
                        netns: None,
                        tag: None,
                        signal: None,
                        pid: None,
                        ts: 0,
                    },
                    generation: 1,
                    image: "i".into(),
                    restarts: vec![],
                    last_error: None,
                },
            );
        }
        t
    }

    #[test]
    fn decides_exited_undesired_and_vanished_namespaces_only() {
        let ns = FakeNamespaces::new([("qdhcp-a".to_owned(), 7)]);
        let actual = [
            c("running", State::Running, "qdhcp-a", "7"),
            c("exited-desired", State::Exited, "qdhcp-a", "7"),
            c("exited-stray", State::Exited, "qdhcp-a", "7"),
            c("created-stray", State::Created, "qdhcp-a", "7"),
            c("ns-gone", State::Running, "qdhcp-b", "9"),
            c("ns-recreated", State::Running, "qdhcp-a", "6"),
        ];
        let t = desired_of(&["running", "exited-desired", "ns-gone"]);
        let r = decide(Kind::Dnsmasq, &BTreeMap::new(), &actual, &t, &ns);
        let names: Vec<&str> = r.iter().map(|r| r.container.as_str()).collect();
        assert_eq!(
            names,
            ["exited-stray", "created-stray", "ns-gone", "ns-recreated"]
        );
        assert_eq!(r[2].forget_key.as_deref(), Some("dnsmasq/tag/ns-gone"));
        assert!(r[3].reason.contains("recreated"), "{}", r[3].reason);
        assert_eq!(r[3].forget_key, None);
        // Other kinds' containers are not this kind's business.
        assert!(decide(Kind::Haproxy, &BTreeMap::new(), &actual, &t, &ns).is_empty());
        // Another configuration's containers (without our profile labels)
        // are never collected.
        let scope = BTreeMap::from([("site".to_owned(), "a".to_owned())]);
        assert!(decide(Kind::Dnsmasq, &scope, &actual, &t, &ns).is_empty());
    }

    #[test]
    fn run_removes_and_dry_run_does_not() {
        let d =
            std::env::temp_dir().join(format!("sidespawn-gc-{}", crate::shared::record::new_id(0)));
        let text = serde_json::json!({
            "queue_root": d.join("queue"), "state_dir": d.join("state"),
            "kinds": {"dnsmasq": {"image": "i"}}
        })
        .to_string();
        let cfg = HostConfig::from_str(&d.join("c.json"), &text).unwrap();
        let ns = FakeNamespaces::new([("qdhcp-a".to_owned(), 7)]);
        let ours = |mut c: ContainerInfo| {
            c.labels
                .insert(labels::INSTANCE.to_owned(), cfg.instance.clone());
            c
        };
        // Another configuration's exited leftover, its namespace gone: not ours to collect.
        let theirs = c("their-stray", State::Exited, "qdhcp-gone", "3");
        let fake = FakeRuntime::new(vec![
            ours(c("stray", State::Exited, "qdhcp-a", "7")),
            ours(c("keep", State::Running, "qdhcp-a", "7")),
            theirs,
        ]);
        let rep = collect(&cfg, &fake, &ns, &[Kind::Dnsmasq], true, None).unwrap();
        assert_eq!(rep.removed.len(), 1);
        assert_eq!(fake.containers().len(), 3);
        let rep = collect(&cfg, &fake, &ns, &[Kind::Dnsmasq], false, None).unwrap();
        assert_eq!(rep.removed.len(), 1);
        assert_eq!(rep.removed[0].container, "stray");
        let left: Vec<String> = fake.containers().into_iter().map(|c| c.name).collect();
        assert_eq!(left, ["keep", "their-stray"]);
        // Even handed a list with it in, gc leaves the other instance's container.
        let rep = collect(
            &cfg,
            &fake,
            &ns,
            &[Kind::Dnsmasq],
            false,
            Some(fake.containers()),
        )
        .unwrap();
        assert!(rep.removed.is_empty(), "{:?}", rep.removed);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// One kind's unreadable desired table leaves that kind out; the other
    /// kinds are still collected, and the report names the kind and file.
    #[test]
    fn an_unreadable_desired_table_fails_its_kind_alone() {
        use std::os::unix::fs::PermissionsExt;
        let d =
            std::env::temp_dir().join(format!("sidespawn-gc-{}", crate::shared::record::new_id(0)));
        let text = serde_json::json!({
            "queue_root": d.join("queue"), "state_dir": d.join("state"),
            "kinds": {"dnsmasq": {"image": "i"}, "haproxy": {"image": "i"}}
        })
        .to_string();
        let cfg = HostConfig::from_str(&d.join("c.json"), &text).unwrap();
        let broken = d.join("state/desired/haproxy");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::set_permissions(d.join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(broken.join("x.json"), b"{not json").unwrap();
        let ns = FakeNamespaces::new([("qdhcp-a".to_owned(), 7)]);
        let mut stray = c("stray", State::Exited, "qdhcp-a", "7");
        stray
            .labels
            .insert(labels::INSTANCE.to_owned(), cfg.instance.clone());
        let fake = FakeRuntime::new(vec![stray]);
        let kinds = [Kind::Dnsmasq, Kind::Haproxy];
        let rep = collect(&cfg, &fake, &ns, &kinds, false, None).unwrap();
        assert_eq!(rep.removed.len(), 1, "dnsmasq was still collected");
        assert!(fake.containers().is_empty());
        assert_eq!(rep.kinds_failed.len(), 1);
        assert_eq!(rep.kinds_failed[0].0, Kind::Haproxy);
        let e = GcError::Kinds(rep.kinds_failed).to_string();
        assert!(e.contains("haproxy") && e.contains("x.json"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
