# Sourced by build-deb.sh and build-rpm.sh (after `die` and `repo` are set): the binaries and
# version both packages are built from. Sets host_bin, wrapper_bin and version.
#
# The host tool is built with cargo build --release, the wrapper statically linked in its own
# target dir (target/static), unless SIDESPAWN_HOST_BIN and SIDESPAWN_WRAPPER_BIN name
# prebuilt ones.

host_bin=${SIDESPAWN_HOST_BIN:-}
wrapper_bin=${SIDESPAWN_WRAPPER_BIN:-}
if [ -z "$host_bin" ]; then
    (cd "$repo" && cargo build --release --bin sidespawn) >&2
    host_bin=$repo/target/release/sidespawn
fi
if [ -z "$wrapper_bin" ]; then
    (cd "$repo" && cargo rustc --release --bin sidespawn-wrapper --target-dir target/static \
        -- -C target-feature=+crt-static) >&2
    wrapper_bin=$repo/target/static/release/sidespawn-wrapper
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
