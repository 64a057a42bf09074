#!/usr/bin/env bash
# Request -> running on podman and on docker, each beside its engine's own bare `run -d` measured
# in the same run: one request at a time (median and p99 of RUNS), and a burst of BURST requests
# at once (time until every daemon is alive, median of BURST_RUNS).
#
# "Request" is what Neutron does: `ip netns exec NS env PROCESS_TAG=T dnsmasq ARGS` through the
# wrapper; the sync runs as the path unit would start it, right after; "running" is Neutron's
# alive check (the pid file names a process whose cmdline has the network's uuid). The baseline
# is the same dnsmasq started by a bare `ENGINE run -d` (no namespace join: `--network none`),
# waited for the same way; for the burst, BURST of them with the parallelism (8) its configuration sets.
#
# Usage (as root, from the repository, after a release build of sidespawn and of the static
# wrapper; tests/bench.sh does both): tests/scripts/bench-engines.sh
# Settings: SIDESPAWN_BENCH_ENGINE_RUNS (10), SIDESPAWN_BENCH_ENGINE_BURST (200),
# SIDESPAWN_BENCH_ENGINE_BURST_RUNS (1), SIDESPAWN_BENCH_ENGINES ("podman docker").
# Appends its rows to $SIDESPAWN_BENCH_FIGURES (table `figures`) when set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
runs=${SIDESPAWN_BENCH_ENGINE_RUNS:-10}
burst=${SIDESPAWN_BENCH_ENGINE_BURST:-200}
burst_runs=${SIDESPAWN_BENCH_ENGINE_BURST_RUNS:-1}
engines=${SIDESPAWN_BENCH_ENGINES:-podman docker}
sidespawn=$root/target/release/sidespawn
wrapper=${SIDESPAWN_STATIC_WRAPPER:-$root/target/static/release/sidespawn-wrapper}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/tests/scripts/containers.conf}
image=$(podman images --format '{{.Repository}}:{{.Tag}}' localhost/sidespawn-test-dnsmasq | grep -v ':<none>' | head -1)
[ -x "$sidespawn" ] && [ -x "$wrapper" ] && [ -n "$image" ] || {
    echo "bench-engines: needs $sidespawn, $wrapper and the test dnsmasq image (tests/scripts/build-images.sh)" >&2
    exit 2
}

tag=sdb$$
work=$(mktemp -d /tmp/sdb-XXXXXX)
dockerd_pid=
cleanup() {
    set +e
    for e in $engines; do
        cli "$e" ps -aq --filter "label=bench.sidespawn.run=$tag" 2>/dev/null | xargs -r -n 50 sh -c "$(cli_words "$e") rm -f \"\$@\" >/dev/null 2>&1" sh
    done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag-"); do ip netns delete "$ns"; done
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 600); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$dockerd_pid" 2>/dev/null
        grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cli_words() { if [ "$1" = docker ]; then echo "env DOCKER_HOST=unix://$work/d/docker.sock /usr/bin/docker"; else echo podman; fi; }
cli() { local e=$1; shift; $(cli_words "$e") "$@"; }
now() { date +%s%N; }

if [[ " $engines " == *" docker "* ]]; then
    mkdir -p "$work/d"
    dockerd --data-root="$work/d/root" --exec-root="$work/d/exec" --host="unix://$work/d/docker.sock" \
        --pidfile="$work/d/pid" --iptables=false --bridge=none --ip-masq=false >"$work/d/log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 2400); do cli docker version >/dev/null 2>&1 && break; sleep 0.05; done
    podman save --quiet -o "$work/d/image.tar" "$image"
    cli docker load -q -i "$work/d/image.tar" >/dev/null
    rm -f "$work/d/image.tar"
fi

mkdir -p "$work/bin" "$work/data"
ln -s "$wrapper" "$work/bin/dnsmasq"
printf '{"queue_root": "%s/queue"}\n' "$work" >"$work/wrapper.json"
write_config() { # ENGINE
    local extra=""
    [ "$1" = docker ] && extra="\"engine\": \"docker\", \"engine_program\": \"/usr/bin/docker\", \"netns_helper\": \"$wrapper\","
    cat >"$work/config.json" <<EOF
{ $extra "parallelism": 8, "queue_root": "$work/queue", "state_dir": "$work/state-$1", "instance": "$tag$1",
  "kinds": { "dnsmasq": { "image": "$image", "volumes": ["$work/data:$work/data"],
    "cap_add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE"],
    "labels": {"bench.sidespawn.run": "$tag"}, "max_sidecars": 100000,
    "netns_patterns": ["$tag-*"] } } }
