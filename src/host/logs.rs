//! `sidespawn logs <name|tag|netns> [-f]`: finds the one sidecar an
//! operator means and hands over to `podman logs`.
//!
//! Operators know a network by its namespace (`qdhcp-<uuid>`) or Neutron's
//! process tag, rarely by our container name, so all three are accepted.
//! Only our containers are candidates; an argument matching several (a
//! namespace with a dnsmasq per segment) is an error that lists them.

use crate::host::config::HostConfig;
use crate::host::runtime::{ContainerInfo, Runtime, RuntimeError, SidecarLabels};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogsError {
    #[error("no sidecar is named {0:?} or has that process tag or namespace")]
    NotFound(String),
    #[error("{arg:?} matches several sidecars; name one of them:\n  {}", candidates.join("\n  "))]
    Ambiguous {
        arg: String,
        candidates: Vec<String>,
    },
    #[error("cannot list containers: {0}")]
    List(#[source] RuntimeError),
    #[error(transparent)]
    Engine(RuntimeError),
}

/// The container name `arg` stands for: an exact container name wins, else
/// the single sidecar with that tag label, else with that netns label.
pub fn resolve(arg: &str, containers: &[ContainerInfo]) -> Result<String, LogsError> {
    if containers.iter().any(|c| c.name == arg) {
        return Ok(arg.to_owned());
    }
    let by_tag = |c: &ContainerInfo| SidecarLabels::of(c).tag() == Some(arg);
    let by_netns = |c: &ContainerInfo| SidecarLabels::of(c).netns() == Some(arg);
    for matches in [&by_tag as &dyn Fn(&ContainerInfo) -> bool, &by_netns] {
        let mut hits: Vec<String> = containers
            .iter()
            .filter(|c| matches(c))
            .map(|c| c.name.clone())
            .collect();
        hits.sort();
        hits.dedup();
        match hits.len() {
            0 => continue,
            1 => return Ok(hits.remove(0)),
            _ => {
                return Err(LogsError::Ambiguous {
                    arg: arg.to_owned(),
                    candidates: hits,
                });
            }
        }
    }
    Err(LogsError::NotFound(arg.to_owned()))
}

/// `sidespawn logs`: finds the sidecar `target` stands for among this
/// configuration's and streams its logs through the runtime. Returns
/// the engine's exit status, which is the command's.
pub fn run(
    cfg: &HostConfig,
    runtime: &dyn Runtime,
    target: &str,
    follow: bool,
) -> Result<std::process::ExitStatus, LogsError> {
    let containers = runtime.list(&cfg.instance).map_err(LogsError::List)?;
    let name = resolve(target, &containers)?;
    runtime.logs(&name, follow).map_err(LogsError::Engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::{FakeRuntime, State, labels};

    fn cs() -> Vec<ContainerInfo> {
        vec![
            FakeRuntime::container(
                "sidespawn-dnsmasq-t-dnsmasq-a",
                State::Running,
                &[(labels::TAG, "dnsmasq-a"), (labels::NETNS, "qdhcp-x")],
            ),
            FakeRuntime::container(
                "sidespawn-dnsmasq-t-dnsmasq-b",
                State::Exited,
                &[(labels::TAG, "dnsmasq-b"), (labels::NETNS, "qdhcp-x")],
            ),
            FakeRuntime::container(
                "sidespawn-haproxy-n-qdhcp-y",
                State::Running,
                &[(labels::NETNS, "qdhcp-y")],
            ),
        ]
    }

    #[test]
    fn by_name_tag_or_namespace() {
        let c = cs();
        assert_eq!(
            resolve("sidespawn-dnsmasq-t-dnsmasq-b", &c).unwrap(),
            "sidespawn-dnsmasq-t-dnsmasq-b"
        );
        assert_eq!(
            resolve("dnsmasq-a", &c).unwrap(),
            "sidespawn-dnsmasq-t-dnsmasq-a"
        );
        assert_eq!(
            resolve("qdhcp-y", &c).unwrap(),
            "sidespawn-haproxy-n-qdhcp-y"
        );
    }

    #[test]
    fn ambiguous_lists_candidates_and_unknown_says_so() {
        let e = resolve("qdhcp-x", &cs()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("sidespawn-dnsmasq-t-dnsmasq-a")
                && text.contains("sidespawn-dnsmasq-t-dnsmasq-b"),
            "{text}"
        );
        assert_eq!(
            resolve("nope", &cs()).unwrap_err(),
            LogsError::NotFound("nope".into())
        );
    }
}
