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

/// Longest message the host keeps about one request (in its ack, the
/// reject log and the desired table's `last_error`): podman errors embed
/// the command line, which a request can make as long as the queue allows,
/// and an ack over [`MAX_ACK_BYTES`] would not be written at all.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, the cut part
/// replaced by `… (N more bytes)` (which the result's length includes).
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    // The marker is at most 30 bytes; keep what fits in front of it.
    let mut cut = max.saturating_sub(30);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..cut],
        text.len() - cut
    ))
}

impl Ack {
    /// The acknowledgement as JSON of at most `max` bytes: the message is
    /// cut (see [`bounded`]) until it fits, so every request gets an answer
    /// a reader accepts whatever its message said. `None` only when even an
    /// empty message does not fit (an id or container name that long is
    /// refused before any ack is written).
    pub fn to_json_within(&self, max: usize) -> Option<Vec<u8>> {
        let mut budget = self.message.len();
        loop {
            let ack = Ack {
                message: bounded(&self.message, budget).into_owned(),
                ..self.clone()
            };
            let json = serde_json::to_vec(&ack).ok()?;
            if json.len() <= max {
                return Some(json);
            }
            if budget == 0 {
                return None;
            }
            // Shrink in proportion: escapes (`\u0001` is six bytes for
            // one) make the JSON longer than the text, by a factor the
            // proportion keeps.
            let scaled = (budget as u128 * max as u128 / json.len() as u128) as usize;
            budget = scaled.min(budget - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_char_boundary_and_says_how_much() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(100);
        let b = bounded(&long, 64);
        assert!(b.len() <= 64, "{b}");
        assert!(b.ends_with("more bytes)"), "{b}");
        assert!(b.starts_with("éé"), "{b}");
        let kept = b.split('…').next().unwrap().len();
        assert!(b.contains(&format!("({} more bytes)", 200 - kept)), "{b}");
    }

    #[test]
    fn an_ack_with_a_huge_message_still_fits_and_parses() {
        for message in [
            "x".repeat(200_000),
            "\u{1}".repeat(100_000),
            "é\"".repeat(50_000),
        ] {
            let ack = Ack {
                v: 1,
                id: "0123-abcd".into(),
                result: Outcome::Failed,
                message: format!("podman failed: {message}"),
                container: Some("sidespawn-dnsmasq-t-x".into()),
                ts: 1,
            };
            let json = ack.to_json_within(MAX_ACK_BYTES as usize).unwrap();
            assert!(json.len() as u64 <= MAX_ACK_BYTES, "{}", json.len());
            let back: Ack = serde_json::from_slice(&json).unwrap();
            assert!(
                back.message.starts_with("podman failed: "),
                "{}",
                &back.message[..40]
            );
            assert!(back.message.ends_with("more bytes)"));
            assert_eq!(back.result, Outcome::Failed);
        }
        let small = Ack {
            v: 1,
            id: "a".into(),
            result: Outcome::Ok,
            message: "fine".into(),
            container: None,
            ts: 1,
        };
        assert_eq!(
            small.to_json_within(1000).unwrap(),
            serde_json::to_vec(&small).unwrap()
        );
    }
}
