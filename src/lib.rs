//! sidespawn: spawn Neutron side processes (dnsmasq, haproxy, keepalived,
//! radvd) as podman containers on behalf of agent containers that have no
//! access to the container engine.
//!
//! # Architecture map
//!
//! The folders are the architecture; read them in this order.
//!
//! - [`shared`]: what both sides agree on. A request is a
//!   [`shared::record::Record`] of a [`shared::kind::Kind`], appended to the
//!   per-kind [`shared::queue`] under its [`shared::lock`] and answered with
//!   an [`shared::ack`]; [`shared::netns`] names the network namespace a
//!   request comes from; [`shared::defaults`] holds the paths and timeouts
//!   both sides must use.
//! - [`agent`]: `sidespawn-wrapper`, inside the agent container.
//!   [`agent::wrapper`] turns a command line into a record and queues it;
//!   [`agent::config`] is its configuration. It never runs podman.
//! - [`host`]: `sidespawn`, as root on the host. [`host::sync`] runs, per
//!   kind: claim ([`host::claim`]) → fold ([`host::desired`]) → plan
//!   ([`host::plan`]) → execute (through the [`host::runtime`] and
//!   [`host::namespaces`] seams, with [`host::parallel`]) → acknowledge.
//!   Around it: [`host::config`], [`host::state`], the lifecycle commands
//!   ([`host::gc`], [`host::upgrade`], [`host::status`], [`host::logs`],
//!   [`host::watch`]) and the systemd [`host::units`].
//!
//! - [`sidecar`]: what the static wrapper does inside a sidecar under the
//!   name `sidespawn-netns-exec` (docker's way into a named namespace).
//!
//! The binaries in `src/bin/` only parse arguments and call into [`agent`]
//! or [`host`]. Dependencies point one way: `agent` and `host` use `shared`,
//! never each other.

pub mod agent;
pub mod host;
pub mod shared;
pub mod sidecar;
