//! The host's record of the desired sidecars it stopped wanting on its own
//! (`<state_dir>/dropped/<kind>.json`): those whose namespace vanished or
//! was made anew (after a reboot, or when Neutron deleted a network while
//! its sidecar was dead), dropped by a sync's restart decisions or by gc.
//! Nobody asked for these drops, so each keeps its reason for the operator:
//! `status` shows them, as the log did when they happened.
//!
//! Invariants: bounded (the newest [`MAX_DROPPED`] drops per kind, each
//! reason cut to [`MAX_REASON_BYTES`]), so a kind that loses thousands of
//! sidecars at once keeps a small file; written atomically; a record that
//! cannot be read or written never stops a sync (the drop itself is what
//! matters, and the log says it too).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::state::{StateDir, StateError, read_json, write_atomic};
use crate::shared::kind::Kind;

/// The most drops kept per kind.
pub const MAX_DROPPED: usize = 64;
/// The most of a reason kept.
pub const MAX_REASON_BYTES: usize = 1024;

/// One desired sidecar dropped by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Its key in the desired table (`kind/tag/TAG`, `kind/netns/NS`).
    pub key: String,
    pub reason: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

pub fn path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("dropped").join(format!("{kind}.json"))
}

/// The kind's recorded drops, oldest first.
pub fn load(state: &StateDir, kind: Kind) -> Result<Vec<Dropped>, StateError> {
    Ok(read_json(&path(state, kind))?.unwrap_or_default())
}

/// Adds `new` to the kind's record, keeping the newest [`MAX_DROPPED`].
/// Failures are logged: the drops happened either way.
pub fn record(state: &StateDir, kind: Kind, new: impl IntoIterator<Item = (String, String)>) {
    let now = crate::shared::record::now_ms();
    let new: Vec<Dropped> = new
        .into_iter()
        .map(|(key, reason)| Dropped {
            key,
            reason: crate::shared::ack::bounded(&reason, MAX_REASON_BYTES).into_owned(),
            at_ms: now,
        })
        .collect();
    if new.is_empty() {
        return;
    }
    let result = (|| {
        // An unreadable record is replaced: keeping the new drops matters more.
        let mut all = load(state, kind).unwrap_or_default();
        all.extend(new);
        let excess = all.len().saturating_sub(MAX_DROPPED);
        all.drain(..excess);
        let p = path(state, kind);
        let text = serde_json::to_vec_pretty(&all).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &text)
    })();
    if let Err(e) = result {
        tracing::warn!(kind = %kind, "cannot record the dropped desired sidecars: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_drops_with_bounded_reasons() {
        let dir = std::env::temp_dir().join(format!(
            "sidespawn-dropped-{}-{}",
            std::process::id(),
            crate::shared::record::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::new(&dir);
        record(&state, Kind::Dnsmasq, [("k0".to_owned(), "x".repeat(5000))]);
        record(
            &state,
            Kind::Dnsmasq,
            (1..=MAX_DROPPED).map(|i| (format!("k{i}"), "gone".to_owned())),
        );
        let all = load(&state, Kind::Dnsmasq).unwrap();
        assert_eq!(all.len(), MAX_DROPPED);
        assert_eq!(all[0].key, "k1");
        assert_eq!(all.last().unwrap().key, format!("k{MAX_DROPPED}"));
        record(&state, Kind::Radvd, [("r".to_owned(), "y".repeat(5000))]);
        assert!(load(&state, Kind::Radvd).unwrap()[0].reason.len() <= MAX_REASON_BYTES + 64);
        assert!(load(&state, Kind::Haproxy).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
