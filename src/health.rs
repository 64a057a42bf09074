//! Optional per-kind health checks: the profile's `health_cmd` run inside
//! each running sidecar with `podman exec`, bounded by `health_timeout_s`
//! and run `parallelism` at a time. Only the backstop (`sync --full`) and
//! `status` run them: one `podman exec` per sidecar on every request-driven
//! pass would slow exactly the bursts that must stay fast.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Profile;
use crate::runtime::Runtime;

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
    let next = AtomicUsize::new(0);
    let out = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..parallelism.clamp(1, names.len().max(1)) {
            s.spawn(|| {
                while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = runtime.exec_check(name, cmd, profile.health_timeout) {
                        out.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name.clone(), format!("health check failed: {e}"));
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}
