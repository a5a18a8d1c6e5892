#!/bin/sh
# The binaries to deploy, as CI proves them: stockade, stockade-spawn, stockade-probe and
# stockade-server, release, with the Swift standard library and FoundationEssentials linked statically.
# `stockade` links no full Foundation (Package.swift, foundationEssentialsFirst): this checks it.
#
# usage: scripts/build-release.sh [SCRATCH]   (default .build-static; the binaries in SCRATCH/release/)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-.build-static}
case "$scratch" in /*) ;; *) scratch="$root/$scratch" ;; esac
if ! command -v swift >/dev/null 2>&1; then
    echo "build-release: no swift on PATH: install a Swift 6.3 toolchain (https://swift.org/install) first" >&2
    exit 1
fi
# The static libraries of the toolchain `swift build` runs: beside its runtime resource directory.
resources=$(swift -print-target-info | sed -n 's/^ *"runtimeResourcePath": "\(.*\)",\{0,1\}$/\1/p')
static_dir="${resources%/swift}/swift_static/linux"
if [ -z "$resources" ] || [ ! -f "$static_dir/libFoundationEssentials.a" ]; then
    echo "build-release: no libFoundationEssentials.a in '$static_dir' (the runtime resource path of swift -print-target-info is '$resources'): this toolchain has no static Swift libraries for Linux" >&2
    exit 1
fi
# stockade runs stockade-spawn and stockade-server only from a directory nobody else may write.
umask 022
"$root/scripts/close-build-dir.sh" "$scratch"
STOCKADE_STATIC_STDLIB_DIR=$(cd "$static_dir" && pwd)
export STOCKADE_STATIC_STDLIB_DIR
for product in stockade stockade-spawn stockade-probe stockade-server; do
    swift build --package-path "$root" -c release --static-swift-stdlib --scratch-path "$scratch" --product "$product"
done
# Full Foundation brings CoreFoundation, whose initializer runs at every start of every command. The
# symbol table is read on a line of its own, so a missing or failing nm stops the script (set -e).
if ! command -v nm >/dev/null 2>&1; then
    echo "build-release: no nm on PATH to check $scratch/release/stockade (apt-get install binutils)" >&2
    exit 1
fi
symbols=$(nm "$scratch/release/stockade")
if [ -z "$symbols" ]; then
    echo "build-release: $scratch/release/stockade has no symbol table to check (stripped?)" >&2
    exit 1
fi
if printf '%s\n' "$symbols" | grep -q -e ' __CFInitialize$' -e ' $s10Foundation'; then
    echo "build-release: $scratch/release/stockade links full Foundation (CoreFoundation's __CFInitialize or a Foundation symbol is in it):" \
         "a module it links uses an API only full Foundation has, or imports Foundation for an overload" \
         "(Package.swift, foundationEssentialsFirst; ld.lld --why-extract=FILE names the first reference)" >&2
    exit 1
fi
