#!/bin/sh
# The binaries to deploy, as CI proves them: stockade, stockade-spawn, stockade-probe and
# stockade-server, release, with the Swift standard library, FoundationEssentials, libstdc++, SQLite
# and zlib linked statically (glibc and libseccomp stay shared). `stockade` links no full Foundation
# (Package.swift, foundationEssentialsFirst), and neither it nor stockade-server loads one of those
# libraries at start: this checks both.
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
# libstdc++, SQLite and zlib from their static archives (the Debian packages' own .a files), so that
# each start of stockade has the dynamic loader relocate far less: libstdc++'s 3 300 symbolic
# relocations and libsqlite3's 1 600 (it is linked with BIND_NOW) were resolved at every start, a
# one-shot run's or `--version`'s (Benchmarks/BENCHMARKS.md). libseccomp stays shared (LGPL-2.1: a
# static copy would oblige whoever ships the binaries to let users relink it; it costs a start
# little). SwiftPM takes a system module's -L from its pkg-config file: a directory of our own .pc
# files, first on PKG_CONFIG_PATH, names a directory that holds only the archives, so that it is the
# first -L of the link line and every -lsqlite3, -lz and the toolchain's -lstdc++ finds an archive
# there. (Linked this way, a security update of SQLite or zlib, which inflates hostile input, reaches
# the binaries only when they are built again.)
link_dir="$scratch/static-link"
rm -rf "$link_dir"
mkdir -p "$link_dir"
cc_driver="$(dirname "$(command -v swift)")/clang"
[ -x "$cc_driver" ] || cc_driver=cc
for archive in libstdc++.a:libstdc++-12-dev libsqlite3.a:libsqlite3-dev libz.a:zlib1g-dev; do
    name=${archive%%:*}
    path=$("$cc_driver" -print-file-name="$name" 2>/dev/null || true)
    case "$path" in
        /*) [ -f "$path" ] || path= ;;
        *) path= ;;
    esac
    if [ -z "$path" ]; then
        echo "build-release: no $name for $cc_driver to link (apt-get install ${archive#*:})" >&2
        exit 1
    fi
    ln -s "$path" "$link_dir/$name"
done
# libseccomp's file names no directory: a -L of the system's own, which SwiftPM would put on the line
# before ours (CSeccomp comes first), would have -lsqlite3 find the shared library there.
for module in libseccomp:seccomp:shared sqlite3:sqlite3:static zlib:z:static; do
    package=${module%%:*}
    library=${module#*:}
    linking=${library#*:}
    library=${library%%:*}
    if ! version=$(pkg-config --modversion "$package"); then
        echo "build-release: pkg-config does not know $package (apt-get install pkg-config and the library's -dev package)" >&2
        exit 1
    fi
    search=
    [ "$linking" = static ] && search="-L$link_dir "
    printf 'Name: %s\nDescription: %s, linked %s (scripts/build-release.sh)\nVersion: %s\nLibs: %s-l%s\nCflags: %s\n' \
        "$package" "$package" "$linking" "$version" "$search" "$library" "$(pkg-config --cflags "$package")" > "$link_dir/$package.pc"
done
PKG_CONFIG_PATH="$link_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
# Concrete generic types' metadata through direct accessors in the dependencies' modules too, as
# Package.swift has it for ours (a generic specialization a dependency emits can be the one linked):
# fewer first-use protocol-conformance scans at start (`--version` CPU 0.954, the standalone one-shot
# 0.982, Benchmarks/BENCHMARKS.md).
for product in stockade stockade-spawn stockade-probe stockade-server; do
    swift build --package-path "$root" -c release --static-swift-stdlib --scratch-path "$scratch" --product "$product" \
        -Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors
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
# The libraries linked from their archives (above) must not be loaded at start: readelf lists what the
# dynamic loader loads for each binary.
if ! command -v readelf >/dev/null 2>&1; then
    echo "build-release: no readelf on PATH to check the binaries' shared libraries (apt-get install binutils)" >&2
    exit 1
fi
for product in stockade stockade-server; do
    needed=$(readelf -d "$scratch/release/$product" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
    if [ -z "$needed" ]; then
        echo "build-release: readelf lists no shared library for $scratch/release/$product: not the dynamically linked binary this script makes" >&2
        exit 1
    fi
    if printf '%s\n' "$needed" | grep -q -E '^lib(stdc\+\+|sqlite3|z)\.so'; then
        echo "build-release: $scratch/release/$product loads $(printf '%s\n' "$needed" | grep -E '^lib(stdc\+\+|sqlite3|z)\.so' | tr '\n' ' ')at start," \
             "which it should link from $link_dir: did SwiftPM read another pkg-config file, or take -L from elsewhere first?" >&2
        exit 1
    fi
done
