#!/usr/bin/env bash
# The main job, end to end and visibly: a Neutron-shaped `dnsmasq` call inside
# a real agent container becomes a dnsmasq sidecar started by podman in a real
# qdhcp- namespace, which hands a DHCP lease to a client on a veth pair.
#
#   tests/demo.sh           run it and clean up
#   tests/demo.sh --keep    leave the agent, the sidecar and the namespaces
#                           running to explore (the cleanup commands are printed)
#
# Needs root. Installs missing Debian packages, builds sidespawn and the test
# images (no registry needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
[[ $(id -u) == 0 ]] || { echo "tests/demo.sh: run as root (it creates namespaces and containers)" >&2; exit 2; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$'; printf ' %q' "$@"; printf '\033[0m\n'; }

step "installing what is missing (podman, runc, iproute2, dnsmasq, busybox)"
tests/scripts/install-deps.sh
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/tests/scripts/containers.conf}

step "building sidespawn and the statically linked wrapper"
cargo build --release --bin sidespawn
cargo rustc --release --bin sidespawn-wrapper --target-dir target/static -- -C target-feature=+crt-static
SIDESPAWN=$ROOT/target/release/sidespawn
WRAPPER=$ROOT/target/static/release/sidespawn-wrapper

step "building the agent and dnsmasq images locally"
tests/scripts/build-images.sh --wrapper "$WRAPPER"

UUID=$(cat /proc/sys/kernel/random/uuid)
NS=qdhcp-$UUID
CLIENT=sidespawn-demo-client-${UUID:0:8}
VETH=ssd${UUID:0:8}
AGENT=sidespawn-demo-agent-${UUID:0:8}
WORK=$(mktemp -d /tmp/sidespawn-demo.XXXXXX)
DHCP_DIR=/var/lib/neutron/dhcp/$UUID
MAC=fa:16:3e:00:${UUID:0:2}:${UUID:2:2}

MGR_PID=
cleanup() {
    if [[ $KEEP == 1 ]]; then
        step "left running (--keep). To clean up:"
        [[ -n $MGR_PID ]] && echo "  kill $MGR_PID   # the systemd manager running the units"
        echo "  podman rm -f -t 0 $AGENT \$(podman ps -aq --filter label=io.sidespawn.netns=$NS)"
        echo "  ip netns delete $NS; ip netns delete $CLIENT; rm -rf $WORK $DHCP_DIR"
        echo "  state: $WORK   config: $WORK/config.json   try: $SIDESPAWN --config $WORK/config.json status"
        return
    fi
    step "cleaning up"
    if [[ -n $MGR_PID ]]; then kill "$MGR_PID" 2>/dev/null || true; wait "$MGR_PID" 2>/dev/null || true; fi
    podman rm -f -t 0 "$AGENT" >/dev/null 2>&1 || true
    for c in $(podman ps -aq --filter "label=io.sidespawn.netns=$NS" 2>/dev/null); do
        podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    ip netns delete "$NS" 2>/dev/null || true
    ip netns delete "$CLIENT" 2>/dev/null || true
    rm -rf "$WORK" "$DHCP_DIR"
    echo "done"
}
trap cleanup EXIT

step "a qdhcp- namespace with a DHCP port, and a client namespace joined by a veth pair"
ip netns add "$NS"
ip netns add "$CLIENT"
ip link add "${VETH}a" type veth peer name "${VETH}b"
ip link set "${VETH}a" netns "$NS"
ip link set "${VETH}b" netns "$CLIENT"
ip -n "$NS" addr add 10.77.0.2/24 dev "${VETH}a"
ip -n "$NS" link set "${VETH}a" up
ip -n "$NS" link set lo up
ip -n "$CLIENT" link set "${VETH}b" address "$MAC"
ip -n "$CLIENT" link set "${VETH}b" up
echo "namespace $NS: ${VETH}a 10.77.0.2/24; client $CLIENT: ${VETH}b $MAC"

# Neutron's files for this network, in /var/lib/neutron like the agent writes them.
mkdir -p "$DHCP_DIR"
echo "$MAC,host-10-77-0-10.openstacklocal,10.77.0.10" > "$DHCP_DIR/host"
: > "$DHCP_DIR/addn_hosts"
: > "$DHCP_DIR/opts"

mkdir -p "$WORK/queue/dnsmasq" "$WORK/state"
cat > "$WORK/config.json" <<JSON
{
  "queue_root": "$WORK/queue",
  "state_dir": "$WORK/state",
  "kinds": {
    "dnsmasq": {
      "image": "localhost/sidespawn-test-dnsmasq:latest",
      "volumes": ["/var/lib/neutron:/var/lib/neutron"],
      "cap_add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE"]
    }
  }
}
JSON
echo "{\"queue_root\": \"$WORK/queue\", \"kinds\": {\"dnsmasq\": {\"start_wait\": false}}}" > "$WORK/wrapper.json"

