//! sidespawn: spawn Neutron side processes (dnsmasq, haproxy, keepalived,
//! radvd) as podman containers on behalf of agent containers that have no
//! access to the container engine.
//!
//! The agent side is [`wrapper`]: it appends a [`record::Record`] to a
//! per-kind [`queue`] under a [`lock`]. The host side claims those records
//! and reconciles sidecar containers with them.

pub mod ack;
pub mod atomic;
pub mod claim;
pub mod config;
pub mod defaults;
pub mod desired;
pub mod gc;
pub mod health;
pub mod images;
pub mod kind;
pub mod limit;
pub mod lock;
pub mod logs;
pub mod netns;
pub mod parallel;
pub mod plan;
pub mod queue;
pub mod record;
pub mod runtime;
pub mod sdnotify;
pub mod shell;
pub mod state;
pub mod status;
pub mod sync;
pub mod units;
pub mod upgrade;
pub mod watch;
pub mod wrapper;
pub mod wrapper_config;
