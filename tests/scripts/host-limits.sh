#!/usr/bin/env bash
# Raises the kernel limits a host running many dnsmasq sidecars needs, for the test and benchmark
# runs (tests/run.sh, tests/bench.sh). Every dnsmasq serving DHCP holds one inotify instance as
# root, and so do systemd's path units and `sidespawn watch`; the kernel's default
# fs.inotify.max_user_instances (128 per user, across the whole host) refuses the 129th with
# "failed to create inotify: Too many open files", which fails whatever runs beside a large
# burst. A production DHCP node needs the same (README, "Install on a real host";
# `sidespawn check` warns when the limit is below the dnsmasq profile's max_sidecars).
# Only raises: a limit already higher is left alone.
set -euo pipefail

want_instances=${SIDESPAWN_INOTIFY_INSTANCES:-8192}
file=/proc/sys/fs/inotify/max_user_instances
have=$(cat "$file")
if [ "$have" -lt "$want_instances" ]; then
    if echo "$want_instances" >"$file" 2>/dev/null; then
        echo "fs.inotify.max_user_instances: $have -> $want_instances"
    else
        echo "warning: cannot raise fs.inotify.max_user_instances from $have (not root?);" \
            "bursts of more than about $have DHCP dnsmasq will be refused by the kernel" >&2
    fi
fi
