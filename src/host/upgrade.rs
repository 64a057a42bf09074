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
//!
//! An upgrade cannot leave a sidecar down for longer than one replacement:
//!
//! 1. Before anything is touched the new image must be present (verified,
//!    or pulled with `--pull`) and able to start its kind's program: the
//!    program's version probe (`dnsmasq --version`, `haproxy -v`, ...) runs
//!    in a throwaway container with no network and no capabilities. A
//!    missing image, a missing binary or library, a wrong architecture all
//!    fail here, and the upgrade stops having changed nothing.
//! 2. Sidecars are then replaced batch by batch. A replacement counts as up
//!    once it has kept running for the settle time and, when the kind has a
//!    `health_cmd`, passed it. One that does not come up is removed and its
//!    sidecar started again from the image it ran before (next generation,
//!    same argv and namespace, as `rollback` would), its desired entry says
//!    why, and the upgrade stops after that batch with an error.
//!
//! Each sidecar's gap (removal started to podman's answer to the run that
//! left it serving, the old image's for a sidecar put back) is reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::host::config::{HostConfig, Profile};
use crate::host::desired::DesiredTable;
use crate::host::namespaces::Namespaces;
use crate::host::plan::{run_spec, spec_hash};
use crate::host::runtime::{RunSpec, Runtime, RuntimeError, SidecarLabels, State};
use crate::host::state::{SYNC_LOCK_TIMEOUT, StateDir, StateError};
use crate::shared::kind::Kind;

pub use crate::host::images::{ImageState, effective_config, image_state_path};

/// How long a replacement must keep running before it counts as up, unless
/// told otherwise: long enough for a daemon that cannot read its
/// configuration, bind its sockets or find a library to have exited.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// How an upgrade or rollback runs.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Sidecars replaced at once.
    pub max_parallel: usize,
    /// Pull the image first instead of only verifying that it is present.
    pub pull: bool,
    /// How long a replacement must keep running to count as up.
    pub settle: Duration,
}

