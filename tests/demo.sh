#!/usr/bin/env bash
# The main job, end to end and visibly, in the documented layout: sidespawn installed on the
# host (README: "Install on a real host", by hand), an unmodified agent image run with exactly
# the options wrappers/agent-mounts.sh prints, and Neutron's
# `ip netns exec qdhcp-<uuid> env PROCESS_TAG=... dnsmasq ARGS` call inside it (through
# neutron-rootwrap) becoming a dnsmasq sidecar that podman starts in the real namespace and that
# hands a DHCP lease to a client on a veth pair. `dnsmasq --version` in the agent answers with
# the image's own dnsmasq; Neutron's kill script stops the sidecar again.
#
#   tests/demo.sh           run it and clean up
#   tests/demo.sh --keep    leave the agent, the sidecar, the namespaces and the systemd
#                           manager running to explore (the cleanup commands are printed)
#
# Needs root. Installs missing Debian packages and Neutron's rootwrap
# (tests/scripts/install-deps.sh), builds sidespawn and the test images (no registry needed).
# What the install steps write on a host (/usr/local, /etc/sidespawn, the units,
# /var/lib/neutron, /var/lib/sidespawn) goes under a temporary directory standing for /, so the
# demo changes nothing of the machine's own; the host's systemd is a manager of its own, since
# the test machines have no systemd as PID 1 (docs/TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
[[ $(id -u) == 0 ]] || { echo "tests/demo.sh: run as root (it creates namespaces and containers)" >&2; exit 2; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$'; printf ' %q' "$@"; printf '\033[0m\n'; }
# A command line as typed, for those with a substitution or shell syntax in them.
show_line() { printf '\033[2m$ %s\033[0m\n' "$*"; }

step "installing what is missing (podman, runc, iproute2, dnsmasq, busybox, Neutron's rootwrap)"
tests/scripts/install-deps.sh
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/tests/scripts/containers.conf}

step "building sidespawn and the statically linked wrapper (README: Install on a real host, by hand)"
cargo build --release --bin sidespawn
cargo rustc --release --bin sidespawn-wrapper --target-dir target/static -- -C target-feature=+crt-static

step "building the images locally: a stock agent image (nothing of sidespawn in it) and dnsmasq"
IMAGES=$(tests/scripts/build-images.sh --stock-agent)
STOCK_AGENT_IMAGE=$(sed -n 's/^stock_agent=//p' <<<"$IMAGES")
DNSMASQ_IMAGE=$(sed -n 's/^dnsmasq=//p' <<<"$IMAGES")
[[ -n $STOCK_AGENT_IMAGE && -n $DNSMASQ_IMAGE ]] || { echo "build-images.sh printed no stock_agent= or dnsmasq=: $IMAGES" >&2; exit 1; }
echo "agent image:   $STOCK_AGENT_IMAGE"
echo "sidecar image: $DNSMASQ_IMAGE"

UUID=$(cat /proc/sys/kernel/random/uuid)
NS=qdhcp-$UUID
CLIENT=sidespawn-demo-client-${UUID:0:8}
VETH=ssd${UUID:0:8}
AGENT=sidespawn-demo-agent-${UUID:0:8}
WORK=$(mktemp -d /tmp/sidespawn-demo.XXXXXX)
# The host's / for what the install steps write (binaries, configuration, units, state, and the
# /var/lib/neutron the agent shares), so that the demo changes nothing of this machine's own.
HOST=$WORK/host
NEUTRON=$HOST/var/lib/neutron
SIDESPAWN=$HOST/usr/local/sbin/sidespawn
WRAPPER=$HOST/usr/local/bin/sidespawn-wrapper
CONFIG=$HOST/etc/sidespawn/config.json
# Neutron's files for this network: the agent's /var/lib/neutron/dhcp/<uuid>.
DHCP_DIR=/var/lib/neutron/dhcp/$UUID
HOST_DHCP_DIR=$NEUTRON/dhcp/$UUID
MAC=fa:16:3e:00:${UUID:0:2}:${UUID:2:2}

MGR_PID=
cleanup() {
    local status=$?
    if [[ $KEEP == 1 ]]; then
        step "left running (--keep). To clean up:"
        [[ -n $MGR_PID ]] && echo "  kill $MGR_PID   # the systemd manager running the units"
        echo "  podman rm -f -t 0 $AGENT \$(podman ps -aq --filter label=io.sidespawn.netns=$NS)"
        echo "  ip netns delete $NS; ip netns delete $CLIENT; rm -rf $WORK"
        echo "  try: $SIDESPAWN --config $CONFIG status"
        echo "       podman exec $AGENT ip netns exec $NS env PROCESS_TAG=dnsmasq-$UUID /etc/neutron/kill_scripts/dnsmasq-kill 15 \$(cat $HOST_DHCP_DIR/pid)"
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
    rm -rf "$WORK"
    echo "done"
    [[ $status == 0 ]] || printf '\n\033[1;31mtests/demo.sh FAILED (exit %s)\033[0m\n' "$status" >&2
}
trap cleanup EXIT

# Polls COMMAND... every 0.1 s until it succeeds; fails the demo after SECONDS.
wait_for() {
    local what=$1 secs=$2 end
    shift 2
    end=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < end)) || { echo "tests/demo.sh: timed out after ${secs}s waiting for $what" >&2; return 1; }
        sleep 0.1
    done
}

