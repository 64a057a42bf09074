//! Configuration of the in-container wrapper.
//!
//! Optional JSON file: `$SIDESPAWN_WRAPPER_CONFIG`, else
//! `/etc/sidespawn/wrapper.json`. A missing default file means "all
//! defaults"; a missing file named by the variable, unreadable JSON or an
//! unknown key is an error, so a typo never silently changes behaviour.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::shared::defaults;
use crate::shared::kind::Kind;

pub const DEFAULT_PATH: &str = "/etc/sidespawn/wrapper.json";
pub const ENV_VAR: &str = "SIDESPAWN_WRAPPER_CONFIG";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WrapperConfig {
    /// Parent of the per-kind queue directories (shared with the host).
    pub queue_root: PathBuf,
    /// Where named network namespaces are mounted (the host's /run/netns).
    pub netns_dir: PathBuf,
    /// How long to wait for the queue lock before failing.
    pub lock_timeout_ms: u64,
    /// Per-kind settings; kinds not listed use the defaults.
    pub kinds: BTreeMap<Kind, KindConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindConfig {
    /// The real program that answers probes (`dnsmasq --version`...); unset, the wrapper
    /// runs the next `<kind>` on `PATH` after its own directory.
    pub passthrough: Option<PathBuf>,
    /// Arguments that make a call a probe; `null` keeps the defaults.
    pub probe_args: Option<Vec<String>>,
    /// Whether a start request may come from the host network (no named
    /// namespace).
    pub allow_host_network: bool,
    /// Wait for the host's acknowledgement of start requests.
    pub start_wait: bool,
    /// Wait for the host's acknowledgement of kill requests.
    pub kill_wait: bool,
    /// How long to wait for an acknowledgement.
    pub wait_timeout_ms: u64,
}

impl Default for WrapperConfig {
    fn default() -> Self {
        WrapperConfig {
            queue_root: defaults::QUEUE_ROOT.into(),
            netns_dir: defaults::NETNS_DIR.into(),
            lock_timeout_ms: defaults::LOCK_TIMEOUT_MS,
            kinds: BTreeMap::new(),
        }
    }
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            passthrough: None,
            probe_args: None,
            allow_host_network: false,
            start_wait: false,
            kill_wait: true,
            // Neutron gives a kill script no deadline of its own; stay well
            // inside the 60 s it allows a start.
            wait_timeout_ms: 50_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read wrapper configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid wrapper configuration {path}: {source} (keys are documented in README.md, \"Wrapper configuration\")"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl WrapperConfig {
    /// Loads the configuration the environment points at.
    pub fn load() -> Result<WrapperConfig, ConfigError> {
        match std::env::var_os(ENV_VAR) {
            Some(p) if !p.is_empty() => Self::load_from(Path::new(&p), true),
            _ => Self::load_from(Path::new(DEFAULT_PATH), false),
        }
    }

    /// Loads `path`; when `required` is false a missing file means defaults.
    pub fn load_from(path: &Path, required: bool) -> Result<WrapperConfig, ConfigError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(WrapperConfig::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The settings of `kind` (defaults when not configured).
    pub fn kind(&self, kind: Kind) -> KindConfig {
        self.kinds.get(&kind).cloned().unwrap_or_default()
    }
}

impl KindConfig {
    /// Whether `args` make this call a probe for `kind`.
    pub fn is_probe(&self, kind: Kind, args: &[String]) -> bool {
        match &self.probe_args {
            Some(p) => args.iter().any(|a| p.iter().any(|x| x == a)),
            None => args
                .iter()
                .any(|a| kind.default_probe_args().contains(&a.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c: WrapperConfig = serde_json::from_str(
            r#"{"queue_root":"/q","kinds":{"haproxy":{"allow_host_network":true,"passthrough":"/usr/sbin/haproxy.real"}}}"#,
        )
        .unwrap();
        assert_eq!(c.queue_root, Path::new("/q"));
        assert_eq!(c.netns_dir, Path::new("/run/netns"));
        assert!(c.kind(Kind::Haproxy).allow_host_network);
        assert!(!c.kind(Kind::Dnsmasq).allow_host_network);
        assert!(c.kind(Kind::Dnsmasq).kill_wait);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("sidespawn-wc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wrapper.json");
        std::fs::write(&p, r#"{"queue_rot":"/q"}"#).unwrap();
        let err = WrapperConfig::load_from(&p, true).unwrap_err().to_string();
        assert!(
            err.contains("queue_rot") && err.contains(&p.display().to_string()),
            "{err}"
        );
        assert!(WrapperConfig::load_from(&dir.join("none"), false).is_ok());
        assert!(WrapperConfig::load_from(&dir.join("none"), true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn probes() {
        let k = KindConfig::default();
        assert!(k.is_probe(Kind::Dnsmasq, &["--test".into(), "--conf-file=x".into()]));
        assert!(!k.is_probe(Kind::Dnsmasq, &["-k".into()]));
        assert!(k.is_probe(Kind::Haproxy, &["-vv".into()]));
        let custom = KindConfig {
            probe_args: Some(vec!["-V".into()]),
            ..KindConfig::default()
        };
        assert!(!custom.is_probe(Kind::Haproxy, &["-v".into()]));
        assert!(custom.is_probe(Kind::Haproxy, &["-V".into()]));
    }
}
