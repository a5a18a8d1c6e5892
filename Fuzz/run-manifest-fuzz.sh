#!/bin/sh
# Fuzz the strict JSON parser and the bundle manifest decoder with libFuzzer for SECONDS.
#
# usage: Fuzz/run-manifest-fuzz.sh SECONDS
#
# Compiles StockadePolicy's sources, the manifest decoder's sources from StockadeBundles and
# Fuzz/ManifestFuzzEntry.swift into one module with `swiftc -sanitize=fuzzer,address`
# (their `import StockadePolicy` lines are dropped, since it is one module here), then runs it
# on a copy of Fixtures/fuzz/manifest/ with the token dictionary Fuzz/manifest.dict. Exits 0 when nothing crashed; a crashing input is kept
# in $FUZZ_ARTIFACTS (default /tmp) as stockade-manifest-crash-* and the exit status is non-zero.
set -eu

seconds=${1:?usage: $0 SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
swiftc=${SWIFTC:-swiftc}
artifacts=${FUZZ_ARTIFACTS:-/tmp}
work=$(mktemp -d /tmp/stockade-manifest-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

mkdir "$work/src" "$work/corpus"
for f in "$root"/Sources/StockadePolicy/*.swift \
         "$root"/Sources/StockadeBundles/BundleError.swift \
         "$root"/Sources/StockadeBundles/BundleVerdict.swift \
         "$root"/Sources/StockadeBundles/BundlePath.swift \
         "$root"/Sources/StockadeBundles/BundleManifest.swift; do
    sed '/^import StockadePolicy$/d' "$f" > "$work/src/$(basename "$f")"
done
cp "$root"/Fixtures/fuzz/manifest/* "$work/corpus/"

echo "building the manifest fuzzer..." >&2
# ld.gold warns once per ASan helper symbol ("Cannot export local symbol"): harmless, filtered.
if ! "$swiftc" -sanitize=fuzzer,address -parse-as-library -O -swift-version 6 -package-name Stockade -module-name ManifestFuzz \
    "$work"/src/*.swift "$root/Fuzz/ManifestFuzzEntry.swift" -o "$work/manifest-fuzzer" > "$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
fi
grep -v "Cannot export local symbol" "$work/build.log" >&2 || true

echo "fuzzing for $seconds s (corpus: Fixtures/fuzz/manifest)..." >&2
"$work/manifest-fuzzer" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -dict="$root/Fuzz/manifest.dict" -artifact_prefix="$artifacts/stockade-manifest-" -print_final_stats=1 "$work/corpus"
