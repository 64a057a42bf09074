//! The agent side: `sidespawn-wrapper`, run inside a Neutron agent
//! container in place of `dnsmasq`, `haproxy`, ... It turns the command line
//! into a [`crate::shared::record::Record`] and appends it to the queue of its
//! kind; it never talks to the container engine.

pub mod config;
pub mod wrapper;
