//! The namespaces as the planner and the executor see them: the
//! [`Namespaces`] seam, [`HostNamespaces`] which does the I/O on the host's
//! netns directory (through [`crate::shared::netns`]'s identity checks), and
//! `FakeNamespaces`, which answers from a table for tests and benchmarks and
//! is compiled only for them (`test-support`).

use std::path::PathBuf;

use crate::shared::netns::{NetnsError, current_inode, verify};
use crate::shared::record::NetnsRef;

/// The namespaces as the planner and executor see them.
pub trait Namespaces: Sync {
    /// The directory that holds named namespaces (for podman's `--network`).
    fn dir(&self) -> PathBuf;
    /// Checks a recorded namespace still exists with its inode.
    fn verify(&self, ns: &NetnsRef) -> Result<PathBuf, NetnsError>;
    /// The inode of a namespace name now, if it is one.
    fn inode(&self, name: &str) -> Option<u64>;
}

/// The real namespaces under a netns directory.
pub struct HostNamespaces(pub PathBuf);

impl Namespaces for HostNamespaces {
    fn dir(&self) -> PathBuf {
        self.0.clone()
    }
    fn verify(&self, ns: &NetnsRef) -> Result<PathBuf, NetnsError> {
        verify(&self.0, ns)
    }
    fn inode(&self, name: &str) -> Option<u64> {
        current_inode(&self.0, name)
    }
}

#[cfg(any(test, feature = "test-support"))]
pub use fake::FakeNamespaces;

#[cfg(any(test, feature = "test-support"))]
mod fake {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::Namespaces;
    use crate::shared::netns::NetnsError;
    use crate::shared::record::NetnsRef;

    /// Namespaces from a table of name → inode, for unit tests and benchmarks
    /// (the counterpart of `runtime::FakeRuntime`): `verify` answers as the
    /// real check would, missing or replaced, from the table.
    #[derive(Debug, Default)]
    pub struct FakeNamespaces(std::sync::Mutex<HashMap<String, u64>>);

    impl FakeNamespaces {
        pub fn new(entries: impl IntoIterator<Item = (String, u64)>) -> FakeNamespaces {
            FakeNamespaces(std::sync::Mutex::new(entries.into_iter().collect()))
        }

        /// Forgets every namespace, as if all were deleted.
        pub fn clear(&self) {
            self.table().clear();
        }

        fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl Namespaces for FakeNamespaces {
        fn dir(&self) -> PathBuf {
            "/run/netns".into()
        }
        fn verify(&self, ns: &NetnsRef) -> Result<PathBuf, NetnsError> {
            match self.table().get(&ns.name) {
                Some(&i) if i == ns.ino => Ok(self.dir().join(&ns.name)),
                Some(&found) => Err(NetnsError::InodeMismatch {
                    name: ns.name.clone(),
                    expected: ns.ino,
                    found,
                }),
                None => Err(NetnsError::Missing {
                    name: ns.name.clone(),
                    dir: self.dir(),
                }),
            }
        }
        fn inode(&self, name: &str) -> Option<u64> {
            self.table().get(name).copied()
        }
    }
}
