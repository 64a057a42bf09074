//! A start that acts first: when the host's own state proves what a
//! `podman ps` would show for a batch, the sync plans from that prediction
//! instead of listing, and the same plan, execute, acknowledge and persist
//! stages run against it.
//!
//! The prediction is a container view built from the desired table alone:
//! each desired sidecar as running, nothing else. It is used only for a
//! batch of which every request is a start of a key the table does not
//! know, so what the view leaves out cannot change the plan:
//!
//! - **The batch's keys.** A container name is a function of the
//!   configuration, kind and key ([`crate::host::plan::container_name`]), so
//!   a container a listing would have shown for one of them can only hold
//!   that name: the `podman run` fails "name already in use", and the sync's
//!   adopt-or-replace path inspects it (adopted when it is this sidecar and
//!   runs, replaced when it is an older or broken start of it, refused when
//!   it is not this configuration's sidecar).
//! - **The limit.** `max_sidecars` counts the desired keys plus running
//!   containers of the kind the table does not know ("extras"). Every pass
//!   that lists records the extras it saw in a marker stamped with the
//!   generation counter; a pass that runs jobs removes the marker first and
//!   writes it again only once its outcomes are in the table. The prediction
//!   is trusted only when the marker's generation is the stored counter (no
//!   pass started a container since without finishing) and the desired keys,
//!   the recorded extras and every request of the batch together stay within
//!   `max_sidecars`: the limit cannot refuse any of them, with or without a
//!   listing.
//! - **Restarts, health and orphans.** A dead desired sidecar is the restart
//!   pass's work (`sidespawn-restart.service` and `watch` follow the
//!   engine's `died` events) and the backstop's; orphans are the backstop's.
//!   A table holding a failed start (its `last_error`), a reboot since the
//!   last pass, an unreadable desired file, a missing generation counter, a
//!   second pass, a dry run or a full, health or restart run all list.
//!
//! Nothing is reconciled after the acknowledgements: the pass's outcomes
//! are recorded exactly as a listed pass records them, and what a listing
//! would have added (restarting a sidecar that died unnoticed, removing an
//! orphan) is not this batch's and is done by the restart pass and the
//! backstop, as it is for a listed pass of another kind.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use tracing::{debug, warn};

use crate::host::config::Profile;
use crate::host::desired::DesiredTable;
use crate::host::plan::key_of;
use crate::host::runtime::{ContainerInfo, State, labels};
use crate::host::state::StateDir;
use crate::shared::kind::Kind;
use crate::shared::record::{Action, Record};

/// What the last pass that listed found, valid while the generation
/// counter is still `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub generation: u64,
    /// Running containers of the kind whose key the desired table lacked.
    pub extras: usize,
}

fn marker_path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("listed").join(kind.as_str())
}

/// The kind's marker; `None` when there is none or it does not parse.
pub fn marker(state: &StateDir, kind: Kind) -> Option<Marker> {
    let text = std::fs::read_to_string(marker_path(state, kind)).ok()?;
    let mut it = text.split_whitespace();
    let generation = it.next()?.parse().ok()?;
    let extras = it.next()?.parse().ok()?;
    it.next().is_none().then_some(Marker { generation, extras })
}

/// Removes the marker before a pass runs jobs: a pass that does not
/// finish leaves no prediction behind.
pub fn clear(state: &StateDir, kind: Kind) {
    match std::fs::remove_file(marker_path(state, kind)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Left in place, the generation stamp still invalidates it once a
        // container is started.
        Err(e) => warn!(kind = %kind, "cannot remove the listing marker: {e}"),
    }
}

/// Records `m` once a pass's outcomes are in the desired table.
pub fn store(state: &StateDir, kind: Kind, m: Marker) {
    let text = format!("{} {}\n", m.generation, m.extras);
    if let Err(e) = crate::host::state::write_atomic(&marker_path(state, kind), text.as_bytes()) {
        warn!(kind = %kind, "cannot record the listing marker (the next start lists): {e}");
    }
}

