#!/usr/bin/env bash
# Builds the Debian package of sidespawn with plain dpkg-deb (no debhelper needed):
#
#   packaging/build-deb.sh [OUTDIR]        # default OUTDIR: target/packages
#
# Builds the host tool (cargo build --release) and the statically linked wrapper
# (target/static) unless given prebuilt ones in SIDESPAWN_HOST_BIN and SIDESPAWN_WRAPPER_BIN.
# Prints the path of the .deb it wrote. The layout is packaging/stage.sh's; the maintainer
# scripts are in packaging/debian/.
set -euo pipefail

die() { echo "build-deb.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-$repo/target/packages}
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

# shellcheck source=binaries.sh
. "$here/binaries.sh"
arch=$(dpkg --print-architecture)

stage=$(mktemp -d /tmp/sidespawn-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
"$here/stage.sh" "$stage" "$host_bin" "$wrapper_bin"
install -m 0644 "$repo/LICENSE" "$stage/usr/share/doc/sidespawn/copyright"

install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$here/debian/control" >"$stage/DEBIAN/control"
for script in postinst postrm; do
    install -m 0755 "$here/debian/$script" "$stage/DEBIAN/$script"
done

mkdir -p "$out"
deb=$out/sidespawn_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2
echo "$deb"
