#!/bin/sh
# Benchmarks the C library's exit path against a bare KVM_RUN loop:
#
#   crates/libnvmm/bench/run.sh [NAME...] [--iterations N] [--rounds N]
#   crates/libnvmm/bench/run.sh cold [--iterations N] [--rounds N]
#
# Installs the release libnvmm into a temporary prefix, builds the C
# programs of this directory against it with pkg-config (cc -O2), and runs
# them; each prints one JSON object per line (see exits.c for NAMEs).
# `cold` runs cold_branches.c instead: what an indirect call costs right
# after KVM_RUN on this host, against a direct one (no libnvmm involved).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "${1:-}" = cold ]; then
	shift
	cc -O2 -Wall -Wextra -Werror -o "$work/cold_branches" "$here/cold_branches.c"
	"$work/cold_branches" "$@"
	exit
fi

if ! "$root/crates/libnvmm/install.sh" --prefix "$work/prefix" >"$work/install.log" 2>&1; then
	cat "$work/install.log" >&2
	exit 1
fi
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
cc -O2 -Wall -Wextra -Werror -o "$work/exits" "$here/exits.c" \
	$(pkg-config --cflags --libs libnvmm) -Wl,-rpath,"$work/prefix/lib"
"$work/exits" "$@"
