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
if ! swiftc=$(command -v swiftc); then
    echo "build-release: no swiftc on PATH: install a Swift 6.3 toolchain (https://swift.org/install) first" >&2
    exit 1
fi
static_dir="$(dirname "$(readlink -f "$swiftc")")/../lib/swift_static/linux"
if [ ! -f "$static_dir/libFoundationEssentials.a" ]; then
    echo "build-release: no $static_dir/libFoundationEssentials.a: this toolchain has no static Swift libraries for Linux" >&2
    exit 1
fi
STOCKADE_STATIC_STDLIB_DIR=$(cd "$static_dir" && pwd)
export STOCKADE_STATIC_STDLIB_DIR
for product in stockade stockade-spawn stockade-probe stockade-server; do
    swift build --package-path "$root" -c release --static-swift-stdlib --scratch-path "$scratch" --product "$product"
done
# Full Foundation brings CoreFoundation, whose initializer runs at every start of every command.
if nm "$scratch/release/stockade" | grep -q ' __CFInitialize$'; then
    echo "build-release: $scratch/release/stockade links full Foundation (CoreFoundation's __CFInitialize is in it):" \
         "a module it links uses an API only full Foundation has, or imports Foundation for an overload" \
         "(Package.swift, foundationEssentialsFirst; ld.lld --why-extract=FILE names the first reference)" >&2
    exit 1
fi
