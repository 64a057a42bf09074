#!/usr/bin/env bash
# Build the local container images the end-to-end tests use, without any registry:
# each image is a folder of Debian's own binaries plus the libraries `ldd` lists, in Debian's
# merged-/usr layout, turned into an image by `podman import`.
#
#   localhost/sidespawn-test-agent:latest      ip (iproute2), busybox applets, placeholders at
#                                              /usr/sbin/{dnsmasq,haproxy} and
#                                              /etc/neutron/kill_scripts/{dnsmasq,haproxy}-kill
#                                              for the wrapper to be bind-mounted over
#   localhost/sidespawn-test-dnsmasq:latest    Debian's dnsmasq
#   localhost/sidespawn-test-haproxy:latest    Debian's haproxy
#   localhost/sidespawn-test-keepalived:latest Debian's keepalived
#   localhost/sidespawn-test-radvd:latest      Debian's radvd
#   localhost/sidespawn-test-wrapperonly:h-*   nothing but the static wrapper at /usr/sbin/dnsmasq
#                                              (only with --wrapper or SIDESPAWN_STATIC_WRAPPER)
#   localhost/sidespawn-test-stock-agent:latest  (only with --stock-agent) an agent image as a
#                                              distribution makes it, with no trace of sidespawn:
#                                              ip, busybox, the real dnsmasq, haproxy, keepalived
#                                              and radvd at /usr/sbin, Debian's python3 and
#                                              Neutron's rootwrap (the virtualenv install-deps.sh
#                                              makes, at the same path) with its rootwrap.conf
#                                              and filters in /etc/neutron
#
# Idempotent: every image is tagged h-<hash of its exact content>; when that tag exists the
# import is skipped. Content tags older than a day are removed.
#
# Usage: build-images.sh [--wrapper PATH] [--stock-agent]
# Prints one line per image on stdout, `agent=REF`, `dnsmasq=REF`, `haproxy=REF`,
# `keepalived=REF`, `radvd=REF`, `wrapperonly=REF` and `stock_agent=REF`, each REF the content
# tag; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

wrapper=${SIDESPAWN_STATIC_WRAPPER:-}
stock_agent=false
neutron_venv=${SIDESPAWN_NEUTRON_VENV:-/opt/sidespawn-neutron-venv}

usage() {
    echo "usage: $0 [--wrapper PATH] [--stock-agent]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --wrapper)
            [ $# -ge 2 ] || usage
            wrapper=$2
            shift 2
            ;;
        --wrapper=*)
            wrapper=${1#--wrapper=}
            shift
            ;;
        --stock-agent)
            stock_agent=true
            shift
            ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done

log() { echo "build-images: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for tool in podman ldd tar sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run tests/scripts/install-deps.sh)"
done

# Serialise builders (two test runs at once, in two work trees) so that the exists-check and the
# import cannot interleave.
lock=${TMPDIR:-/tmp}/sidespawn-build-images.lock
exec {lock_fd}>>"$lock"
flock -w 600 "$lock_fd" || die "timed out waiting for $lock"

work=$(mktemp -d "${TMPDIR:-/tmp}/sidespawn-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

# An empty root in Debian's merged-/usr layout.
new_root() {
    local root=$1
    mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,run,tmp,var/tmp,root}
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
}

# Copy a host binary to the same path in the image, plus every library ldd lists for it. Host
# paths like /lib/x86_64-linux-gnu/... land in usr/lib through the image's own symlinks.
add_binary() {
    local root=$1 bin=$2 out lib
    [ -x "$bin" ] || die "$bin not found (run tests/scripts/install-deps.sh)"
    mkdir -p "$root$(dirname "$bin")"
    cp -L "$bin" "$root$bin"
    out=$(ldd "$bin" 2>&1) || true
    if grep -q 'not found' <<<"$out"; then
        die "ldd $bin: missing libraries:"$'\n'"$out"
    fi
    while read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$lib" ] || die "ldd $bin lists $lib, which does not exist"
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
}

# Minimal account databases: root and nobody/nogroup, plus the extra lines given.
write_accounts() {
    local root=$1 extra_passwd=${2:-} extra_group=${3:-}
    {
        echo 'root:x:0:0:root:/root:/bin/sh'
        [ -z "$extra_passwd" ] || echo "$extra_passwd"
        echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin'
    } >"$root/etc/passwd"
    {
        echo 'root:x:0:'
        [ -z "$extra_group" ] || echo "$extra_group"
        echo 'nogroup:x:65534:'
    } >"$root/etc/group"
}

# Import ROOT as localhost/NAME:h-<content hash> unless that exists already, tag it TAG too
# (if given), drop day-old content tags, and print KEY=localhost/NAME:h-<content hash>.
import_image() {
    local key=$1 name=$2 root=$3 tag=${4:-}
    local repo=localhost/$name tarball=$work/$name.tar hash ref old
    # A byte-for-byte reproducible tarball, so that the same content gives the same hash.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
        -C "$root" -cf "$tarball" .
    hash=$(sha256sum "$tarball" | cut -c1-16)
    ref=$repo:h-$hash
    if podman image exists "$ref"; then
        log "$ref is up to date"
    else
        log "importing $ref"
        podman import --quiet \
            --change "LABEL=sidespawn.test-image=$name" \
            --change "LABEL=sidespawn.test-content=$hash" \
            "$tarball" "$ref" >/dev/null
    fi
    if [ -n "$tag" ]; then
        podman tag "$ref" "$repo:$tag"
    fi
    # Older content of this image, unless a container still uses it. Only content older than a
    # day: a concurrent run in another work tree (another wrapper, another version of this
    # script) may be about to use its own.
    while read -r old; do
        # The filter selects images; their other names (like :latest) are listed too.
        case $old in "$repo":h-*) ;; *) continue ;; esac
        [ "$old" != "$ref" ] || continue
        podman rmi "$old" >/dev/null 2>&1 || log "kept $old (still in use)"
    done < <(podman images --filter "reference=$repo:h-*" --filter until=24h \
        --format '{{.Repository}}:{{.Tag}}')
    # The content tag, not the moving one: the tests use exactly what this run built.
    echo "$key=$ref"
}

