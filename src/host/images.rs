//! The host's record of each kind's images (`<state_dir>/images/<kind>.json`)
//! and the configuration it makes effective.
//!
//! `upgrade` and `rollback` write the record; every sync, restart and
//! upgrade reads it through [`effective_config`], so a kind rolled back
//! starts the image it was rolled back to. It lives below both the sync and
//! the lifecycle commands: the core sync needs the override but nothing
//! else of `upgrade`. Invariants: an override holds only while the
//! configuration still names the image it rolled back from; an unreadable
//! record is an error, so nothing starts with an image the operator rolled
//! back from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::config::HostConfig;
use crate::host::state::{StateDir, StateError, read_json, write_atomic};
use crate::shared::kind::Kind;

/// The host's record of a kind's images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    /// The image the sidecars ran before the last upgrade or rollback.
    pub previous: Option<String>,
    /// Set by `rollback`: the image to use instead of the configured one...
    pub override_image: Option<String>,
    /// ...as long as the configuration still names this image.
    pub override_while_configured: Option<String>,
    /// Set when the override was made by an upgrade to this image whose
    /// replacements did not come up (not by `rollback`): the next
    /// `upgrade` to it tries again, where a rollback's override would
    /// hold.
    #[serde(default)]
    pub failed_upgrade: Option<String>,
}

pub fn image_state_path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("images").join(format!("{kind}.json"))
}

impl ImageState {
    pub fn load(state: &StateDir, kind: Kind) -> Result<ImageState, StateError> {
        Ok(read_json(&image_state_path(state, kind))?.unwrap_or_default())
    }

    pub fn store(&self, state: &StateDir, kind: Kind) -> Result<(), StateError> {
        let p = image_state_path(state, kind);
        let text = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &text)
    }

    /// The image sidecars of a kind configured with `configured` run.
    pub fn effective(&self, configured: Option<&str>) -> Option<String> {
        match (&self.override_image, &self.override_while_configured) {
            (Some(o), Some(c)) if Some(c.as_str()) == configured => Some(o.clone()),
            _ => configured.map(str::to_owned),
        }
    }
}

/// The configuration with every kind's rollback override applied: what
/// syncs, restarts and upgrades start. An unreadable image state is an
/// error, so nothing starts with an image the operator rolled back from.
pub fn effective_config(cfg: &HostConfig) -> Result<HostConfig, StateError> {
    let state = StateDir::new(&cfg.state_dir);
    // A state directory that is not one gets its own advice, not a bare
    // "Not a directory" from the first file read below it.
    state.check_dir()?;
    // Not another configuration's state (recorded by the first sync that writes).
    state.claim_owner(&cfg.queue_root, false)?;
    let mut out = cfg.clone();
    for (kind, p) in out.kinds.iter_mut() {
        let st = ImageState::load(&state, *kind)?;
        p.image = st.effective(p.image.as_deref());
    }
    Ok(out)
}
