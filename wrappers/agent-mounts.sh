#!/bin/sh
# The podman options that put sidespawn-wrapper into a Neutron agent
# container. Print them (for a deployment tool to splice into its
# `podman run`) with:   wrappers/agent-mounts.sh /usr/local/bin/sidespawn-wrapper
#
# Each program name Neutron runs is the same static wrapper binary; it
# decides what to queue from the name it was started as. The real daemons
# stay reachable for probes (`dnsmasq --version`, `haproxy -v`, ...) under
# *.real paths, configured in wrappers/wrapper.json.
set -eu
WRAPPER=${1:-/usr/local/bin/sidespawn-wrapper}
QUEUE_ROOT=${2:-/var/lib/neutron/sidespawn}
cat <<OPTS
--pid host
--network host
--volume /run/netns:/run/netns:shared
--volume /var/lib/neutron:/var/lib/neutron:shared
--volume $QUEUE_ROOT:$QUEUE_ROOT
--volume /etc/sidespawn/wrapper.json:/etc/sidespawn/wrapper.json:ro
--volume $WRAPPER:/usr/sbin/dnsmasq:ro
--volume $WRAPPER:/usr/sbin/haproxy:ro
--volume $WRAPPER:/usr/sbin/keepalived:ro
--volume $WRAPPER:/usr/sbin/radvd:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/dnsmasq-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/haproxy-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/keepalived-kill:ro
--volume $WRAPPER:/etc/neutron/kill_scripts/radvd-kill:ro
OPTS
