#!/bin/sh
# Builds NetBSD's own libnvmm regression programs unmodified against this
# libnvmm and runs them:
#
#   crates/libnvmm/tests/netbsd/run.sh NETBSD_SRC/tests/lib/libnvmm
#
# Every h_NAME.c in that directory is compiled with its h_NAME_asm.S by
# `cc -Wall -Werror` (NetBSD builds them with -Wall), with nvmm.h and -lnvmm from a libnvmm installed by install.sh into
# a temporary prefix (found through pkg-config), and with the NetBSD
# <machine/*.h> and <x86/specialreg.h> constants they use taken from
# include/ beside this script. A program passes when it exits 0, reports
# at least one "Test '...' passed" and no failure. The NetBSD sources are
# not part of this repository; fetch them from NetBSD's tree.
set -eu

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
	echo "usage: $0 NETBSD_SRC/tests/lib/libnvmm" >&2
	exit 2
fi
src=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$root/crates/libnvmm/install.sh" --debug --prefix "$work/prefix" >"$work/install.log" 2>&1; then
	cat "$work/install.log" >&2
	exit 1
fi
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
cflags=$(pkg-config --cflags libnvmm)
libs=$(pkg-config --libs libnvmm)

status=0
found=0
for c in "$src"/h_*.c; do
	[ -e "$c" ] || continue
	name=$(basename "$c" .c)
	asm="$src/${name}_asm.S"
	[ -e "$asm" ] || continue
	found=$((found + 1))
	# -z noexecstack: the .S files carry no .note.GNU-stack section.
	# shellcheck disable=SC2086
	if ! cc -O1 -Wall -Werror -I"$here/include" $cflags -o "$work/$name" "$c" "$asm" $libs \
		-Wl,-rpath,"$work/prefix/lib" -Wl,-z,noexecstack 2>"$work/$name.cc"; then
		echo "FAIL $name: does not build:"
		cat "$work/$name.cc"
		status=1
		continue
	fi
	rc=0
	timeout 300 "$work/$name" >"$work/$name.out" 2>&1 || rc=$?
	passed=$(grep -c "^Test '.*' passed" "$work/$name.out" || true)
	failed=$(grep -c -i "failed\|Shutting down\|Invalid" "$work/$name.out" || true)
	if [ "$rc" -eq 0 ] && [ "$passed" -gt 0 ] && [ "$failed" -eq 0 ]; then
		echo "ok   $name: $passed cases passed"
	else
		echo "FAIL $name: exit $rc, $passed cases passed, $failed failures:"
		grep -v "^->" "$work/$name.out" | tail -n 40
		status=1
	fi
done
if [ "$found" -eq 0 ]; then
	echo "no h_*.c with an h_*_asm.S in $src" >&2
	exit 2
fi
exit $status
