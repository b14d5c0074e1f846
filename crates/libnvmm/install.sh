#!/bin/sh
# Builds libnvmm and installs it under a prefix:
#
#   crates/libnvmm/install.sh [--prefix DIR] [--destdir DIR] [--debug]
#
#   PREFIX/lib/libnvmm.so.0.1 (soname libnvmm.so.0, with the libnvmm.so.0 and
#              libnvmm.so links), PREFIX/lib/libnvmm.a,
#   PREFIX/lib/pkgconfig/libnvmm.pc, PREFIX/include/nvmm.h,
#   PREFIX/sbin/nvmmctl, PREFIX/share/man/man3/libnvmm.3 and man8/nvmmctl.8.
#
# The default prefix is /usr/local; --destdir stages the tree for packaging;
# --debug installs the debug build instead of the release one.
set -eu

prefix=/usr/local
destdir=
profile=release
while [ $# -gt 0 ]; do
	case "$1" in
	--prefix) prefix=$2; shift 2 ;;
	--prefix=*) prefix=${1#--prefix=}; shift ;;
	--destdir) destdir=$2; shift 2 ;;
	--destdir=*) destdir=${1#--destdir=}; shift ;;
	--debug) profile=debug; shift ;;
	-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
done
case "$prefix" in
/*) ;;
*) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$profile" = release ]; then
	cargo build --manifest-path "$root/Cargo.toml" --release -p libnvmm -p nvmmctl
else
	cargo build --manifest-path "$root/Cargo.toml" -p libnvmm -p nvmmctl
fi
out=$target/$profile
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)

lib=$destdir$prefix/lib
install -d "$lib/pkgconfig" "$destdir$prefix/include" "$destdir$prefix/sbin" \
	"$destdir$prefix/share/man/man3" "$destdir$prefix/share/man/man8"
install -m 0755 "$out/liblibnvmm.so" "$lib/libnvmm.so.0.1"
ln -sf libnvmm.so.0.1 "$lib/libnvmm.so.0"
ln -sf libnvmm.so.0 "$lib/libnvmm.so"
install -m 0644 "$out/liblibnvmm.a" "$lib/libnvmm.a"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$here/libnvmm.pc.in" > "$lib/pkgconfig/libnvmm.pc"
install -m 0644 "$here/include/nvmm.h" "$destdir$prefix/include/nvmm.h"
install -m 0755 "$out/nvmmctl" "$destdir$prefix/sbin/nvmmctl"
install -m 0644 "$here/man/libnvmm.3" "$destdir$prefix/share/man/man3/libnvmm.3"
install -m 0644 "$root/crates/nvmmctl/man/nvmmctl.8" "$destdir$prefix/share/man/man8/nvmmctl.8"
echo "installed libnvmm $version under $destdir$prefix"
