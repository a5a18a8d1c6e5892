#!/bin/sh
# Fuzz the strict JSON parser and the bundle manifest decoder with libFuzzer for SECONDS.
#
# usage: Fuzz/run-manifest-fuzz.sh SECONDS
#
# Builds the stockade-manifest-fuzz product with `-sanitize=fuzzer,address` and
# STOCKADE_FUZZING defined (the same separate scratch path as the diff fuzzer, .build-fuzz), then
# runs it on a copy of Fixtures/fuzz/manifest/ with the token dictionary Fuzz/manifest.dict. Exits 0
# when nothing crashed; a crashing input is kept in $FUZZ_ARTIFACTS (default /tmp) as
# stockade-manifest-crash-* and the exit status is non-zero.
set -eu

seconds=${1:?usage: $0 SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
artifacts=${FUZZ_ARTIFACTS:-/tmp}
work=$(mktemp -d /tmp/stockade-manifest-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
cp "$root"/Fixtures/fuzz/manifest/* "$work/"

echo "building the manifest fuzzer..." >&2
cd "$root"
swift build --scratch-path "$root/.build-fuzz" --product stockade-manifest-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSTOCKADE_FUZZING >&2
bin=$(swift build --scratch-path "$root/.build-fuzz" --show-bin-path)/stockade-manifest-fuzz

echo "fuzzing for $seconds s (corpus: Fixtures/fuzz/manifest)..." >&2
"$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -dict="$root/Fuzz/manifest.dict" -artifact_prefix="$artifacts/stockade-manifest-crash-" -print_final_stats=1 "$work"
