#!/usr/bin/env bash
# The performance suite: builds in release mode, runs the benchmarks (wrapper, sync, watch) and
# prints one table of every figure beside the baseline measured in the same run, with the ratio
# and the target; then writes docs/PERFORMANCE.md from that output.
#
# Usage: tests/bench.sh [--quick] [--sidecars N] [--no-doc] [--render]
#                                          (as root; about 40 minutes on 2 cores)
#   --quick        small sizes and few runs: checks that everything can be measured (a few
#                  minutes); its figures are not the release figures, and the document is not written
#   --sidecars N   the size of the busy node (the sync bench's part 6): N running sidecars,
#                  measured beside 100 for the growth (default 1000; e.g. --sidecars 300 on a
#                  small machine)
#   --no-doc       print the table only; leave docs/PERFORMANCE.md as it is
#   --render       measure nothing: print the table and write the document again from the last
#                  run's output in target/bench-report/
#
# The benchmarks' own settings (SIDESPAWN_BENCH_*, see the top of each benches/*.rs) pass
# through. Every bench's full output is kept in target/bench-report/. Exits non-zero when a
# benchmark could not measure something; a missed target is a result, not a failure.
#
# To add a benchmark: a `[[bench]]` in Cargo.toml that appends its tables to
# $SIDESPAWN_BENCH_FIGURES (benches/support/report.rs), its name in BENCHES, its --quick
# settings below, and, for a table other than "figures", a line in TABLES.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

# The benchmarks, in the order they run (`cargo bench --bench NAME`).
BENCHES=(wrapper sync watch)
# The tables of the report besides "figures": name, then the heading it gets in the document.
TABLES=(
    "scaling" "Scaling of the fold and plan"
    "sidecars" "Growth with the number of running sidecars"
)

quick=0
doc=1
render_only=0
sidecars=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --no-doc) doc=0 ;;
        --render) render_only=1 ;;
        --sidecars)
            if [ $# -lt 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
                echo "tests/bench.sh: --sidecars takes a positive count, e.g. --sidecars 1000" >&2
                exit 2
            fi
            sidecars=$2
            shift
            ;;
        -h | --help)
            sed -n '2,25s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "tests/bench.sh: unknown argument $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done
step() {
    printf '\n==== %s ====\n' "$*"
}

