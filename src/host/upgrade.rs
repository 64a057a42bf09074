//! `sidespawn upgrade --kind K` and `sidespawn rollback --kind K`: replace a
//! kind's running sidecars with another image, batch by batch, from the
//! desired table (same argv, same namespace, next generation).
//!
//! A changed `image` in the configuration reaches new and restarted
//! sidecars at once, but running ones keep their image until `upgrade`
//! replaces them: replacing hundreds of dnsmasq at the next sync would cut
//! DHCP for every network at the same moment. The image state
//! (`<state_dir>/images/<kind>.json`) remembers the image the sidecars ran
//! before the last upgrade, so `rollback` can return to it. A rollback is an
//! override of the configured image, valid only while the configuration
//! still names the image it rolled back from: editing the configured image
//! afterwards drops the override, and the next `upgrade` rolls forward to
//! the new configuration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::host::config::{HostConfig, Profile};
use crate::host::desired::DesiredTable;
use crate::host::namespaces::Namespaces;
use crate::host::plan::{run_spec, spec_hash};
use crate::host::runtime::{Runtime, RuntimeError, SidecarLabels, labels};
use crate::host::state::{SYNC_LOCK_TIMEOUT, StateDir, StateError};
use crate::shared::kind::Kind;

pub use crate::host::images::{ImageState, effective_config, image_state_path};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Config(#[from] crate::host::config::ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot list containers: {0}")]
    List(#[source] RuntimeError),
    #[error("nothing to roll back to: no upgrade of {0} is recorded in the host state")]
    NoPrevious(Kind),
    #[error(
        "{failed} of {attempted} replacement(s) in the last batch failed; stopped there ({done} sidecar(s) already on {image}): {first}"
    )]
    Failed {
        failed: usize,
        attempted: usize,
        done: usize,
        image: String,
        first: String,
    },
}

/// One replaced sidecar.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub container: String,
    pub generation: u64,
    /// From the start of the removal to podman's answer to the run: the
    /// longest the daemon can have been down, as the host sees it.
    pub gap: Duration,
}

/// What an upgrade did.
#[derive(Debug, Default)]
pub struct UpgradeReport {
    pub image: String,
    pub replaced: Vec<Replaced>,
    /// Desired sidecars already on the image.
    pub unchanged: usize,
}