step "installing sidespawn on the host: binaries, configuration, units (under $HOST, which stands for /)"
show install -D -m 0755 target/release/sidespawn "$SIDESPAWN"
install -D -m 0755 target/release/sidespawn "$SIDESPAWN"
show install -D -m 0755 target/static/release/sidespawn-wrapper "$WRAPPER"
install -D -m 0755 target/static/release/sidespawn-wrapper "$WRAPPER"
install -d -m 0755 "$HOST/etc/sidespawn" "$NEUTRON"
# The sidecars see the host's /var/lib/neutron at the same path, like the agent (Neutron's
# pid, hosts and options files); no /etc/neutron or /dev/log are needed here.
cat > "$CONFIG" <<JSON
{
  "queue_root": "$NEUTRON/sidespawn",
  "state_dir": "$HOST/var/lib/sidespawn",
  "kinds": {
    "dnsmasq": {
      "image": "$DNSMASQ_IMAGE",
      "volumes": ["$NEUTRON:/var/lib/neutron"],
      "cap_add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE"]
    }
  }
}
JSON
echo "$CONFIG:"
sed 's/^/  /' "$CONFIG"
show sidespawn units install --root "$HOST" --bin "$SIDESPAWN" --config "$CONFIG"
"$SIDESPAWN" --config "$CONFIG" units install --root "$HOST" --bin "$SIDESPAWN" | grep '^Created' | sed 's/^/  /'
# What `units install --enable` runs on a host: the queue directories, then the units.
show systemd-tmpfiles --create "$HOST/etc/tmpfiles.d/sidespawn.conf"
systemd-tmpfiles --create "$HOST/etc/tmpfiles.d/sidespawn.conf"

