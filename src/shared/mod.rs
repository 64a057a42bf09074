//! What the agent side and the host side share: the request kinds and
//! records, the on-disk layout of a queue directory, its lock, the
//! acknowledgement file, network namespace identity, and the defaults both
//! sides must agree on. Nothing here runs podman or writes host state.

pub mod ack;
pub mod defaults;
pub mod kind;
pub mod lock;
pub mod netns;
pub mod queue;
pub mod record;
