#!/usr/bin/env bash
# Builds the RPM of sidespawn with rpmbuild from packaging/rpm/sidespawn.spec:
#
#   packaging/build-rpm.sh [OUTDIR]        # default OUTDIR: target/packages
#
# Like build-deb.sh: builds the binaries unless SIDESPAWN_HOST_BIN and SIDESPAWN_WRAPPER_BIN
# name prebuilt ones, stages them with packaging/stage.sh, and prints the path of the .rpm.
# Runs on RHEL-family hosts and on Debian (apt-get install rpm); the host binary must be built
# on (or for) the distribution the RPM is for, as it links the C library dynamically.
set -euo pipefail

die() { echo "build-rpm.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-$repo/target/packages}
command -v rpmbuild >/dev/null || die "rpmbuild not found (dnf install rpm-build / apt-get install rpm)"

# shellcheck source=binaries.sh
. "$here/binaries.sh"

work=$(mktemp -d /tmp/sidespawn-rpm.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$here/stage.sh" "$work/stage" "$host_bin" "$wrapper_bin"
rpmbuild -bb --quiet \
    --define "_topdir $work/top" \
    --define "stagedir $work/stage" \
    --define "pkgversion $version" \
    "$here/rpm/sidespawn.spec" >&2
mkdir -p "$out"
rpm=$(find "$work/top/RPMS" -name 'sidespawn-*.rpm' | head -n1)
[ -n "$rpm" ] || die "rpmbuild wrote no package"
cp "$rpm" "$out/"
echo "$out/$(basename "$rpm")"