impl Default for UpgradeOptions {
    fn default() -> Self {
        UpgradeOptions {
            max_parallel: 1,
            pull: false,
            settle: DEFAULT_SETTLE,
        }
    }
}

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
    #[error("kinds.{0}.image is not set in the host configuration: nothing to upgrade to")]
    NoImage(Kind),
    #[error("the image {image} cannot be used, so nothing was replaced: {why}")]
    Image { image: String, why: String },
    #[error(
        "{failed} of {attempted} replacement(s) in the last batch did not come up on {image} \
         ({restored} put back on the image they ran before{lost}); stopped there, \
         {done} sidecar(s) now on {image}: {first}"
    )]
    Failed {
        failed: usize,
        attempted: usize,
        restored: usize,
        /// `, N could not be` when some could not be put back.
        lost: String,
        done: usize,
        image: String,
        first: String,
        /// What the upgrade did up to there.
        report: Box<UpgradeReport>,
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

/// A sidecar whose replacement did not come up.
#[derive(Debug, Clone)]
pub struct PutBack {
    pub container: String,
    /// Why the replacement did not count as up.
    pub reason: String,
    /// The image it was started from again.
    pub image: String,
    /// Its new generation (0 when it could not be started again).
    pub generation: u64,
    /// From the start of the removal to podman's answer to the run of the
    /// old image.
    pub gap: Duration,
    /// Why it could not be started again, if it could not.
    pub error: Option<String>,
}

/// What an upgrade did.
#[derive(Debug, Default)]
pub struct UpgradeReport {
    pub image: String,
    pub replaced: Vec<Replaced>,
    /// Replacements that did not come up, put back on their old image.
    pub put_back: Vec<PutBack>,
    /// Desired sidecars already on the image.
    pub unchanged: usize,
}

impl UpgradeReport {
    /// The median and the largest gap over every sidecar replaced or put
    /// back; `None` when none was.
    pub fn gaps(&self) -> Option<(Duration, Duration)> {
        let mut g: Vec<Duration> = self
            .replaced
            .iter()
            .map(|r| r.gap)
            .chain(self.put_back.iter().map(|p| p.gap))
            .collect();
        g.sort();
        Some((median(&g)?, *g.last()?))
    }
}

/// The median of sorted durations (the mean of the middle two for an even
/// count).
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// The program's own version probe, run in a throwaway container of the
/// image to prove it can start the kind's program.
pub fn probe_argv(profile: &Profile) -> Vec<String> {
    let program = profile
        .command
        .first()
        .cloned()
        .unwrap_or_else(|| profile.kind.as_str().to_owned());
    let flag = match profile.kind {
        Kind::Haproxy => "-v",
        Kind::Dnsmasq | Kind::Keepalived | Kind::Radvd => "--version",
    };
    vec![program, flag.to_owned()]
}

/// Step 1: `image` is present (or pulled) and starts `profile`'s program.
/// Changes nothing on failure (a pull that fails leaves no image).
pub fn check_image(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    image: &str,
    pull: bool,
) -> Result<(), UpgradeError> {
    let fail = |why: String| UpgradeError::Image {
        image: image.to_owned(),
        why,
    };
    runtime
        .ensure_image(image, pull)
        .map_err(|e| fail(e.to_string()))?;
    let probe = probe_argv(profile);
    runtime
        .probe_image(image, &probe, cfg.engine_timeout)
        .map_err(|e| {
            fail(format!(
                "it cannot start its program ({}): {e}",
                crate::host::shell::quote_words(&probe)
            ))
        })?;
    info!(kind = %profile.kind, "{image} is present and answers {}", probe.join(" "));
    Ok(())
}

/// Whether the container `name`, just started, comes up: it keeps running
/// for `settle` and then, with `health`, passes the kind's health check,
/// if it has one, within its `health_timeout`.
fn comes_up(
    profile: &Profile,
    runtime: &dyn Runtime,
    name: &str,
    settle: Duration,
    health: bool,
) -> Result<(), String> {
    let until = Instant::now() + settle;
    loop {
        let c = runtime.inspect_container(name).map_err(|e| e.to_string())?;
        if c.state != State::Running {
            let state = match &c.state {
                State::Exited => format!("exited with code {}", c.exit_code),
                State::Created => "was created but not started".to_owned(),
                State::Running => unreachable!(),
                State::Other(s) => format!("is {s}"),
            };
            return Err(format!(
                "{name} {state} within {} ms of its start",
                settle.as_millis()
            ));
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        // Polled: a daemon that cannot serve exits within moments.
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
    let Some(cmd) = profile.health_cmd.as_ref().filter(|_| health) else {
        return Ok(());
    };
    // A daemon may need a moment after its start to answer (load its
    // configuration, bind): it has `health_timeout` more to pass once.
    let deadline = Instant::now() + profile.health_timeout;
    loop {
        match runtime.exec_check(name, cmd, profile.health_timeout) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{name} failed its health check: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// An upgrade's work: the desired sidecars that do not run the image yet.
struct Pending {
    table: DesiredTable,
    /// Their keys, in the table's order.
    todo: Vec<String>,
    /// The image each of them runs now, for putting it back.
    old_images: BTreeMap<String, String>,
    /// What is done so far (the sidecars already on the image counted).
    report: UpgradeReport,
}

/// The desired sidecars of `profile`'s kind that do not run `image` yet.
fn pending(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    image: &str,
) -> Result<Pending, UpgradeError> {
    let state = StateDir::new(&cfg.state_dir);
    let table = DesiredTable::load(&state, profile.kind)?;
    let actual = runtime.list(&cfg.instance).map_err(UpgradeError::List)?;
    let mut todo = Vec::new();
    let mut report = UpgradeReport {
        image: image.to_owned(),
        ..UpgradeReport::default()
    };
    let mut old_images = BTreeMap::new();
    for (key, d) in &table.sidecars {
        let want = spec_hash(
            image,
            &profile.command,
            &profile.daemon_argv(&d.record.argv),
        );
        let c = actual.iter().find(|c| c.name == d.container);
        if c.and_then(|c| SidecarLabels::of(c).argv_hash()) == Some(want.as_str()) {
            report.unchanged += 1;
            continue;
        }
        // What sidespawn started it with; the container's own word for it
        // only when the entry does not say.
        let was = if d.image.is_empty() {
            c.map(|c| c.image.clone()).unwrap_or_default()
        } else {
            d.image.clone()
        };
        old_images.insert(key.clone(), was);
        todo.push(key.clone());
    }
    Ok(Pending {
        table,
        todo,
        old_images,
        report,
    })
}

/// What happened to one sidecar of a batch.
enum Outcome {
    Up(Replaced),
    /// Failed before its old container was removed: it still runs.
    Untouched(String),
    /// Removed, and the replacement did not come up.
    Down {
        reason: String,
        since: Instant,
    },
}

/// Replaces `kind`'s desired sidecars that do not run `profile`'s image
/// (effective image already applied), `max_parallel` at a time, stopping
/// after the first batch with a failure, whose sidecars that went down
/// are put back on the image they ran. The caller holds the sync lock and
/// has checked the image.
fn replace(
    cfg: &HostConfig,
    profile: &Profile,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    opts: &UpgradeOptions,
    work: Pending,
) -> Result<UpgradeReport, UpgradeError> {
    let Pending {
        mut table,
        todo,
        old_images,
        mut report,
    } = work;
    let kind = profile.kind;
    let state = StateDir::new(&cfg.state_dir);
    let image = report.image.clone();
    let mut generation = state.next_generation(kind)?;
    for batch in todo.chunks(opts.max_parallel.max(1)) {
        let jobs: Vec<(String, RunSpec)> = batch
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
            if let Some(ns) = &record.netns
                && let Err(e) = namespaces.verify(ns)
            {
                return (key.clone(), Outcome::Untouched(e.to_string()));
            }
            let t = Instant::now();
            match runtime.remove(&spec.name) {
                Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => {}
                Err(e) => return (key.clone(), Outcome::Untouched(e.to_string())),
            }
            let down = |reason: String| Outcome::Down { reason, since: t };
            if let Err(e) = runtime.run(spec) {
                return (key.clone(), down(e.to_string()));
            }
            let gap = t.elapsed();
            if let Err(e) = comes_up(profile, runtime, &spec.name, opts.settle, true) {
                return (key.clone(), down(e));
            }
            let generation = SidecarLabels::of_spec(spec).generation().unwrap_or(0);
            let rep = Replaced {
                container: spec.name.clone(),
                generation,
                gap,
            };
            (key.clone(), Outcome::Up(rep))
        });
        let mut failures = Vec::new();
        let mut down = Vec::new();
        for (key, r) in results {
            match r {
                Outcome::Up(rep) => {
                    info!(kind = %kind, container = %rep.container, "now on {image} (generation {}), down at most {:?}", rep.generation, rep.gap);
                    if let Some(d) = table.sidecars.get_mut(&key) {
                        d.generation = rep.generation;
                        d.image = image.clone();
                        d.last_error = None;
                    }
                    report.replaced.push(rep);
                }
                Outcome::Untouched(e) => {
                    error!(kind = %kind, key = %key, "cannot replace, left as it was: {e}");
                    if let Some(d) = table.sidecars.get_mut(&key) {
                        d.last_error = Some(format!("upgrade to {image} failed: {e}"));
                    }
                    failures.push(e);
                }
                Outcome::Down { reason, since } => {
                    error!(kind = %kind, key = %key, "the replacement on {image} did not come up: {reason}; putting it back");
                    failures.push(reason.clone());
                    down.push((key, reason, since));
                }
            }
        }
        let restored = put_back(
            profile,
            runtime,
            namespaces,
            &state,
            &mut table,
            &mut generation,
            &old_images,
            &image,
            down,
            opts,
            &mut report,
        );
        table.store(&state, kind)?;
        if let Some(first) = failures.first() {
            let lost = report.put_back.iter().filter(|p| p.error.is_some()).count();
            return Err(UpgradeError::Failed {
                failed: failures.len(),
                attempted: batch.len(),
                restored: restored?,
                lost: if lost > 0 {
                    format!(", {lost} could not be")
                } else {
                    String::new()
                },
                done: report.replaced.len(),
                image,
                first: first.clone(),
                report: Box::new(report),
            });
        }
    }
    Ok(report)
}

/// Starts each sidecar in `down` again from the image it ran before the
/// upgrade, with a new generation; records the outcome in its desired
/// entry and in the report. Returns how many run again.
#[allow(clippy::too_many_arguments)]
fn put_back(
    profile: &Profile,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    state: &StateDir,
    table: &mut DesiredTable,
    generation: &mut u64,
    old_images: &BTreeMap<String, String>,
    image: &str,
    down: Vec<(String, String, Instant)>,
    opts: &UpgradeOptions,
    report: &mut UpgradeReport,
) -> Result<usize, StateError> {
    if down.is_empty() {
        return Ok(0);
    }
    let kind = profile.kind;
    let jobs: Vec<(String, String, Instant, String, RunSpec)> = down
        .into_iter()
        .map(|(key, reason, since)| {
            let d = &table.sidecars[&key];
            let old = old_images.get(&key).cloned().unwrap_or_default();
            let mut p = profile.clone();
            p.image = Some(old.clone());
            let spec = run_spec(&p, &namespaces.dir(), &d.record, *generation);
            *generation += 1;
            (key, reason, since, old, spec)
        })
        .collect();
    state.store_generation(kind, *generation)?;
    let results = crate::host::parallel::map(&jobs, jobs.len(), |_, (_, _, since, old, spec)| {
        if old.is_empty() {
            return (
                Duration::ZERO,
                Err("the image it ran before is not known".to_owned()),
            );
        }
        match runtime.remove(&spec.name) {
            Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => {}
            Err(e) => return (since.elapsed(), Err(e.to_string())),
        }
        if let Err(e) = runtime.run(spec) {
            return (since.elapsed(), Err(e.to_string()));
        }
        let gap = since.elapsed();
        // Only that it keeps running: the old image's daemon served before,
        // and later health checks are the backstop's and the watch's.
        (
            gap,
            comes_up(profile, runtime, &spec.name, opts.settle, false),
        )
    });
    let mut restored = 0;
    for ((key, reason, _, old, spec), (gap, r)) in jobs.into_iter().zip(results) {
        let gen_now = SidecarLabels::of_spec(&spec).generation().unwrap_or(0);
        let d = table.sidecars.get_mut(&key);
        let error = match r {
            Ok(()) => {
                restored += 1;
                warn!(kind = %kind, container = %spec.name, "put back on {old} (generation {gen_now}), down {gap:?}");
                if let Some(d) = d {
                    d.generation = gen_now;
                    d.image = old.clone();
                    d.last_error = Some(format!(
                        "upgrade to {image} did not come up ({reason}); put back on {old}"
                    ));
                }
                None
            }
            Err(e) => {
                error!(kind = %kind, container = %spec.name, "cannot put it back on {old}: {e}");
                if let Some(d) = d {
                    d.last_error = Some(format!(
                        "upgrade to {image} did not come up ({reason}), and starting {old} again failed: {e}"
                    ));
                }
                Some(e)
            }
        };
        report.put_back.push(PutBack {
            container: spec.name.clone(),
            reason,
            image: old,
            generation: if error.is_none() { gen_now } else { 0 },
            gap,
            error,
        });
    }
    Ok(restored)
}

/// `upgrade`: moves `kind` to its effective image, remembering the image
/// its sidecars ran before. Checks the image first; replaces nothing when
/// it cannot be used.
pub fn upgrade(
    cfg: &HostConfig,
    kind: Kind,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    opts: &UpgradeOptions,
) -> Result<UpgradeReport, UpgradeError> {
    // Excludes a sync of this kind replaying requests meanwhile.
    let _lock = StateDir::new(&cfg.state_dir).sync_lock(kind, SYNC_LOCK_TIMEOUT)?;
    let state = StateDir::new(&cfg.state_dir);
    let configured = cfg.profile(kind)?.image.clone();
    let mut eff = effective_config(cfg)?;
    let mut st = ImageState::load(&state, kind)?;
    // A retry of an upgrade that did not come up: to the configured image
    // again, past the override that failure left.
    let retry = st.failed_upgrade.is_some() && st.failed_upgrade == configured;
    if retry && let Some(p) = eff.kinds.get_mut(&kind) {
        p.image = configured.clone();
    }
    let profile = eff.profile(kind)?.clone();
    let image = profile.image.clone().ok_or(UpgradeError::NoImage(kind))?;
    let work = pending(&eff, &profile, runtime, &image)?;
    if work.todo.is_empty() {
        return Ok(work.report);
    }
    check_image(&eff, &profile, runtime, &image, opts.pull)?;
    if retry {
        st.override_image = None;
        st.override_while_configured = None;
        st.failed_upgrade = None;
        st.store(&state, kind)?;
    }
    remember_previous(cfg, kind, &image)?;
    let result = replace(&eff, &profile, runtime, namespaces, opts, work);
    if let Err(UpgradeError::Failed { .. }) = &result {
        keep_previous(&state, kind, &image)?;
    }
    result
}

/// After an upgrade to `image` that did not come up: syncs, restarts and
/// repeated requests start the image recorded as previous instead (the
/// rollback override), until the configuration names another image or an
/// `upgrade` tries again. Without it, an agent's resync would replace every
/// sidecar with the image that just failed.
fn keep_previous(state: &StateDir, kind: Kind, image: &str) -> Result<(), StateError> {
    let mut st = ImageState::load(state, kind)?;
    let Some(previous) = st.previous.clone().filter(|p| p != image) else {
        return Ok(());
    };
    warn!(kind = %kind, "{image} did not come up: {kind} sidecars keep starting {previous} until the configuration names another image or `sidespawn upgrade --kind {kind}` runs again");
    st.override_image = Some(previous);
    st.override_while_configured = Some(image.to_owned());
    st.failed_upgrade = Some(image.to_owned());
    st.store(state, kind)
}

/// `rollback`: makes the recorded previous image the effective one (while
/// the configuration names the image rolled back from) and replaces.
/// Checks the image first; changes nothing when it cannot be used.
pub fn rollback(
    cfg: &HostConfig,
    kind: Kind,
    runtime: &dyn Runtime,
    namespaces: &dyn Namespaces,
    opts: &UpgradeOptions,
) -> Result<UpgradeReport, UpgradeError> {
    // Excludes a sync of this kind replaying requests meanwhile.
    let _lock = StateDir::new(&cfg.state_dir).sync_lock(kind, SYNC_LOCK_TIMEOUT)?;
    let state = StateDir::new(&cfg.state_dir);
    let configured = cfg.profile(kind)?.image.clone();
    let mut st = ImageState::load(&state, kind)?;
    let Some(previous) = st.previous.clone() else {
        return Err(UpgradeError::NoPrevious(kind));
    };
    check_image(cfg, cfg.profile(kind)?, runtime, &previous, opts.pull)?;
    let from = st.effective(configured.as_deref());
    st.previous = from;
    // The operator's own override from now on: it holds against `upgrade`.
    st.failed_upgrade = None;
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
    let image = profile.image.clone().ok_or(UpgradeError::NoImage(kind))?;
    let work = pending(&eff, &profile, runtime, &image)?;
    replace(&eff, &profile, runtime, namespaces, opts, work)
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
            failed_upgrade: None,
        };
        assert_eq!(st.effective(Some("img:2")).as_deref(), Some("img:1"));
        assert_eq!(st.effective(Some("img:3")).as_deref(), Some("img:3"));
        assert_eq!(
            ImageState::default().effective(Some("img:2")).as_deref(),
            Some("img:2")
        );
    }
}
