//! What runs inside a sidecar container before its daemon: the entry
//! helper that joins a named network namespace on engines that cannot
//! ([`netns_exec`], docker). It is part of the static `sidespawn-wrapper`
//! and reached only by its `argv[0]` (`sidespawn-netns-exec`), which the
//! host sets as the container's entrypoint; a request only ever supplies
//! arguments after the image, never the entrypoint.

pub mod netns_exec;
