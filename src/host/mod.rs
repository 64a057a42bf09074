//! The host side: `sidespawn`, run as root. It claims queued records,
//! folds them into the desired sidecars, plans the engine calls and executes
//! them through the [`runtime`] seam, then acknowledges; plus the lifecycle
//! commands (gc, upgrade, status, logs, watch) and the systemd units.

pub mod atomic;
pub mod claim;
pub mod config;
pub mod desired;
pub mod gc;
pub mod health;
pub mod images;
pub mod limit;
pub mod logs;
pub mod namespaces;
pub mod parallel;
pub mod plan;
pub mod runtime;
pub mod sdnotify;
pub mod shell;
pub mod state;
pub mod status;
pub mod sync;
pub mod units;
pub mod upgrade;
pub mod watch;