# --- agent: what Neutron's agent container has that the tests need ---------------------------
agent=$work/agent
new_root "$agent"
add_binary "$agent" /usr/sbin/ip
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (run tests/scripts/install-deps.sh)"
if ldd "$busybox" 2>&1 | grep -Eq '=>|ld-linux'; then
    die "$busybox is not statically linked (install busybox-static)"
fi
cp -L "$busybox" "$agent/usr/bin/busybox"
for applet in $("$busybox" --list); do
    # iproute2's ip, not busybox's: `ip netns exec` must behave as on a real agent.
    [ "$applet" = ip ] || [ -e "$agent/usr/bin/$applet" ] || ln -s busybox "$agent/usr/bin/$applet"
done
for needed in sh env sleep cat ls mkdir rm kill readlink; do
    [ -e "$agent/usr/bin/$needed" ] || die "busybox has no $needed applet"
done
# Placeholders that the tests bind-mount the wrapper over. Not executable, so that a missing
# bind mount fails loudly instead of running an empty script.
mkdir -p "$agent/etc/neutron/kill_scripts" "$agent/var/lib/neutron"
for placeholder in usr/sbin/dnsmasq usr/sbin/haproxy \
    etc/neutron/kill_scripts/dnsmasq-kill etc/neutron/kill_scripts/haproxy-kill; do
    : >"$agent/$placeholder"
    chmod 0644 "$agent/$placeholder"
done
write_accounts "$agent"
import_image agent sidespawn-test-agent "$agent" latest

# --- dnsmasq ----------------------------------------------------------------------------------
dnsmasq=$work/dnsmasq
new_root "$dnsmasq"
add_binary "$dnsmasq" /usr/sbin/dnsmasq
mkdir -p "$dnsmasq/var/lib/misc"
write_accounts "$dnsmasq" 'dnsmasq:x:999:65534:dnsmasq:/var/lib/misc:/usr/sbin/nologin'
import_image dnsmasq sidespawn-test-dnsmasq "$dnsmasq" latest

# --- haproxy ----------------------------------------------------------------------------------
haproxy=$work/haproxy
new_root "$haproxy"
add_binary "$haproxy" /usr/sbin/haproxy
mkdir -p "$haproxy/var/lib/haproxy" "$haproxy/run/haproxy"
write_accounts "$haproxy" 'haproxy:x:102:105::/var/lib/haproxy:/usr/sbin/nologin' 'haproxy:x:105:'
import_image haproxy sidespawn-test-haproxy "$haproxy" latest

