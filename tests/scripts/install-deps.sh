#!/usr/bin/env bash
# Install the Debian packages the privileged tests need, and only those that are missing.
# Idempotent: a machine that already has everything is left untouched (no apt-get update).
# Quiet on success; on failure apt's full output is printed and the script exits non-zero.
set -euo pipefail

packages=(
    podman          # runs the sidecars and the agent containers in the end-to-end tests
    runc            # the OCI runtime the test containers.conf selects (crun fails on this VM)
    iproute2        # ip netns add/exec/identify, veth pairs
    dnsmasq-base    # the real dnsmasq copied into the test image
    haproxy         # the real haproxy copied into the test image
    busybox-static  # shell and coreutils applets for the agent test image, udhcpc
    udhcpc          # DHCP client for the lease test
    util-linux      # flock, unshare, nsenter, mount
    systemd         # systemd-analyze verify, /lib/systemd/systemd --user, journald + journalctl
    procps          # ps, pgrep for diagnostics
    rpm             # rpmbuild and rpm -qlp for the RPM of tests/packages.rs
    file            # packaging/stage.sh refuses a dynamically linked wrapper
    docker.io       # dockerd + docker CLI for the docker engine tests (the harness starts its own daemon)
)

die() {
    echo "install-deps: $*" >&2
    exit 1
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian-based machines only"

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages already installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or with sudo available) to install: ${missing[*]}"
    sudo=(sudo)
fi

log=$(mktemp /tmp/sidespawn-install-deps.XXXXXX.log)
trap 'rm -f "$log"' EXIT

run_logged() {
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "failed: $*"
    fi
}

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
run_logged "${sudo[@]}" apt-get update -q
run_logged "${sudo[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"

for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = installed ] || die "$pkg is still not installed after apt-get install"
done
echo "install-deps: installed ${missing[*]}"