out=$root/target/bench-report
export SIDESPAWN_BENCH_FIGURES=$out/figures.tsv
if [ "$render_only" = 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/bench.sh: run as root: the benchmarks create network namespaces and containers" >&2
        exit 2
    fi

    step "Installing dependencies"
    tests/scripts/install-deps.sh
    tests/scripts/host-limits.sh
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/tests/scripts/containers.conf}

    step "Building in release mode"
    cargo bench --no-run
    cargo rustc --release --bin sidespawn-wrapper --target-dir target/static \
        -- -C target-feature=+crt-static
    export SIDESPAWN_STATIC_WRAPPER=$root/target/static/release/sidespawn-wrapper

    if [ "$quick" = 1 ]; then
        doc=0
        export SIDESPAWN_BENCH_RUNS=${SIDESPAWN_BENCH_RUNS:-2}
        export SIDESPAWN_BENCH_EMPTY_RUNS=${SIDESPAWN_BENCH_EMPTY_RUNS:-20}
        export SIDESPAWN_BENCH_FOLD_RUNS=${SIDESPAWN_BENCH_FOLD_RUNS:-1}
        export SIDESPAWN_BENCH_SIZES=${SIDESPAWN_BENCH_SIZES:-1000,10000}
        export SIDESPAWN_BENCH_SIDECARS=${SIDESPAWN_BENCH_SIDECARS:-20}
        export SIDESPAWN_BENCH_CALLERS=${SIDESPAWN_BENCH_CALLERS:-5}
        export SIDESPAWN_BENCH_XARGS_P=${SIDESPAWN_BENCH_XARGS_P:-4,8}
        export SIDESPAWN_BENCH_STEADY=${SIDESPAWN_BENCH_STEADY:-30}
        export SIDESPAWN_BENCH_STEADY_RUNS=${SIDESPAWN_BENCH_STEADY_RUNS:-3}
        export SIDESPAWN_BENCH_UPGRADE_SIDECARS=${SIDESPAWN_BENCH_UPGRADE_SIDECARS:-3}
        export SIDESPAWN_BENCH_IDLE_SECS=${SIDESPAWN_BENCH_IDLE_SECS:-5}
        export SIDESPAWN_BENCH_NETNS=${SIDESPAWN_BENCH_NETNS:-1000}
        export SIDESPAWN_BENCH_SCALE=${SIDESPAWN_BENCH_SCALE:-10,${sidecars:-30}}
        export SIDESPAWN_BENCH_SCALE_RUNS=${SIDESPAWN_BENCH_SCALE_RUNS:-2}
        export SIDESPAWN_BENCH_SCALE_XARGS_P=${SIDESPAWN_BENCH_SCALE_XARGS_P:-8}
    fi
    # The busy node: the chosen size beside 100, for the growth.
    if [ -n "$sidecars" ] && [ "$quick" = 0 ]; then
        if [ "$sidecars" -gt 100 ]; then
            export SIDESPAWN_BENCH_SCALE=100,$sidecars
        else
            export SIDESPAWN_BENCH_SCALE=$sidecars
        fi
    fi

    rm -rf "$out"
    mkdir -p "$out"
    : >"$SIDESPAWN_BENCH_FIGURES"
    started=$(date -u +%Y-%m-%dT%H:%MZ)
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)

    failed=()
    for bench in "${BENCHES[@]}"; do
        step "cargo bench --bench $bench"
        # The watch bench's rounds default to 50; the p99 wants more.
        runs=()
        if [ "$bench" = watch ] && [ "$quick" = 0 ]; then
            runs=(env "SIDESPAWN_BENCH_RUNS=${SIDESPAWN_BENCH_WATCH_RUNS:-100}")
        fi
        if ! "${runs[@]}" cargo bench --bench "$bench" 2>&1 | tee "$out/$bench.txt"; then
            failed+=("$bench")
        fi
    done
    # Engines: request -> running on podman and on docker, each beside its engine's own bare
    # `run -d` (tests/scripts/bench-engines.sh; its rows join the main table).
    bench_engines() {
        step "tests/scripts/bench-engines.sh (podman and docker)"
        cargo build --release --bin sidespawn
        if [ "$quick" = 1 ]; then
            export SIDESPAWN_BENCH_ENGINE_RUNS=${SIDESPAWN_BENCH_ENGINE_RUNS:-2}
            export SIDESPAWN_BENCH_ENGINE_BURST=${SIDESPAWN_BENCH_ENGINE_BURST:-10}
        fi
        tests/scripts/bench-engines.sh 2>&1 | tee "$out/engines.txt"
    }
    if ! bench_engines; then
        failed+=(engines)
    fi
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    printf 'started=%s\ncommit=%s\nload_before=%s\nload_after=%s\nfailed=%s\nquick=%s\n' \
        "$started" "$commit" "$load_before" "$load_after" "${failed[*]}" "$quick" >"$out/meta"
fi
if [ ! -s "$out/meta" ]; then
    echo "tests/bench.sh: no complete run in $out to render" >&2
    exit 1
fi
started=$(sed -n 's/^started=//p' "$out/meta")
commit=$(sed -n 's/^commit=//p' "$out/meta")
load_before=$(sed -n 's/^load_before=//p' "$out/meta")
load_after=$(sed -n 's/^load_after=//p' "$out/meta")
read -r -a failed <<<"$(sed -n 's/^failed=//p' "$out/meta")"
# Figures of a --quick run never reach the document.
if [ "$(sed -n 's/^quick=//p' "$out/meta")" = 1 ]; then
    doc=0
fi

# Prints the named table of the figures file with aligned columns: the first and the last
# column left-aligned, the others right-aligned; section titles on lines of their own.
render_text() {
    # In the C locale, with continuation bytes not counted: a width in characters for UTF-8
    # cells (µs, ×, ≤) whatever awk this is.
    LC_ALL=C awk -F'\t' -v want="$1" '
        $1 != want { next }
        $2 == "H" { if (!have_header) { for (i = 3; i <= NF; i++) h[i] = $i; cols = NF; have_header = 1 }; next }
        { n++; kind[n] = $2; nf[n] = NF; for (i = 3; i <= NF; i++) cell[n, i] = $i }
        function len(s,   c) { c = s; gsub(/[\200-\277]/, "", c); return length(c) }
        END {
            for (i = 3; i <= cols; i++) w[i] = len(h[i])
            for (r = 1; r <= n; r++) if (kind[r] == "R") for (i = 3; i <= nf[r]; i++) if (len(cell[r, i]) > w[i]) w[i] = len(cell[r, i])
            line = ""; rule = ""
            for (i = 3; i <= cols; i++) {
                line = line (i > 3 ? " | " : "") pad(h[i], w[i], i == 3 || i == cols)
                rule = rule (i > 3 ? "-+-" : "") dashes(w[i])
            }
            print line; print rule
            for (r = 1; r <= n; r++) {
                if (kind[r] == "S") { print cell[r, 3]; continue }
                line = ""
                for (i = 3; i <= cols; i++) line = line (i > 3 ? " | " : "") pad(cell[r, i], w[i], i == 3 || i == cols)
                sub(/ +$/, "", line); print line
            }
        }
        function pad(s, width, left,   p) { p = sprintf("%" (width - len(s)) "s", ""); return left ? s p : p s }
        function dashes(k,   s) { s = ""; while (k-- > 0) s = s "-"; return s }
    ' "$SIDESPAWN_BENCH_FIGURES"
}

