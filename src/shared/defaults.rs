//! Defaults the agent side and the host side must agree on: where the
//! queues are and where named network namespaces are mounted, and how long
//! either waits for a queue lock. Both [`crate::agent::config`] and
//! [`crate::host::config`] read them from here, so neither side's defaults come
//! from the other's module and they cannot drift apart.

/// Parent of the per-kind queue directories, shared by the agent
/// containers and the host.
pub const QUEUE_ROOT: &str = "/var/lib/neutron/sidespawn";

/// Where named network namespaces are mounted (`ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// How long the wrapper and the claim wait for a queue lock, in ms.
pub const LOCK_TIMEOUT_MS: u64 = 10_000;
