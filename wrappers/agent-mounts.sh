#!/bin/sh
# The podman (or docker) options that put sidespawn-wrapper into an unmodified Neutron agent
# container. Print them, for a deployment tool to splice into its `podman run`, with:
#
#   wrappers/agent-mounts.sh                         # the installed wrapper, the defaults
#   wrappers/agent-mounts.sh --wrapper ./sidespawn-wrapper --config /etc/sidespawn/wrapper.json
#
# Nothing of the image is changed. The one static wrapper binary is mounted, under each program
# name Neutron runs, into a directory that comes before the distribution's on the agent's PATH
# (--bin-dir, default /usr/local/sbin: first on podman's default PATH and on Debian's and
# Ubuntu's sudo secure_path), and as the kill scripts Neutron finds in
# /etc/neutron/kill_scripts. `env` (from `ip netns exec <ns> env PROCESS_TAG=... dnsmasq ...`,
# also under neutron-rootwrap) finds the wrapper first; probes (`dnsmasq --version`,
# `haproxy -v`, ...) are run by the wrapper with the next program of that name on PATH, the
# distribution's /usr/sbin/dnsmasq.
#
# No wrapper configuration is needed: the wrapper's defaults (queue root
# /var/lib/neutron/sidespawn, namespaces in /run/netns) are the host's. --config mounts one.
set -eu

usage() {
    cat <<'USAGE'
usage: agent-mounts.sh [--wrapper PATH] [--bin-dir DIR] [--neutron-dir DIR] [--config FILE]
  --wrapper PATH     the static sidespawn-wrapper on the host
                     (default /usr/local/bin/sidespawn-wrapper; also accepted as the only argument)
  --bin-dir DIR      the directory in the container that holds the wrapper's program names; it
                     must come before the distribution's (/usr/sbin) on the PATH Neutron's
                     commands run with (default /usr/local/sbin)
  --neutron-dir DIR  the host directory shared as /var/lib/neutron (default /var/lib/neutron;
                     the host's queue root, <DIR>/sidespawn by default, must lie in it)
  --config FILE      a wrapper configuration on the host, mounted at /etc/sidespawn/wrapper.json
                     (default: none; the wrapper's defaults match the host's)
example:
  podman run -d --privileged $(agent-mounts.sh) IMAGE neutron-dhcp-agent ...
USAGE
}

bad() {
    echo "agent-mounts.sh: $*" >&2
    usage >&2
    exit 2
}

WRAPPER=/usr/local/bin/sidespawn-wrapper
BIN_DIR=/usr/local/sbin
NEUTRON_DIR=/var/lib/neutron
CONFIG=
while [ $# -gt 0 ]; do
    case $1 in
        --wrapper) [ $# -ge 2 ] || bad "$1 needs a value"; WRAPPER=$2; shift 2 ;;
        --bin-dir) [ $# -ge 2 ] || bad "$1 needs a value"; BIN_DIR=$2; shift 2 ;;
        --neutron-dir) [ $# -ge 2 ] || bad "$1 needs a value"; NEUTRON_DIR=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || bad "$1 needs a value"; CONFIG=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) bad "unknown option $1" ;;
        *) WRAPPER=$1; shift ;;
    esac
done
case $BIN_DIR in
    /usr/sbin | /usr/bin | /sbin | /bin)
        echo "agent-mounts.sh: --bin-dir $BIN_DIR is where the distribution's programs are; the wrapper must not hide them" >&2
        exit 2
        ;;
    /*) ;;
    *) echo "agent-mounts.sh: --bin-dir $BIN_DIR is not an absolute path" >&2; exit 2 ;;
esac
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || {
    echo "agent-mounts.sh: --config $CONFIG does not exist" >&2
    exit 2
}

cat <<OPTS
--pid host
--network host
--volume /run/netns:/run/netns:shared
--volume $NEUTRON_DIR:/var/lib/neutron:shared
--volume $WRAPPER:$BIN_DIR/dnsmasq:ro
--volume $WRAPPER:$BIN_DIR/haproxy:ro
--volume $WRAPPER:$BIN_DIR/keepalived:ro
--volume $WRAPPER:$BIN_DIR/radvd:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/dnsmasq-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/haproxy-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/keepalived-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/radvd-kill:ro
OPTS
[ -z "$CONFIG" ] || echo "--volume $CONFIG:/etc/sidespawn/wrapper.json:ro"