# --- keepalived -------------------------------------------------------------------------------
keepalived=$work/keepalived
new_root "$keepalived"
add_binary "$keepalived" /usr/sbin/keepalived
mkdir -p "$keepalived/etc/keepalived"
write_accounts "$keepalived" 'keepalived_script:x:998:65534::/nonexistent:/usr/sbin/nologin'
import_image keepalived sidespawn-test-keepalived "$keepalived" latest

# --- radvd ------------------------------------------------------------------------------------
radvd=$work/radvd
new_root "$radvd"
add_binary "$radvd" /usr/sbin/radvd
mkdir -p "$radvd/run/radvd"
# Neutron runs `radvd ... -u radvd`.
write_accounts "$radvd" 'radvd:x:997:65534::/run/radvd:/usr/sbin/nologin'
import_image radvd sidespawn-test-radvd "$radvd" latest

# --- stock agent: what a distribution's Neutron agent image holds, unmodified -----------------
if $stock_agent; then
    for needed in bin/neutron-rootwrap etc/neutron/rootwrap.conf etc/neutron/rootwrap.d; do
        [ -e "$neutron_venv/$needed" ] || die "$neutron_venv/$needed not found (run tests/scripts/install-deps.sh)"
    done
    stock=$work/stock-agent
    new_root "$stock"
    add_binary "$stock" /usr/sbin/ip
    cp -L "$busybox" "$stock/usr/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = ip ] || [ -e "$stock/usr/bin/$applet" ] || ln -s busybox "$stock/usr/bin/$applet"
    done
    # The daemons where Debian's packages put them.
    for daemon in dnsmasq haproxy keepalived radvd; do
        add_binary "$stock" "/usr/sbin/$daemon"
    done
    # Debian's python3 and its standard library (without the test suite and the GUI), and the
    # virtualenv at the same path, for neutron-rootwrap.
    add_binary "$stock" /usr/bin/python3.11
    ln -s python3.11 "$stock/usr/bin/python3"
    mkdir -p "$stock/usr/lib/python3.11"
    tar -C /usr/lib/python3.11 --exclude=./test --exclude=./idlelib --exclude=./tkinter \
        --exclude=./turtledemo --exclude=./ensurepip --exclude=__pycache__ -cf - . |
        tar -C "$stock/usr/lib/python3.11" -xf -
    mkdir -p "$stock$(dirname "$neutron_venv")"
    tar -C "$(dirname "$neutron_venv")" --exclude=__pycache__ -cf - "$(basename "$neutron_venv")" |
        tar -C "$stock$(dirname "$neutron_venv")" -xf -
    # Where Neutron's packages install its rootwrap configuration.
    mkdir -p "$stock/etc/neutron" "$stock/var/lib/neutron"
    cp "$neutron_venv/etc/neutron/rootwrap.conf" "$stock/etc/neutron/rootwrap.conf"
    cp -r "$neutron_venv/etc/neutron/rootwrap.d" "$stock/etc/neutron/rootwrap.d"
    write_accounts "$stock" \
        'neutron:x:996:996::/var/lib/neutron:/usr/sbin/nologin
dnsmasq:x:999:65534:dnsmasq:/var/lib/misc:/usr/sbin/nologin
haproxy:x:102:105::/var/lib/haproxy:/usr/sbin/nologin
radvd:x:997:65534::/run/radvd:/usr/sbin/nologin' \
        'neutron:x:996:
haproxy:x:105:'
    import_image stock_agent sidespawn-test-stock-agent "$stock" latest
fi

# --- wrapper only: proves the wrapper needs nothing from the image ----------------------------
if [ -n "$wrapper" ]; then
    [ -f "$wrapper" ] && [ -x "$wrapper" ] || die "wrapper $wrapper is not an executable file"
    if ldd "$wrapper" 2>&1 | grep -Eq '=>|ld-linux'; then
        die "wrapper $wrapper is dynamically linked:"$'\n'"$(ldd "$wrapper" 2>&1)"
    fi
    only=$work/wrapperonly
    # Empty mount points only, for what podman and runc mount; no libc, no shell.
    mkdir -p "$only"/{usr/sbin,proc,dev,sys,run,etc,tmp}
    cp -L "$wrapper" "$only/usr/sbin/dnsmasq"
    chmod 0755 "$only/usr/sbin/dnsmasq"
    import_image wrapperonly sidespawn-test-wrapperonly "$only"
else
    log "no --wrapper and no SIDESPAWN_STATIC_WRAPPER: not building the wrapper-only image"
fi
