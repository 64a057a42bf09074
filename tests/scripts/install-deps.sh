#!/usr/bin/env bash
# Install the Debian packages the privileged tests need, and only those that are missing, then
# Neutron's own rootwrap (neutron-rootwrap, rootwrap.conf and the shipped filters) into a
# virtualenv at $SIDESPAWN_NEUTRON_VENV (default /opt/sidespawn-neutron-venv), made with
# Debian's python3 so that the stock agent test image can carry the same interpreter.
# Idempotent: a machine that already has everything is left untouched (no apt-get update).
# Quiet on success; on failure apt's full output is printed and the script exits non-zero.
set -euo pipefail

packages=(
    podman          # runs the sidecars and the agent containers in the end-to-end tests
    runc            # the OCI runtime the test containers.conf selects (crun fails on this VM)
    iproute2        # ip netns add/exec/identify, veth pairs
    dnsmasq-base    # the real dnsmasq copied into the test image
    haproxy         # the real haproxy copied into the test image
    keepalived      # the real keepalived copied into the test images
    radvd           # the real radvd copied into the test image
    python3-venv    # the Neutron virtualenv below (its rootwrap and filters)
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

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages already installed"
else
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
fi

# Neutron's rootwrap, exactly as Neutron ships it: the neutron wheel without its dependencies
# (only its console scripts and data files are used: neutron-rootwrap, etc/neutron/rootwrap.conf
# and etc/neutron/rootwrap.d/), and oslo.rootwrap, which neutron-rootwrap runs. Pinned, so that
# every machine tests the same filters.
venv=${SIDESPAWN_NEUTRON_VENV:-/opt/sidespawn-neutron-venv}
neutron_version=29.0.0
rootwrap_version=7.10.0
stamp=$venv/.sidespawn-neutron-$neutron_version-rootwrap-$rootwrap_version
if [ -e "$stamp" ]; then
    echo "install-deps: Neutron $neutron_version rootwrap already in $venv"
else
    echo "install-deps: installing Neutron $neutron_version's rootwrap into $venv"
    run_logged "${sudo[@]}" rm -rf "$venv"
    run_logged "${sudo[@]}" /usr/bin/python3 -m venv "$venv"
    run_logged "${sudo[@]}" "$venv/bin/pip" install -q --no-deps "neutron==$neutron_version"
    run_logged "${sudo[@]}" "$venv/bin/pip" install -q "oslo.rootwrap==$rootwrap_version"
    for needed in bin/neutron-rootwrap etc/neutron/rootwrap.conf etc/neutron/rootwrap.d/rootwrap.filters; do
        [ -e "$venv/$needed" ] || die "$venv/$needed is missing after pip install"
    done
    run_logged "${sudo[@]}" touch "$stamp"
    echo "install-deps: installed Neutron $neutron_version's rootwrap into $venv"
fi