step "the host's systemd runs the installed units (a manager of its own here: systemd is not PID 1)"
MGR=$WORK/systemd
mkdir -p "$MGR/config/systemd/user" "$MGR/home"
install -d -m 0700 "$MGR/runtime"
cp "$HOST"/etc/systemd/system/* "$MGR/config/systemd/user/"
# Test machines only: podman here needs runc and lower ulimits (tests/scripts/containers.conf).
for unit in sidespawn@.service sidespawn-backstop.service; do
    mkdir -p "$MGR/config/systemd/user/$unit.d"
    printf '[Service]\nEnvironment=CONTAINERS_CONF=%s\n' "$CONTAINERS_CONF" \
        > "$MGR/config/systemd/user/$unit.d/test-podman.conf"
done
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
manager_up() {
    local state
    state=$(sctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]]
}
wait_for "the systemd manager" 60 manager_up
show systemctl enable --now sidespawn@dnsmasq.path sidespawn-backstop.timer
sctl enable --now sidespawn@dnsmasq.path sidespawn-backstop.timer 2>&1 | sed 's/^/  /'
for unit in sidespawn@dnsmasq.path sidespawn-backstop.timer; do
    echo "  $unit: $(sctl show -P ActiveState "$unit")"
done

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

step "the agent container: the stock image, run with the options wrappers/agent-mounts.sh prints"
show wrappers/agent-mounts.sh --wrapper "$WRAPPER" --neutron-dir "$NEUTRON"
MOUNTS=$(wrappers/agent-mounts.sh --wrapper "$WRAPPER" --neutron-dir "$NEUTRON")
sed 's/^/  /' <<<"$MOUNTS"
# One option per line; the values hold no white space (the demo's paths are under /tmp).
read -r -d '' -a OPTIONS <<<"$MOUNTS" || true
show_line "podman run -d --name $AGENT --privileged \$(wrappers/agent-mounts.sh --wrapper $WRAPPER --neutron-dir $NEUTRON) $STOCK_AGENT_IMAGE sleep infinity"
podman run -d --name "$AGENT" --privileged "${OPTIONS[@]}" "$STOCK_AGENT_IMAGE" sleep infinity >/dev/null
echo "no podman socket, no sidespawn configuration; PATH finds the wrapper before the distribution's dnsmasq:"
show_line "podman exec $AGENT sh -c 'command -v dnsmasq; ls -l /usr/local/sbin/dnsmasq /usr/sbin/dnsmasq'"
podman exec "$AGENT" sh -c 'command -v dnsmasq; ls -l /usr/local/sbin/dnsmasq /usr/sbin/dnsmasq' | sed 's/^/  /'

step "probes answer with the real program: dnsmasq --version inside the agent"
show podman exec "$AGENT" dnsmasq --version
PROBE=$(podman exec "$AGENT" dnsmasq --version)
head -n 2 <<<"$PROBE" | sed 's/^/  /'
REAL=$(podman exec "$AGENT" /usr/sbin/dnsmasq --version)
[[ $PROBE == "$REAL" && $PROBE == "Dnsmasq version "* ]] ||
    { echo "tests/demo.sh: dnsmasq --version through the wrapper differs from /usr/sbin/dnsmasq's" >&2; exit 1; }
echo "identical to /usr/sbin/dnsmasq --version (the wrapper ran the next dnsmasq on PATH)"

step "the agent writes Neutron's files for the network into its /var/lib/neutron"
podman exec "$AGENT" sh -c "mkdir -p $DHCP_DIR && echo '$MAC,host-10-77-0-10.openstacklocal,10.77.0.10' > $DHCP_DIR/host && : > $DHCP_DIR/addn_hosts && : > $DHCP_DIR/opts"
echo "$DHCP_DIR/host: $(cat "$HOST_DHCP_DIR/host")"

step "the agent starts dnsmasq exactly as Neutron's DHCP agent does (root_helper: neutron-rootwrap)"
# The stock image carries Neutron's rootwrap, its rootwrap.conf and its shipped filters.
ROOTWRAP=${SIDESPAWN_NEUTRON_VENV:-/opt/sidespawn-neutron-venv}/bin/neutron-rootwrap
ARGS=(--no-hosts "" "--pid-file=$DHCP_DIR/pid" "--dhcp-hostsfile=$DHCP_DIR/host"
      "--addn-hosts=$DHCP_DIR/addn_hosts" "--dhcp-optsfile=$DHCP_DIR/opts"
      "--dhcp-leasefile=$DHCP_DIR/leases" --dhcp-match=set:ipxe,175 --local-service --bind-dynamic
      "--dhcp-range=set:subnet-$UUID,10.77.0.0,static,255.255.255.0,86400s" --dhcp-lease-max=256
      --conf-file=/dev/null --domain=openstacklocal)
CALL=("$ROOTWRAP" /etc/neutron/rootwrap.conf ip netns exec "$NS" env "PROCESS_TAG=dnsmasq-$UUID" dnsmasq "${ARGS[@]}")
show podman exec "$AGENT" "${CALL[@]}"
podman exec "$AGENT" "${CALL[@]}"
echo "exit code 0: the request is queued (start_wait is off by default); Neutron now waits for the pid file"

step "the host: sidespawn@dnsmasq.path fired sidespawn@dnsmasq.service (sidespawn sync --kind dnsmasq)"
# The name carries the configuration's instance (derived from its state_dir): find the
# sidecar by its tag label instead of spelling the name.
NAME=
sidecar_running() {
    [[ -n $NAME ]] || NAME=$(podman ps -a --filter "label=io.sidespawn.tag=dnsmasq-$UUID" --format '{{.Names}}')
    [[ -n $NAME && $(podman inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null) == running ]]
}
wait_for "the dnsmasq sidecar" 120 sidecar_running
echo "sidecar $NAME is running"
grep -a 'sync:' "$MGR/manager.log" | tail -n 1 | sed 's/^/  /' || true
echo "the host's acknowledgement, in the queue directory the agent shares:"
acked() { compgen -G "$NEUTRON/sidespawn/dnsmasq/acks/*.json" >/dev/null; }
wait_for "the acknowledgement" 60 acked
cat "$NEUTRON"/sidespawn/dnsmasq/acks/*.json | sed 's/^/  /'; echo

step "the sidecar, still running after the oneshot service exited"
sctl show -p ActiveState -p Result sidespawn@dnsmasq.service | paste -sd' ' | sed 's/^/  sidespawn@dnsmasq.service: /'
show sidespawn status
"$SIDESPAWN" --config "$CONFIG" status || true

step "Neutron's liveness check, in the agent: the pid file holds a pid whose cmdline names the network"
pid_file() { [[ -s $HOST_DHCP_DIR/pid ]]; }
wait_for "dnsmasq's pid file" 60 pid_file
PID=$(cat "$HOST_DHCP_DIR/pid")
CMDLINE=$(podman exec "$AGENT" cat "/proc/$PID/cmdline" | tr '\0' ' ')
echo "$DHCP_DIR/pid: $PID; /proc/$PID/cmdline: $(cut -c1-160 <<<"$CMDLINE")..."
grep -q "$UUID" <<<"$CMDLINE" || { echo "tests/demo.sh: pid $PID is not this network's dnsmasq" >&2; exit 1; }
echo "contains $UUID: alive"

step "a DHCP client in $CLIENT asks for a lease"
show ip netns exec "$CLIENT" busybox udhcpc -i "${VETH}b" -n -q -f -t 10 -T 1 -s /bin/true
ip netns exec "$CLIENT" busybox udhcpc -i "${VETH}b" -n -q -f -t 10 -T 1 -s /bin/true 2>&1 | sed 's/^/  /'
echo "dnsmasq's lease file:"
sed 's/^/  /' "$HOST_DHCP_DIR/leases"
grep -q 10.77.0.10 "$HOST_DHCP_DIR/leases"
step "the client got 10.77.0.10 from a sidecar the agent asked for without any access to podman"

[[ $KEEP == 1 ]] && exit 0

step "Neutron disables DHCP for the network: the kill script stops the sidecar"
# Neutron's ProcessManager.disable: SIGTERM through the kind's kill script, run by privsep in
# the namespace with the process tag.
KILL=(ip netns exec "$NS" env "PROCESS_TAG=dnsmasq-$UUID" /etc/neutron/kill_scripts/dnsmasq-kill 15 "$PID")
show podman exec "$AGENT" "${KILL[@]}"
podman exec "$AGENT" "${KILL[@]}"
echo "exit code 0: the host answered (the kill script waits for the host's acknowledgement)"
sidecar_gone() { [[ -z $(podman ps -aq --filter "name=^$NAME\$") ]]; }
wait_for "the sidecar to be removed" 120 sidecar_gone
echo "sidecar $NAME is gone"