EOF
}
run_sync() { DOCKER_HOST=unix://$work/d/docker.sock "$sidespawn" --config "$work/config.json" sync --kind dnsmasq >>"$work/sync.log" 2>&1; }
daemon_args() { # ID
    echo "--port=0 --no-resolv --no-hosts --user=root --pid-file=$work/data/$1.pid --conf-file= --dhcp-leasefile=$work/data/$1-uuid-$1.leases"
}
alive() { # ID: Neutron's check
    local pid
    pid=$(cat "$work/data/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-uuid-$1"
}
wait_alive() { # IDS...
    local id deadline=$(($(date +%s) + 600))
    for id in "$@"; do
        until alive "$id"; do
            [ "$(date +%s)" -lt "$deadline" ] || { echo "bench-engines: $id never became alive; see $work/sync.log" >&2; tail -20 "$work/sync.log" >&2; exit 1; }
            sleep 0.005
        done
    done
}
request() { # ID: what Neutron runs, through the wrapper
    ip netns exec "$tag-$1" env PROCESS_TAG="dnsmasq-$1" SIDESPAWN_WRAPPER_CONFIG="$work/wrapper.json" \
        "$work/bin/dnsmasq" $(daemon_args "$1")
}
bare() { # ENGINE ID
    cli "$1" run -d --name="$tag-bare-$2" --label="bench.sidespawn.run=$tag" --network=none --pid=host \
        --volume="$work/data:$work/data" --entrypoint=dnsmasq -- "$image" -k $(daemon_args "$2") >/dev/null
}
stats() { # NS... -> "median p99" in ms
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; r = int(0.99 * NR); if (r < 0.99 * NR) r++; if (r < 1) r = 1; printf "%.0f %.0f", m / 1e6, v[r] / 1e6 }'
}
fmt_ms() { awk -v x="$1" 'BEGIN { if (x >= 1000) printf "%.2f s", x / 1000; else printf "%d ms", x }'; }
rows=()
row() { # FIGURE MEDIAN_MS P99_MS BASELINE_MS
    local ratio
    ratio=$(awk -v a="$2" -v b="$4" 'BEGIN { printf "%.2f×", (b > 0 ? a / b : 0) }')
    rows+=("$1	$(fmt_ms "$2")	$([ "$3" = - ] && echo - || fmt_ms "$3")	-	$(fmt_ms "$4")	$ratio	-	-")
    # As measured, so a later failure does not lose it.
    echo "bench-engines: ${rows[-1]}" >&2
}

id=0
for e in $engines; do
    write_config "$e"
    mkdir -p "$work/queue"
    run_sync # creates the queue directory
    single=() base=()
    for _ in $(seq "$runs"); do
        id=$((id + 1)); ip netns add "$tag-$id"
        t0=$(now); request "$id"; run_sync; wait_alive "$id"; single+=($(($(now) - t0)))
        id=$((id + 1))
        t0=$(now); bare "$e" "$id"; wait_alive "$id"; base+=($(($(now) - t0)))
    done
    read -r sm sp <<<"$(stats "${single[@]}")"
    read -r bm bp <<<"$(stats "${base[@]}")"
    row "$e: one request -> running (baseline: bare run -d)" "$sm" "$sp" "$bm"

    bursts=() bbursts=()
    for _ in $(seq "$burst_runs"); do
        ids=()
        for _ in $(seq "$burst"); do id=$((id + 1)); ids+=("$id"); ip netns add "$tag-$id"; done
        t0=$(now)
        pids=()
        for i in "${ids[@]}"; do
            request "$i" &
            pids+=($!)
        done
        # Only the requests: a bare `wait` would also wait for dockerd.
        wait "${pids[@]}"
        run_sync
        wait_alive "${ids[@]}"
        bursts+=($(($(now) - t0)))
        # Gone before the baseline: 2 x BURST containers at once (a shim of ~10 threads each on
        # docker) can pass a pids limit the two would never meet alone.
        cli "$e" ps -aq --filter "label=bench.sidespawn.run=$tag" | xargs -r -n 50 sh -c "$(cli_words "$e") rm -f \"\$@\" >/dev/null 2>&1" sh
        ids=()
        for _ in $(seq "$burst"); do id=$((id + 1)); ids+=("$id"); done
        t0=$(now)
        printf '%s\n' "${ids[@]}" | xargs -P 8 -I{} bash -c "$(declare -f cli cli_words daemon_args bare); work=$work tag=$tag image=$image bare $e {}"
        wait_alive "${ids[@]}"
        bbursts+=($(($(now) - t0)))
    done
    read -r bm _ <<<"$(stats "${bursts[@]}")"
    read -r bbm _ <<<"$(stats "${bbursts[@]}")"
    row "$e: burst of $burst requests -> all running (baseline: $burst bare run -d, 8 at once)" "$bm" - "$bbm"
    cli "$e" ps -aq --filter "label=bench.sidespawn.run=$tag" | xargs -r -n 50 sh -c "$(cli_words "$e") rm -f \"\$@\" >/dev/null 2>&1" sh
done

printf '%s\n' "Engines: request -> running, each engine beside its own bare run -d" "${rows[@]}" | column -t -s '	'
if [ -n "${SIDESPAWN_BENCH_FIGURES:-}" ]; then
    {
        printf 'figures\tH\tFigure\tMedian\tp99\tPeak RSS\tBaseline\tRatio\tTarget\tResult\n'
        printf 'figures\tS\tEngines: request -> running, each beside its own bare run -d\n'
        for r in "${rows[@]}"; do printf 'figures\tR\t%s\n' "$r"; done
    } >>"$SIDESPAWN_BENCH_FIGURES"
fi
