//! `kinds.<kind>.max_sidecars`: how many sidecars of a kind one
//! configuration keeps, so that one agent inventing tags cannot make the
//! host start a container per request.
//!
//! Counted by sidecar key: the desired table's keys plus the keys of this
//! configuration's running containers of the kind (a sidecar is counted
//! once, whether desired, running or both). Only starts of keys not counted
//! yet are limited; repeats, replacements, restarts and stops always pass.
//! The sync applies it to each batch's plan ([`apply`]); `status` reports
//! the same count ([`sidecar_keys`]).

use std::collections::HashSet;

use tracing::warn;

use crate::host::config::{HostConfig, Profile};
use crate::host::desired::DesiredTable;
use crate::host::plan::{Answer, JobKind, Plan};
use crate::host::runtime::{ContainerInfo, SidecarLabels, State};
use crate::shared::ack::Outcome;

/// The sidecars of `profile`'s kind this configuration has: the desired
/// ones and the running containers carrying its labels, by key.
pub fn sidecar_keys(
    profile: &Profile,
    desired: &DesiredTable,
    actual: &[ContainerInfo],
) -> HashSet<String> {
    let kind = profile.kind.as_str();
    let mut keys: HashSet<String> = desired.sidecars.keys().cloned().collect();
    keys.extend(
        actual
            .iter()
            .filter(|c| c.state == State::Running)
            .map(SidecarLabels::of)
            .filter(|l| l.kind() == Some(kind) && l.has_all(&profile.labels))
            .filter_map(|l| l.key().map(str::to_owned)),
    );
    keys
}

/// The answer to a start refused by `kinds.<kind>.max_sidecars`.
pub fn limit_message(cfg: &HostConfig, profile: &Profile) -> String {
    let kind = profile.kind;
    format!(
        "limit of {} sidecars for kind {kind} reached; raise kinds.{kind}.max_sidecars in {}",
        profile.max_sidecars,
        cfg.path.display()
    )
}

/// Rejects the starts of this batch that would take the kind past its
/// `max_sidecars`: what exists (desired or running) plus the new keys
/// planned before them. A start of an existing key (a repeat, a
/// replacement, a restart) and every stop pass; a stop in the batch frees
/// its slot. One agent can otherwise make the host run a container per tag
/// it invents.
pub fn apply(
    cfg: &HostConfig,
    profile: &Profile,
    plan: &mut Plan,
    desired: &DesiredTable,
    actual: &[ContainerInfo],
) {
    let mut existing = sidecar_keys(profile, desired, actual);
    for j in plan.jobs.iter().filter(|j| j.what == JobKind::Stop) {
        existing.remove(&j.key);
    }
    let mut count = existing.len();
    let mut refused = 0;
    let mut kept = Vec::with_capacity(plan.jobs.len());
    for job in std::mem::take(&mut plan.jobs) {
        let new =
            matches!(job.what, JobKind::Start | JobKind::Replace) && !existing.contains(&job.key);
        if !new || count < profile.max_sidecars {
            count += usize::from(new);
            kept.push(job);
            continue;
        }
        refused += 1;
        let message = limit_message(cfg, profile);
        for (id, _) in job.answers {
            plan.answers.push(Answer {
                id,
                result: Outcome::Rejected,
                message: message.clone(),
                container: None,
            });
        }
    }
    plan.jobs = kept;
    if refused > 0 {
        warn!(
            kind = %profile.kind,
            "refused {refused} new sidecar(s): {}",
            limit_message(cfg, profile)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::plan::Job;
    use crate::host::runtime::labels;
    use crate::shared::kind::Kind;
    use std::path::PathBuf;

    fn job(key: &str, what: JobKind) -> Job {
        Job {
            key: key.into(),
            container: format!("c-{key}"),
            what,
            steps: Vec::new(),
            answers: vec![(format!("id-{key}"), "ok".into())],
            request: None,
        }
    }

    fn running(key: &str) -> ContainerInfo {
        crate::host::runtime::FakeRuntime::container(
            &format!("c-{key}"),
            State::Running,
            &[(labels::KIND, "dnsmasq"), (labels::KEY, key)],
        )
    }

    #[test]
    fn only_new_keys_past_the_limit_are_refused() {
        let cfg = HostConfig::from_str(
            &PathBuf::from("/etc/sidespawn/config.json"),
            r#"{"kinds":{"dnsmasq":{"image":"i","max_sidecars":3}}}"#,
        )
        .unwrap();
        let profile = &cfg.kinds[&Kind::Dnsmasq];
        let desired = DesiredTable::default();
        // Existing: a (running) and b (running); c exited (does not count).
        let mut exited = running("c");
        exited.state = State::Exited;
        let actual = vec![running("a"), running("b"), exited];
        let mut plan = Plan {
            jobs: vec![
                job("a", JobKind::Replace),
                job("n1", JobKind::Start),
                job("n2", JobKind::Start),
                job("b", JobKind::Stop),
                job("n3", JobKind::Start),
                job("n4", JobKind::Start),
            ],
            ..Plan::default()
        };
        apply(&cfg, profile, &mut plan, &desired, &actual);
        let kept: Vec<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
        // b's stop frees its slot: a + n1 + n2 = 3.
        assert_eq!(kept, ["a", "n1", "n2", "b"]);
        let refused: Vec<&str> = plan.answers.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(refused, ["id-n3", "id-n4"]);
        assert!(plan.answers.iter().all(|a| a.result == Outcome::Rejected
            && a.message
                == "limit of 3 sidecars for kind dnsmasq reached; raise kinds.dnsmasq.max_sidecars in /etc/sidespawn/config.json"));
        assert_eq!(sidecar_keys(profile, &desired, &actual).len(), 2);
    }
}