# The same table in Markdown; section titles become bold rows.
render_markdown() {
    awk -F'\t' -v want="$1" '
        $1 != want { next }
        $2 == "H" { if (!have_header) { cols = NF; s = "|"; r = "|"; for (i = 3; i <= NF; i++) { s = s " " esc($i) " |"; r = r (i == 3 || i == NF ? " --- |" : " ---: |") }; print s; print r; have_header = 1 }; next }
        $2 == "S" { s = "| **" esc($3) "** |"; for (i = 4; i <= cols; i++) s = s " |"; print s; next }
        { s = "|"; for (i = 3; i <= cols; i++) s = s " " esc($i) " |"; print s }
        function esc(x) { gsub(/\|/, "\\|", x); return x }
    ' "$SIDESPAWN_BENCH_FIGURES"
}

step "All figures (median, p99 and peak RSS; the baseline measured in the same run; ratio; target)"
render_text figures
for ((i = 0; i < ${#TABLES[@]}; i += 2)); do
    if grep -q "^${TABLES[i]}	" "$SIDESPAWN_BENCH_FIGURES"; then
        echo
        render_text "${TABLES[i]}"
    fi
done
echo
echo "load average before: $load_before; after: $load_after"
echo "full output of each benchmark: $out/<bench>.txt (${BENCHES[*]})"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "tests/bench.sh: could not measure everything: ${failed[*]} failed (see its output above);" \
        "docs/PERFORMANCE.md is left as it was" >&2
    exit 1
fi
if [ "$doc" = 0 ]; then
    exit 0
fi

doc_path=docs/PERFORMANCE.md
{
    echo "# Performance"
    echo
    echo "Generated by \`tests/bench.sh\` from the output of one run; nothing here is typed by hand."
    echo "Each figure is the median (and p99 for latencies) of several runs, beside a baseline"
    echo "measured in the same run on the same machine, and the ratio between them. \"Peak RSS\" is"
    echo "sidespawn's own (the podman processes it runs are not counted). A MISS is explained in"
    echo "the notes of that benchmark's output below and in the README's \"Performance\" section."
    echo
    echo "## How to reproduce"
    echo
    echo '```sh'
    echo "sudo tests/bench.sh                 # about 40 minutes on 2 cores; rewrites this file"
    echo "sudo tests/bench.sh --sidecars 300  # a smaller busy node (default 1000 sidecars)"
    echo "sudo tests/bench.sh --quick         # small sizes: checks that everything can be measured"
    echo '```'
    echo
    echo "## Machine"
    echo
    echo "- run: $started, commit ${commit:-unknown}"
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs"
    echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- kernel: $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- podman $(podman version --format '{{.Client.Version}}' 2>/dev/null || echo '?'), $(rustc --version)"
    echo "- load average before the run: $load_before; after: $load_after"
    echo
    echo "## Figures"
    echo
    render_markdown figures
    echo
    for ((i = 0; i < ${#TABLES[@]}; i += 2)); do
        if grep -q "^${TABLES[i]}	" "$SIDESPAWN_BENCH_FIGURES"; then
            echo "## ${TABLES[i + 1]}"
            echo
            render_markdown "${TABLES[i]}"
            echo
        fi
    done
    echo "## Full output"
    for bench in "${BENCHES[@]}"; do
        echo
        echo "<details><summary><code>cargo bench --bench $bench</code></summary>"
        echo
        echo '```text'
        # The progress lines on stderr add nothing to the record; paths are shown relative to
        # the repository, so that the document names no directory of the machine it ran on.
        grep -v -e '^sync bench: part' -e '^watch bench: [0-9]' -e '^ *\(Compiling\|Finished\|Running\)' "$out/$bench.txt" |
            sed "s|$root/||g"
        echo '```'
        echo
        echo "</details>"
    done
} >"$doc_path.tmp"
mv "$doc_path.tmp" "$doc_path"
echo "wrote $doc_path"
