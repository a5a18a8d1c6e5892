#!/bin/sh
# Fuzz the diff parser and the path guard with libFuzzer for SECONDS.
#
# usage: Fuzz/run-diff-fuzz.sh SECONDS
#
# Builds the stockade-diff-fuzz product with `-sanitize=fuzzer,address` and
# STOCKADE_FUZZING defined (a separate scratch path, .build-fuzz), then runs it
# on a copy of Fixtures/fuzz/diff/. Exits 0 when nothing crashed; a crashing
# input is kept in $FUZZ_ARTIFACTS (default /tmp) as stockade-diff-crash-*.
set -eu

seconds=${1:?usage: $0 SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
artifacts=${FUZZ_ARTIFACTS:-/tmp}
work=$(mktemp -d /tmp/stockade-diff-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
cp "$root"/Fixtures/fuzz/diff/* "$work/"

echo "building the diff fuzzer..." >&2
cd "$root"
swift build --scratch-path "$root/.build-fuzz" --product stockade-diff-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSTOCKADE_FUZZING >&2
bin=$(swift build --scratch-path "$root/.build-fuzz" --show-bin-path)/stockade-diff-fuzz

"$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=1024 \
    -artifact_prefix="$artifacts/stockade-diff-crash-" "$work"
