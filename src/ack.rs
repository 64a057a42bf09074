//! Acknowledgements: the host's answer to one request.
//!
//! The host writes `<queue dir>/acks/<request id>.json` atomically (a
//! temporary file renamed into place), so a reader never sees half an answer.
//! Kill scripts wait for theirs; start requests wait only when configured.

use serde::{Deserialize, Serialize};

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done: the sidecar runs, was signalled, or was stopped and removed.
    Ok,
    /// The host tried and failed (podman error, timeout, no such process).
    Failed,
    /// The request was refused without trying (invalid, namespace gone...).
    Rejected,
}

/// One acknowledgement file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub v: u32,
    pub id: String,
    pub result: Outcome,
    /// Human-readable detail; for a kill request whose pid is unknown it
    /// contains `No such process`, which Neutron tolerates.
    pub message: String,
    /// The sidecar container concerned, when there is one.
    pub container: Option<String>,
    /// Unix milliseconds when the host wrote it.
    pub ts: u64,
}

/// Longest acknowledgement file a reader accepts.
pub const MAX_ACK_BYTES: u64 = 64 * 1024;