step "the host side: sidespawn's generated units under a real systemd manager"
"$SIDESPAWN" --config "$WORK/config.json" units generate --out "$WORK/units" --bin "$SIDESPAWN" >/dev/null
MGR=$WORK/systemd
mkdir -p "$MGR/config/systemd/user" "$MGR/home"
install -d -m 0700 "$MGR/runtime"
cp "$WORK"/units/etc/systemd/system/* "$MGR/config/systemd/user/"
# Test machines only: podman here needs runc and lower ulimits (tests/scripts/containers.conf).
mkdir -p "$MGR/config/systemd/user/sidespawn@.service.d"
printf '[Service]\nEnvironment=CONTAINERS_CONF=%s\n' "$CONTAINERS_CONF" \
    > "$MGR/config/systemd/user/sidespawn@.service.d/test-podman.conf"
# Services' output goes to the manager's log (there is no journal here).
printf '[Manager]\nDefaultStandardOutput=inherit\nDefaultStandardError=inherit\n' > "$MGR/config/systemd/user.conf"
# No systemd as PID 1 on these machines: a user manager in a private mount namespace
# (see docs/TESTING.md) runs the very same unit files.
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$MGR/home" \
    XDG_RUNTIME_DIR="$MGR/runtime" XDG_CONFIG_HOME="$MGR/config" \
    unshare --mount --propagation slave sh -c \
    'mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec /lib/systemd/systemd --user' \
    > "$MGR/manager.log" 2>&1 &
MGR_PID=$!
sctl() { nsenter -t "$MGR_PID" -m env XDG_RUNTIME_DIR="$MGR/runtime" systemctl --user "$@"; }
for _ in $(seq 300); do
    state=$(sctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.1
done
show systemctl enable --now sidespawn@dnsmasq.path
sctl enable --now sidespawn@dnsmasq.path 2>&1 | sed 's/^/  /'
sctl show -P ActiveState sidespawn@dnsmasq.path | sed 's/^/  sidespawn@dnsmasq.path: /'

step "the agent container: no podman socket, only the wrapper bind-mounted over dnsmasq"
show podman run -d --name "$AGENT" --privileged --pid host --network host -v /run/netns:/run/netns:shared -v /var/lib/neutron:/var/lib/neutron -v "$WORK/queue:$WORK/queue" -v "$WRAPPER:/usr/sbin/dnsmasq:ro" ... sidespawn-test-agent sleep infinity
podman run -d --name "$AGENT" --privileged --pid host --network host \
    -v /run/netns:/run/netns:shared \
    -v /var/lib/neutron:/var/lib/neutron \
    -v "$WORK/queue:$WORK/queue" \
    -v "$WORK/wrapper.json:/etc/sidespawn/wrapper.json:ro" \
    -v "$WRAPPER:/usr/sbin/dnsmasq:ro" \
    -v "$WRAPPER:/etc/neutron/kill_scripts/dnsmasq-kill:ro" \
    localhost/sidespawn-test-agent:latest sleep infinity >/dev/null

step "the agent runs dnsmasq exactly as Neutron's DHCP agent does"
ARGS=(--no-hosts "" "--pid-file=$DHCP_DIR/pid" "--dhcp-hostsfile=$DHCP_DIR/host"
      "--addn-hosts=$DHCP_DIR/addn_hosts" "--dhcp-optsfile=$DHCP_DIR/opts"
      "--dhcp-leasefile=$DHCP_DIR/leases" --dhcp-match=set:ipxe,175 --local-service --bind-dynamic
      "--dhcp-range=set:subnet-$UUID,10.77.0.0,static,255.255.255.0,86400s" --dhcp-lease-max=256
      --conf-file=/dev/null --domain=openstacklocal)
show podman exec "$AGENT" ip netns exec "$NS" env "PROCESS_TAG=dnsmasq-$UUID" dnsmasq "${ARGS[@]}"
podman exec "$AGENT" ip netns exec "$NS" env "PROCESS_TAG=dnsmasq-$UUID" dnsmasq "${ARGS[@]}"
echo "wrapper exit code: 0 (the request is queued; Neutron now waits for the pid file)"

step "the host: sidespawn@dnsmasq.path fired sidespawn@dnsmasq.service (sidespawn sync --kind dnsmasq)"
# The name carries the configuration's instance (derived from its state_dir): find the
# sidecar by its tag label instead of spelling the name.
NAME=
for _ in $(seq 600); do
    [[ -n $NAME ]] || NAME=$(podman ps -a --filter "label=io.sidespawn.tag=dnsmasq-$UUID" --format '{{.Names}}')
    [[ $(podman inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null) == running ]] && break
    sleep 0.1
done
grep -a 'sync:' "$MGR/manager.log" | tail -n 1 | sed 's/^/  /'
echo "the host's acknowledgement, in the queue directory the agent shares:"
for _ in $(seq 100); do compgen -G "$WORK/queue/dnsmasq/acks/*.json" >/dev/null && break; sleep 0.1; done
cat "$WORK"/queue/dnsmasq/acks/*.json | sed 's/^/  /'; echo

step "the sidecar, still running after the oneshot service exited"
sctl show -p ActiveState -p Result sidespawn@dnsmasq.service | paste -sd' ' | sed 's/^/  sidespawn@dnsmasq.service: /'
show sidespawn status
"$SIDESPAWN" --config "$WORK/config.json" status || true

step "Neutron's liveness check: the pid file holds a host pid whose cmdline names the network"
for _ in $(seq 100); do [[ -s $DHCP_DIR/pid ]] && break; sleep 0.1; done
PID=$(cat "$DHCP_DIR/pid")
echo "pid file: $PID; /proc/$PID/cmdline: $(tr '\0' ' ' < /proc/$PID/cmdline | cut -c1-160)..."
grep -q "$UUID" "/proc/$PID/cmdline" && echo "contains $UUID: alive"

step "a DHCP client in $CLIENT asks for a lease"
show ip netns exec "$CLIENT" busybox udhcpc -i "${VETH}b" -n -q -f -s /bin/true
ip netns exec "$CLIENT" busybox udhcpc -i "${VETH}b" -n -q -f -t 10 -T 1 -s /bin/true 2>&1 | sed 's/^/  /'
echo "dnsmasq's lease file:"
sed 's/^/  /' "$DHCP_DIR/leases"
grep -q 10.77.0.10 "$DHCP_DIR/leases"
step "the client got 10.77.0.10 from a sidecar the agent asked for without any access to podman"
