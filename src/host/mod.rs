//! The host side: `sidespawn`, run as root.
//!
//! One sync, per kind ([`sync`]): claim the queue ([`claim`], with its
//! [`claim::journal`] and [`claim::rejects`]) → fold the records into the
//! desired sidecars ([`desired`]) → plan the engine calls ([`plan`], with
//! [`limit`] and [`images`]) → execute them through the engine seam
//! ([`runtime`]: the trait and [`runtime::Call`], the podman runner, its
//! output parsing) and the namespace seam ([`namespaces`]), bounded by
//! [`parallel`] → acknowledge (written back by [`claim`]). What a sync keeps
//! between runs is [`state`]; files are replaced through [`atomic`].
//!
//! Around it: [`config`] (profiles per kind), the lifecycle commands
//! ([`gc`], [`upgrade`], [`health`], [`status`] and its [`metrics`],
//! [`logs`], [`watch`]), [`logging`] to the journal, the systemd [`units`],
//! [`check`] of a host, the packages' [`manpages`], and [`shell`] quoting
//! for what is printed.

pub mod atomic;
pub mod check;
pub mod claim;
pub mod config;
pub mod desired;
pub mod dropped;
pub mod follow;
pub mod gc;
pub mod health;
pub mod images;
pub mod limit;
pub mod logging;
pub mod logs;
pub mod manpages;
pub mod metrics;
pub mod namespaces;
pub mod parallel;
pub mod plan;
pub mod predict;
pub mod runtime;
pub mod shell;
pub mod state;
pub mod status;
pub mod sync;
pub mod units;
pub mod upgrade;
pub mod watch;
