//! Optional per-kind health checks: the profile's `health_cmd` run inside
//! each running sidecar with `podman exec`, bounded by `health_timeout_s`
//! and run `parallelism` at a time.
//!
//! Who runs them: `watch`, on each kind's own schedule ([`Schedule`],
//! every `health_interval_s`), through a sync pass of that kind, so an
//! unhealthy sidecar is restarted there under the kind's restart policy;
//! the backstop (`sync --full`); and `status --check`. Request-driven
//! passes never do: one `podman exec` per sidecar would slow exactly the
//! bursts that must stay fast. Every round's results are stored in
//! `<state_dir>/health/<kind>.json` (written atomically), which plain
//! `status` reports instead of running checks itself. A stored result
//! belongs to one container id: a sidecar started since has not been
//! checked, whatever its name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::config::{HostConfig, Profile};
use crate::host::runtime::{ContainerInfo, Runtime};
use crate::host::state::{StateDir, StateError, read_json, write_atomic};
use crate::shared::kind::Kind;
use crate::shared::record::now_ms;

/// The result of one check of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// The container checked (a sidecar started again has another id).
    pub id: String,
    /// `healthy`, or why the check failed.
    pub result: String,
    pub healthy: bool,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// The last round of a kind's checks: by container name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub sidecars: BTreeMap<String, Checked>,
}

pub fn record_path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("health").join(format!("{kind}.json"))
}

impl HealthRecord {
    /// The stored record; empty when none was written yet.
    pub fn load(state: &StateDir, kind: Kind) -> Result<HealthRecord, StateError> {
        Ok(read_json(&record_path(state, kind))?.unwrap_or_default())
    }

    pub fn store(&self, state: &StateDir, kind: Kind) -> Result<(), StateError> {
        let p = record_path(state, kind);
        let text = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &text)
    }

    /// The stored result of `c`, if it was checked as the container it is
    /// now.
    pub fn of(&self, c: &ContainerInfo) -> Option<&Checked> {
        self.sidecars.get(&c.name).filter(|r| r.id == c.id)
    }
}

/// Checks `names` (running containers of `profile`'s kind); returns the
/// failures by container name. Empty when the profile has no check.
pub fn failures(
    profile: &Profile,
    runtime: &dyn Runtime,
    names: &[String],
    parallelism: usize,
) -> BTreeMap<String, String> {
    let Some(cmd) = &profile.health_cmd else {
        return BTreeMap::new();
    };
    let checks = crate::host::parallel::map(names, parallelism, |_, name| {
        runtime.exec_check(name, cmd, profile.health_timeout)
    });
    names
        .iter()
        .zip(checks)
        .filter_map(|(name, r)| Some((name.clone(), format!("health check failed: {}", r.err()?))))
        .collect()
}

/// Checks `running` (running desired containers of `profile`'s kind),
/// stores the round as the kind's record (replacing the last one, so
/// containers gone since drop out) and returns the failures by name. A
/// record that cannot be written is logged: the checks still count.
pub fn check_and_store(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    running: &[&ContainerInfo],
) -> BTreeMap<String, String> {
    if profile.health_cmd.is_none() {
        return BTreeMap::new();
    }
    let names: Vec<String> = running.iter().map(|c| c.name.clone()).collect();
    let failed = failures(profile, runtime, &names, cfg.parallelism);
    let at_ms = now_ms();
    let record = HealthRecord {
        sidecars: running
            .iter()
            .map(|c| {
                let why = failed.get(&c.name);
                let checked = Checked {
                    id: c.id.clone(),
                    result: why.cloned().unwrap_or_else(|| "healthy".to_owned()),
                    healthy: why.is_none(),
                    at_ms,
                };
                (c.name.clone(), checked)
            })
            .collect(),
    };
    let state = StateDir::new(&cfg.state_dir);
    if let Err(e) = record.store(&state, profile.kind) {
        tracing::warn!(kind = %profile.kind, "cannot store the health checks' results: {e}");
    }
    failed
}

/// When `watch` checks each kind next: every kind with a `health_cmd`, each
/// on its own `health_interval`, the first round one interval after start
/// (the start-up sync has just started the sidecars).
#[derive(Debug, Default)]
pub struct Schedule {
    next: BTreeMap<Kind, (Instant, Duration)>,
}

impl Schedule {
    /// The schedule of `kinds` under `cfg`, starting at `now`.
    pub fn new(cfg: &HostConfig, kinds: impl IntoIterator<Item = Kind>, now: Instant) -> Schedule {
        let next = kinds
            .into_iter()
            .filter_map(|k| {
                let p = cfg.kinds.get(&k)?;
                p.health_cmd.as_ref()?;
                Some((k, (now + p.health_interval, p.health_interval)))
            })
            .collect();
        Schedule { next }
    }

    /// The kinds due at `now`, each rescheduled one interval later.
    pub fn due(&mut self, now: Instant) -> Vec<Kind> {
        let mut due = Vec::new();
        for (k, (at, every)) in self.next.iter_mut() {
            if now >= *at {
                due.push(*k);
                *at = now + *every;
            }
        }
        due
    }

    /// When the next kind is due; `None` when no kind has a check.
    pub fn next_due(&self) -> Option<Instant> {
        self.next.values().map(|(at, _)| *at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::Profile;

    fn cfg(intervals: &[(Kind, Option<u64>)]) -> HostConfig {
        let mut cfg = HostConfig::from_str(std::path::Path::new("/x.json"), "{}").unwrap();
        cfg.kinds.clear();
        for (k, secs) in intervals {
            let mut p = Profile::defaults(*k);
            if let Some(s) = secs {
                p.health_cmd = Some(vec!["true".into()]);
                p.health_interval = Duration::from_secs(*s);
            }
            cfg.kinds.insert(*k, p);
        }
        cfg
    }

    #[test]
    fn each_kind_with_a_check_is_due_on_its_own_interval() {
        let cfg = cfg(&[
            (Kind::Dnsmasq, Some(10)),
            (Kind::Haproxy, Some(25)),
            (Kind::Radvd, None),
        ]);
        let t0 = Instant::now();
        let mut s = Schedule::new(&cfg, [Kind::Dnsmasq, Kind::Haproxy, Kind::Radvd], t0);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(10)));
        assert!(s.due(t0).is_empty());
        assert_eq!(s.due(t0 + Duration::from_secs(10)), [Kind::Dnsmasq]);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(20)));
        assert_eq!(
            s.due(t0 + Duration::from_secs(26)),
            [Kind::Dnsmasq, Kind::Haproxy]
        );
        // Late rounds are not made up for: the next is one interval on.
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(36)));
        assert_eq!(Schedule::new(&cfg, [Kind::Radvd], t0).next_due(), None);
    }

    #[test]
    fn a_stored_result_belongs_to_the_container_it_checked() {
        let c = crate::host::runtime::FakeRuntime::container(
            "s",
            crate::host::runtime::State::Running,
            &[],
        );
        let mut rec = HealthRecord::default();
        rec.sidecars.insert(
            "s".into(),
            Checked {
                id: c.id.clone(),
                result: "healthy".into(),
                healthy: true,
                at_ms: 1,
            },
        );
        assert!(rec.of(&c).is_some_and(|r| r.healthy));
        let mut again = c.clone();
        again.id = "another".into();
        assert!(rec.of(&again).is_none());
    }
}