/// The running containers of `profile`'s kind in `actual` whose key
/// `desired` does not hold: what `max_sidecars` counts beyond the table.
pub fn extras(profile: &Profile, desired: &DesiredTable, actual: &[ContainerInfo]) -> usize {
    crate::host::limit::sidecar_keys(profile, desired, actual)
        .len()
        .saturating_sub(desired.sidecars.len())
}

/// Why a batch is not predicted (for the debug log and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsure {
    NotAStart,
    KnownKey,
    UnreadableTable,
    FailedStart,
    NoGeneration,
    NoMarker,
    StaleMarker,
    NearLimit,
    Rebooted,
}

/// A kind's batch as the prediction sees it, folded from the journal
/// record by record: whether every request is a start, and the keys.
#[derive(Debug)]
pub struct Batch {
    kind: Kind,
    starts_only: bool,
    keys: HashSet<String>,
    /// More keys than this cannot fit under `max_sidecars`: not kept.
    most: usize,
    too_many: bool,
}

impl Batch {
    pub fn new(kind: Kind, max_sidecars: usize) -> Batch {
        Batch {
            kind,
            starts_only: true,
            keys: HashSet::new(),
            most: max_sidecars,
            too_many: false,
        }
    }

    pub fn push(&mut self, r: &Record) {
        if r.action != Action::Start {
            self.starts_only = false;
            return;
        }
        if self.too_many {
            return;
        }
        self.keys
            .insert(key_of(self.kind, r.tag.as_deref(), r.netns.as_ref()));
        if self.keys.len() > self.most {
            self.too_many = true;
            self.keys.clear();
        }
    }
}

/// The view of `profile`'s kind the desired table predicts, when `batch`
/// (the kind's journal) allows it: every desired sidecar as running, with
/// the extras the last listing recorded (to carry into this pass's
/// marker). `desired` is the kind's table as the sync opened it for this
/// pass, and `unreadable` whether any of its files could not be read.
/// `rebooted` is whether the host rebooted since the kind's last pass.
pub fn view(
    state: &StateDir,
    profile: &Profile,
    desired: &DesiredTable,
    unreadable: bool,
    batch: &Batch,
    rebooted: bool,
) -> Result<(Vec<ContainerInfo>, usize), Unsure> {
    let kind = profile.kind;
    if rebooted {
        return Err(Unsure::Rebooted);
    }
    if !batch.starts_only {
        return Err(Unsure::NotAStart);
    }
    if batch.too_many {
        return Err(Unsure::NearLimit);
    }
    if unreadable {
        return Err(Unsure::UnreadableTable);
    }
    let keys = &batch.keys;
    if keys.iter().any(|k| desired.sidecars.contains_key(k)) {
        return Err(Unsure::KnownKey);
    }
    if desired.sidecars.values().any(|d| d.last_error.is_some()) {
        return Err(Unsure::FailedStart);
    }
    let generation = match state.stored_generation(kind) {
        Ok(Some(g)) => g,
        _ => return Err(Unsure::NoGeneration),
    };
    let m = marker(state, kind).ok_or(Unsure::NoMarker)?;
    if m.generation != generation {
        return Err(Unsure::StaleMarker);
    }
    let most = desired.sidecars.len() + m.extras + keys.len();
    if most > profile.max_sidecars {
        return Err(Unsure::NearLimit);
    }
    let view = desired
        .sidecars
        .iter()
        .map(|(key, d)| {
            let labels: BTreeMap<String, String> = [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                (labels::INSTANCE, profile.instance.as_str()),
                (labels::KIND, kind.as_str()),
                (labels::KEY, key.as_str()),
            ]
            .into_iter()
            .chain(profile.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            ContainerInfo {
                id: String::new(),
                name: d.container.clone(),
                state: State::Running,
                pid: 0,
                image: d.image.clone(),
                labels,
                started_at: 0,
                exit_code: 0,
            }
        })
        .collect();
    Ok((view, m.extras))
}

/// Logs why a kind's batch lists.
pub fn log_unsure(kind: Kind, why: &Unsure) {
    debug!(kind = %kind, "listing the containers: the host state cannot predict them ({why:?})");
}