/// Replaces `kind`'s desired sidecars that do not run `profile`'s image
/// (effective image already applied), `max_parallel` at a time, stopping
/// after the first batch with a failure. The caller holds the sync lock.
pub fn replace_all(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    max_parallel: usize,
) -> Result<UpgradeReport, UpgradeError> {
    let kind = profile.kind;
    let state = StateDir::new(&cfg.state_dir);
    let image = profile.image.clone().unwrap_or_default();
    let mut table = DesiredTable::load(&state, kind)?;
    let actual = runtime.list(&cfg.instance).map_err(UpgradeError::List)?;
    let mut report = UpgradeReport {
        image: image.clone(),
        ..UpgradeReport::default()
    };
    let mut todo = Vec::new();
    for (key, d) in &table.sidecars {
        let want = spec_hash(
            &image,
            &profile.command,
            &profile.daemon_argv(&d.record.argv),
        );
        let current = actual
            .iter()
            .find(|c| c.name == d.container)
            .and_then(|c| SidecarLabels::of(c).argv_hash());
        if current == Some(want.as_str()) {
            report.unchanged += 1;
        } else {
            todo.push(key.clone());
        }
    }
    let mut generation = state.next_generation(kind)?;
    for batch in todo.chunks(max_parallel.max(1)) {
        let jobs: Vec<(String, crate::host::runtime::RunSpec)> = batch
            .iter()
            .map(|key| {
                let d = &table.sidecars[key];
                let spec = run_spec(profile, &namespaces.dir(), &d.record, generation);
                generation += 1;
                (key.clone(), spec)
            })
            .collect();
        // Handed out before the batch runs: a crash must not reuse them.
        state.store_generation(kind, generation)?;
        // The whole batch at once: its size is the parallelism.
        let results = crate::host::parallel::map(&jobs, jobs.len(), |_, (key, spec)| {
            let record = &table.sidecars[key].record;
            let t = Instant::now();
            let r = (|| {
                if let Some(ns) = &record.netns {
                    namespaces.verify(ns).map_err(|e| e.to_string())?;
                }
                match runtime.remove(&spec.name) {
                    Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
                runtime.run(spec).map_err(|e| e.to_string())?;
                Ok(())
            })();
            let generation = spec
                .labels
                .get(labels::GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            let out = r.map(|()| Replaced {
                container: spec.name.clone(),
                generation,
                gap: t.elapsed(),
            });
            (key.clone(), out)
        });
        let mut failures = Vec::new();
        for (key, r) in results {
            match r {
                Ok(rep) => {
                    info!(kind = %kind, container = %rep.container, "now on {image} (generation {}), down at most {:?}", rep.generation, rep.gap);
                    if let Some(d) = table.sidecars.get_mut(&key) {
                        d.generation = rep.generation;
                        d.image = image.clone();
                        d.last_error = None;
                    }
                    report.replaced.push(rep);
                }
                Err(e) => {
                    error!(kind = %kind, key = %key, "cannot replace: {e}");
                    if let Some(d) = table.sidecars.get_mut(&key) {
                        d.last_error = Some(format!("upgrade to {image} failed: {e}"));
                    }
                    failures.push(e);
                }
            }
        }
        table.store(&state, kind)?;
        if let Some(first) = failures.first() {
            return Err(UpgradeError::Failed {
                failed: failures.len(),
                attempted: batch.len(),
                done: report.replaced.len(),
                image,
                first: first.clone(),
            });
        }
    }
    Ok(report)
}

/// `upgrade`: moves `kind` to its effective image, remembering the image
/// its sidecars ran before.
pub fn upgrade(
    cfg: &HostConfig,
    kind: Kind,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    max_parallel: usize,
) -> Result<UpgradeReport, UpgradeError> {
    // Excludes a sync of this kind replaying requests meanwhile.
    let _lock = StateDir::new(&cfg.state_dir).sync_lock(kind, SYNC_LOCK_TIMEOUT)?;
    let eff = effective_config(cfg)?;
    let profile = eff.profile(kind)?.clone();
    remember_previous(cfg, kind, profile.image.as_deref().unwrap_or_default())?;
    replace_all(&eff, &profile, runtime, namespaces, max_parallel)
}

/// `rollback`: makes the recorded previous image the effective one (while
/// the configuration names the image rolled back from) and replaces.
pub fn rollback(
    cfg: &HostConfig,
    kind: Kind,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    max_parallel: usize,
) -> Result<UpgradeReport, UpgradeError> {
    // Excludes a sync of this kind replaying requests meanwhile.
    let _lock = StateDir::new(&cfg.state_dir).sync_lock(kind, SYNC_LOCK_TIMEOUT)?;
    let state = StateDir::new(&cfg.state_dir);
    let configured = cfg.profile(kind)?.image.clone();
    let mut st = ImageState::load(&state, kind)?;
    let Some(previous) = st.previous.clone() else {
        return Err(UpgradeError::NoPrevious(kind));
    };
    let from = st.effective(configured.as_deref());
    st.previous = from;
    if configured.as_deref() == Some(previous.as_str()) {
        // Rolling back to what the configuration says is no override.
        st.override_image = None;
        st.override_while_configured = None;
    } else {
        st.override_image = Some(previous);
        st.override_while_configured = configured;
    }
    st.store(&state, kind)?;
    let eff = effective_config(cfg)?;
    let profile = eff.profile(kind)?.clone();
    replace_all(&eff, &profile, runtime, namespaces, max_parallel)
}

/// Records, before an upgrade to `target`, the image the desired sidecars
/// run now (the most common one, if they differ).
fn remember_previous(cfg: &HostConfig, kind: Kind, target: &str) -> Result<(), StateError> {
    let state = StateDir::new(&cfg.state_dir);
    let table = DesiredTable::load_meta(&state, kind)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in table.sidecars.values() {
        *counts.entry(d.image.as_str()).or_default() += 1;
    }
    let Some((&now, _)) = counts
        .iter()
        .filter(|(i, _)| **i != target)
        .max_by_key(|(_, n)| **n)
    else {
        return Ok(());
    };
    let mut st = ImageState::load(&state, kind)?;
    st.previous = Some(now.to_owned());
    st.store(&state, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_lasts_while_the_configuration_names_the_image_it_replaced() {
        let st = ImageState {
            previous: Some("img:2".into()),
            override_image: Some("img:1".into()),
            override_while_configured: Some("img:2".into()),
        };
        assert_eq!(st.effective(Some("img:2")).as_deref(), Some("img:1"));
        assert_eq!(st.effective(Some("img:3")).as_deref(), Some("img:3"));
        assert_eq!(
            ImageState::default().effective(Some("img:2")).as_deref(),
            Some("img:2")
        );
    }
}
