//! The fixed set of side processes an agent may ask for.
//!
//! A kind is the only thing that selects a host profile, so it is a closed
//! enum: a record naming anything else is rejected before it reaches any
//! other code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A side process that agents may request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dnsmasq,
    Haproxy,
    Keepalived,
    Radvd,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::Dnsmasq, Kind::Haproxy, Kind::Keepalived, Kind::Radvd];

    /// The program name Neutron runs, and the name of the queue directory.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dnsmasq => "dnsmasq",
            Kind::Haproxy => "haproxy",
            Kind::Keepalived => "keepalived",
            Kind::Radvd => "radvd",
        }
    }

    /// Arguments that make the real program answer a probe (version, config
    /// test) instead of starting a daemon. Probes are answered synchronously
    /// by the real binary, never queued.
    pub fn default_probe_args(self) -> &'static [&'static str] {
        match self {
            Kind::Dnsmasq => &["--test", "--version"],
            Kind::Haproxy => &["-v", "-vv"],
            Kind::Keepalived => &["--version", "-v"],
            Kind::Radvd => &["--version"],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string named no known kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?} (known: dnsmasq, haproxy, keepalived, radvd)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_str_and_json() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), k);
        }
    }

    #[test]
    fn rejects_unknown_and_case_variants() {
        assert!("Dnsmasq".parse::<Kind>().is_err());
        assert!("bash".parse::<Kind>().is_err());
        assert!("".parse::<Kind>().is_err());
    }
}
