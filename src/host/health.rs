//! Optional per-kind health checks: the profile's `health_cmd` run inside
//! each running sidecar with `podman exec`, bounded by `health_timeout_s`
//! and run `parallelism` at a time. Only the backstop (`sync --full`) and
//! `status` run them: one `podman exec` per sidecar on every request-driven
//! pass would slow exactly the bursts that must stay fast.

use std::collections::BTreeMap;

use crate::host::config::Profile;
use crate::host::runtime::Runtime;

/// Checks `names` (running containers of `profile`'s kind); returns the
/// failures by container name. Empty when the profile has no check.
pub fn failures(
    profile: &Profile,
    runtime: &dyn Runtime,
    names: &[String],
    parallelism: usize,
) -> BTreeMap<String, String> {
    let Some(cmd) = &profile.health_cmd else {
        return BTreeMap::new();
    };
    let checks = crate::host::parallel::map(names, parallelism, |_, name| {
        runtime.exec_check(name, cmd, profile.health_timeout)
    });
    names
        .iter()
        .zip(checks)
        .filter_map(|(name, r)| Some((name.clone(), format!("health check failed: {}", r.err()?))))
        .collect()
}
