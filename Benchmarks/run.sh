#!/usr/bin/env bash
# Benchmarks/run.sh [--quick]: Stockade against the C floor, bubblewrap, unshare (and nsjail if installed).
#
# Builds the release binaries (scripts/build-release.sh, in .build-static), the C floor (gcc) and the
# benchmark package (Benchmarks/, release), then measures everything side by side in one run and
# prints one markdown table (also written to $STOCKADE_BENCH_OUT, default /tmp/stockade-bench/results.md).
# Run as root on the cgroup v1 host. Not part of the test suite: run it on purpose, on a quiet machine
# (it waits up to 5 minutes for the 1-minute load average to fall below 1.5, then goes on and says so).
#
# STOCKADE_BENCH_BIN=/path/to/stockade measures that release binary instead of building the root package.
# State directories: the whole-command rows use a state dir on disk (/var/tmp, ext4) and one on
# tmpfs (/dev/shm); the in-process rows (batch, RSS) use fresh state dirs on disk.
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (only --quick)" >&2; exit 2 ;;
    esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${STOCKADE_BENCH_WORK:-/var/tmp/stockade-bench}"          # disk (ext4 on this host)
SHM="${STOCKADE_BENCH_TMPFS:-/dev/shm/stockade-bench}"          # tmpfs
OUTDIR=/tmp/stockade-bench
OUT="${STOCKADE_BENCH_OUT:-$OUTDIR/results.md}"

if [ "$(id -u)" -ne 0 ]; then echo "run.sh: run as root (cgroups, namespaces, id maps)" >&2; exit 1; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need bwrap || ! need hyperfine || ! need perf; then
    echo "run.sh: installing bubblewrap, hyperfine and perf" >&2
    apt-get install -y bubblewrap hyperfine linux-perf >&2
fi
need python3 || { echo "run.sh: python3 is needed to summarise hyperfine's JSON" >&2; exit 1; }

# On an ext4 without a journal (this VM's disk), the kernel's inode allocator passes over every free
# inode of a group freed in the last 5 s (35 s while its inode table block is dirty), reading the
# table for each (fs/ext4/ialloc.c, find_inode_bit: recently_deleted): a run directory made right
# after a bulk deletion costs more CPU (batch --parallel 1: 4.5 ms a run, 5.2-6.9 ms right after
# 20 000 files were deleted), while bwrap and the floor make no inodes. A journaled ext4 never makes
# this check. run.sh waits the window out after each bulk deletion between its sections; the
# fresh-state row deletes a state directory before each of its own runs by design (what a run from
# nothing costs), and the components' bundle copy removes each copy before the next (ComponentBenches).
LAST_BULK_DELETE=0
bulk_deleted() { LAST_BULK_DELETE=$(date +%s); }
settle() {
    local left=$(( LAST_BULK_DELETE + 40 - $(date +%s) ))
    [ "$left" -le 0 ] && return 0
    echo "run.sh: waiting ${left}s: ext4 still counts the inodes the last bulk deletion freed as recently deleted" >&2
    sleep "$left"
}

rm -rf "$WORK" "$SHM"
bulk_deleted
mkdir -p "$WORK" "$SHM" "$OUTDIR" "$(dirname "$OUT")"

echo "== building (release)" >&2
if [ -n "${STOCKADE_BENCH_BIN:-}" ]; then
    STOCKADE="$STOCKADE_BENCH_BIN"     # a prebuilt release binary to measure instead (say so in the report)
else
    # As deployed: the Swift standard library and FoundationEssentials linked statically, no full
    # Foundation in stockade (scripts/build-release.sh).
    "$ROOT/scripts/build-release.sh" .build-static >&2
    STOCKADE="$ROOT/.build-static/release/stockade"
fi
# `stockade serve` execs the stockade-server beside the stockade binary.
[ -x "$(dirname "$STOCKADE")/stockade-server" ] || { echo "run.sh: $(dirname "$STOCKADE")/stockade-server is missing (build the stockade-server product beside $STOCKADE)" >&2; exit 1; }
# Every worker's init is a copy of the stockade-spawn beside it (without it stockade forks its helpers).
[ -x "$(dirname "$STOCKADE")/stockade-spawn" ] || { echo "run.sh: $(dirname "$STOCKADE")/stockade-spawn is missing (build the stockade-spawn product beside $STOCKADE)" >&2; exit 1; }
# The binaries are measured as an installer leaves them: copied, now, into a directory of their own.
# How a 50 MB executable's file sits in the page cache moves its start-up: as the linker wrote it, or
# after its pages were reclaimed and read back, `stockade --version` takes 543-550 page faults; a
# copy written by `cp` minutes before, 515-522, and a one-shot run costs 7 % less wall time (the same
# bytes, alternated with paired.py; results/history-2026-12-05.md). A copy made now puts every run of
# run.sh in the same state, whatever the build or the machine's memory did before.
mkdir -p "$WORK/bin"
for binary in stockade stockade-server stockade-spawn; do
    cp "$(dirname "$STOCKADE")/$binary" "$WORK/bin/$binary"
done
STOCKADE="$WORK/bin/stockade"
SERVER="$WORK/bin/stockade-server"
gcc -O2 -Wall -Wextra -Werror -o "$WORK/floor" "$HERE/floor/floor.c"
FLOOR="$WORK/floor"
(cd "$HERE" && swift build -c release >&2)
BENCH="$HERE/.build/release/stockade-bench"

# A quiet machine: wait (at most 5 minutes) for the 1-minute load average to drop below 1.5.
for _ in $(seq 1 60); do
    awk '{ exit !($1 < 1.5) }' /proc/loadavg && break
    echo "run.sh: load $(cut -d' ' -f1 /proc/loadavg), waiting for < 1.5" >&2
    sleep 5
done
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$QUICK" = 1 ]; then RUNS=60; WARMUP=5; QFLAG=--quick; else RUNS=300; WARMUP=20; QFLAG=; fi

# A warm service for the one-shot row through it: stockade-server on a socket in a fresh state
# directory, a token for this run (the service is stopped when the script exits).
SERVE_DIR="$WORK/serve-warm"
mkdir -p "$SERVE_DIR/state"
export STOCKADE_TOKEN="$("$STOCKADE" token create --state-dir "$SERVE_DIR/state" --name bench --scope run:read,run:write --ttl 2h)"
"$SERVER" --listen "unix://$SERVE_DIR/api.sock" --state-dir "$SERVE_DIR/state" --max-running 2 --grace 0s 2>"$SERVE_DIR/server.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -S "$SERVE_DIR/api.sock" ] && break; sleep 0.05; done
[ -S "$SERVE_DIR/api.sock" ] || { echo "run.sh: stockade-server did not start (see $SERVE_DIR/server.log)" >&2; exit 1; }

# ---------------------------------------------------------------- (1) whole command
settle
echo "== (1) whole command, hyperfine ($RUNS runs each)" >&2
BWRAP=(bwrap --unshare-all --ro-bind /usr /usr --ro-bind /bin /bin --ro-bind /lib /lib --ro-bind /lib64 /lib64
       --proc /proc --dev /dev true)
UNSHARE=(unshare --user --map-root-user --pid --fork --mount --net --uts --ipc --cgroup --mount-proc /bin/true)
q() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; printf '%s' "${out% }"; }
CMDS=(
    -n "/bin/true (bare)" "/bin/true"
    -n "stockade run -- /bin/true (state on disk)" "$(q "$STOCKADE" run --state-dir "$WORK/state-run-disk" -- /bin/true)"
    -n "stockade run -- /bin/true (state on tmpfs)" "$(q "$STOCKADE" run --state-dir "$SHM/state-run-tmpfs" -- /bin/true)"
    -n "stockade --host (warm service) run -- /bin/true" "$(q "$STOCKADE" --host "unix://$SERVE_DIR/api.sock" run -- /bin/true)"
    -n "bwrap --unshare-all … true" "$(q "${BWRAP[@]}")"
    -n "unshare --user --map-root-user --pid --fork … /bin/true" "$(q "${UNSHARE[@]}")"
)
NSJAIL_NOTE="nsjail: not installed (not packaged in Debian 12); no row"
if need nsjail; then
    CMDS+=(-n "nsjail (execve mode)" "$(q nsjail -Me --quiet --disable_proc -R /usr -R /bin -R /lib -R /lib64 -- /bin/true)")
    NSJAIL_NOTE="nsjail: $(command -v nsjail)"
fi
hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$OUTDIR/whole.json" "${CMDS[@]}" >&2
# A state directory created afresh for every invocation (database creation and migration included).
hyperfine -N --style basic --warmup 3 --runs "$(( RUNS / 3 ))" --export-json "$OUTDIR/whole-fresh.json" \
    --prepare "rm -rf $WORK/state-fresh" \
    -n "stockade run -- /bin/true (fresh state dir on disk each run)" "$(q "$STOCKADE" run --state-dir "$WORK/state-fresh" -- /bin/true)" >&2
bulk_deleted   # each --prepare removed a state directory

# Section 7's one-shot ratios, alternated with bwrap one invocation at a time (paired.py: bwrap,
# stockade, then stockade, bwrap, ...): the median of the per-pair ratios. Hyperfine runs each
# command's runs in one block, so a drift of this VM between the blocks moves its ratio. Here, while
# the warm service is up.
settle
echo "== (1) the one-shot ratios, alternated with bwrap per invocation" >&2
PAIRS=$([ "$QUICK" = 1 ] && echo 60 || echo 300)
python3 "$HERE/paired.py" --json "$PAIRS" "${BWRAP[@]}" ::: "$STOCKADE" --host "unix://$SERVE_DIR/api.sock" run -- /bin/true > "$OUTDIR/pair-warm.json"
python3 "$HERE/paired.py" --json "$PAIRS" "${BWRAP[@]}" ::: "$STOCKADE" run --state-dir "$WORK/state-run-disk" -- /bin/true > "$OUTDIR/pair-alone.json"

WHOLE_ROWS="$(python3 - "$OUTDIR/whole.json" "$OUTDIR/whole-fresh.json" <<'PY'
import json, sys
results = []
for path in sys.argv[1:]:
    results += json.load(open(path))["results"]
def pct(ts, p):
    s = sorted(ts); i = round(p / 100 * (len(s) - 1)); return s[i]
bw = next(r for r in results if r["command"].startswith("bwrap"))
bw_med = pct(bw["times"], 50)
for r in results:
    t = r["times"]; med = pct(t, 50)
    name = r["command"]
    ratio = med / bw_med
    target, met = "–", "–"
    if name.startswith("stockade"):
        target = "≤ 0.8 × bwrap (≤ %.2f ms)" % (0.8 * bw_med * 1000)
        met = "met" if ratio <= 0.8 else "not met"
    failed = sum(1 for c in r.get("exit_codes", []) if c != 0)
    note = "%.2f × bwrap; %d runs%s" % (ratio, len(t), ", %d non-zero exits" % failed if failed else "")
    print("| %s | %.2f ms | %.2f – %.2f ms | %s | %s | %s |" % (name, med * 1000, pct(t, 10) * 1000, pct(t, 90) * 1000, target, met, note))
PY
)"

# ---------------------------------------------------------------- (2) in-process, (3) RSS, (4) components
echo "== (2) in-process: floor and stockade batch, interleaved" >&2
BATCH_ROWS="$("$BENCH" batch --stockade "$STOCKADE" --floor "$FLOOR" --work "$WORK/batch" $QFLAG)"
echo "== (3) supervisor RSS with 100 sleeping workers" >&2
RSS_ROWS="$("$BENCH" rss --stockade "$STOCKADE" --work "$WORK/rss" --workers 100 --sleep 5)"
# A PostgreSQL store for the audit rows next to SQLite's and for (6): $STOCKADE_BENCH_POSTGRES (an
# empty database), else a scratch server made here as the user postgres on a Unix socket (removed at the end).
PG_URL="${STOCKADE_BENCH_POSTGRES:-}"
PG_DIR=""
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$PG_URL" ] && [ -n "$PGBIN" ] && id postgres >/dev/null 2>&1; then
    PG_DIR="$(mktemp -d /tmp/stockade-bench-pg.XXXXXX)"
    chown postgres "$PG_DIR"
    runuser -u postgres -- "$PGBIN/initdb" -D "$PG_DIR/data" -U stockade --auth=trust -E UTF8 --locale=C >/dev/null
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_DIR/data" -o "-k $PG_DIR -c listen_addresses='' -p 55499" -l "$PG_DIR/log" -w start >/dev/null
    runuser -u postgres -- "$PGBIN/createdb" -h "$PG_DIR" -p 55499 -U stockade stockade_bench
    PG_URL="postgresql://stockade@/stockade_bench?host=$PG_DIR&port=55499"
fi
stop_pg() { [ -n "$PG_DIR" ] && { runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_DIR"; PG_DIR=""; }; return 0; }
trap 'kill $SERVER_PID 2>/dev/null || true; stop_pg' EXIT
echo "== (4) components$([ -n "$PG_URL" ] && echo ', the audit store on SQLite and PostgreSQL')" >&2
COMPONENT_ROWS="$("$BENCH" components --disk "$WORK/components" --tmpfs "$SHM/components" $QFLAG ${PG_URL:+--postgres "$PG_URL"})"
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
bulk_deleted   # the components removed their bundle copies and scratch databases
settle
echo "== (5) the service: throughput from 8 clients, latency, RSS with 100 queued and 50 running" >&2
SERVE_ROWS="$("$BENCH" serve --server "$SERVER" --stockade "$STOCKADE" --work "$WORK/serve" $QFLAG)"
# ---------------------------------------------------------------- (7) the run-cost targets, side by side
# CPU per isolated /bin/true run: `perf stat` (task-clock of the process and all its children) over the
# same number of runs, stockade batch --parallel 1 against the floor, interleaved rounds; throughput: the
# wall time of stockade batch over the same requests at --parallel 2, 4 and 8 (the best is the figure).
echo "== (7) run cost: CPU per run with perf stat (stockade batch vs the floor), batch throughput" >&2
CPU_RUNS=$([ "$QUICK" = 1 ] && echo 100 || echo 300)
CPU_REQ="$WORK/cpu-requests.jsonl"
python3 -c "import sys; [print('{\"id\":\"r%d\",\"command\":[\"/bin/true\"]}' % i) for i in range(int(sys.argv[1]))]" "$CPU_RUNS" > "$CPU_REQ"
: > "$OUTDIR/cost.txt"
for round in 1 2 3; do
    perf stat -x, -e task-clock -o "$OUTDIR/perf-stockade.txt" "$STOCKADE" batch --parallel 1 --state-dir "$WORK/cpu-$round" "$CPU_REQ" > /dev/null
    echo "stockade $(grep task-clock "$OUTDIR/perf-stockade.txt" | cut -d, -f1)" >> "$OUTDIR/cost.txt"
    perf stat -x, -e task-clock -o "$OUTDIR/perf-floor.txt" "$FLOOR" -n "$CPU_RUNS" -q
    echo "floor $(grep task-clock "$OUTDIR/perf-floor.txt" | cut -d, -f1)" >> "$OUTDIR/cost.txt"
done
for parallel in 2 4 8; do
    for round in 1 2; do
        start=$(date +%s.%N)
        "$STOCKADE" batch --parallel "$parallel" --state-dir "$WORK/tp-$parallel-$round" "$CPU_REQ" > "$OUTDIR/tp.jsonl"
        end=$(date +%s.%N)
        echo "batch$parallel $(grep -c '"exitCode":0' "$OUTDIR/tp.jsonl") $start $end" >> "$OUTDIR/cost.txt"
    done
done
COST_ROWS="$(SERVE_ROWS="$SERVE_ROWS" python3 - "$OUTDIR/cost.txt" "$OUTDIR/whole.json" "$CPU_RUNS" "$OUTDIR/pair-warm.json" "$OUTDIR/pair-alone.json" <<'PY'
import json, statistics, sys, re
cost, whole, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
pair_warm, pair_alone = (json.load(open(p)) for p in sys.argv[4:6])
cpu = {"stockade": [], "floor": []}
best = (0.0, "")
for line in open(cost):
    parts = line.split()
    if parts[0] in cpu:
        cpu[parts[0]].append(float(parts[1]) / runs)
    else:
        ok, start, end = int(parts[1]), float(parts[2]), float(parts[3])
        rate = ok / (end - start)
        if rate > best[0]: best = (rate, parts[0][5:])
s, f = statistics.median(cpu["stockade"]), statistics.median(cpu["floor"])
# Each round's stockade batch against the floor's loop run right after it: the median of those ratios.
round_ratio = statistics.median(a / b for a, b in zip(cpu["stockade"], cpu["floor"]))
def median(r):
    t = sorted(r["times"]); return t[len(t) // 2]
res = {r["command"]: median(r) for r in json.load(open(whole))["results"]}
bw = next(v for k, v in res.items() if k.startswith("bwrap"))
warm = next(v for k, v in res.items() if "warm service" in k)
alone = next(v for k, v in res.items() if k.startswith("stockade run -- /bin/true (state on disk)"))
print("| CPU per isolated `/bin/true` run, in process (`perf stat`, batch `--parallel 1`, %d runs × 3, each round against the floor's loop after it) | %.2f ms (rounds %s) | floor %.2f ms (rounds %s) | %.2f × floor (median of the rounds' ratios %s) | ≤ 1.5 × floor | %s |"
      % (runs, s, ", ".join("%.2f" % x for x in cpu["stockade"]), f, ", ".join("%.2f" % x for x in cpu["floor"]), round_ratio,
         ", ".join("%.2f" % (a / b) for a, b in zip(cpu["stockade"], cpu["floor"])), "met" if round_ratio <= 1.5 else "not met"))
print("| isolated runs per second on %s cores, `stockade batch` (best of `--parallel` 2/4/8, %d runs, 2 rounds) | %.0f runs/s (`--parallel` %s) | – | – | ≥ 500 runs/s | %s |"
      % (open("/proc/cpuinfo").read().count("processor\t:"), runs, best[0], best[1], "met" if best[0] >= 500 else "not met"))
import os
service = [(float(m.group(2)), m.group(1)) for m in re.finditer(r"service: /bin/true runs/s, 8 clients, ([^|]*?--max-running \d+) \| (\d+) runs/s", os.environ.get("SERVE_ROWS", ""))]
if service:
    rate, how = max(service)
    print("| isolated runs per second on %s cores, through the service (8 clients, best of section 5's rows) | %.0f runs/s (%s) | – | – | ≥ 500 runs/s | %s |"
          % (open("/proc/cpuinfo").read().count("processor\t:"), rate, how, "met" if rate >= 500 else "not met"))
def oneshot(name, pair, hyper, target, limit):
    r = pair["ratio_wall"]
    print("| %s: alternated with bwrap per invocation, %d pairs (`paired.py`) | %.2f ms | bwrap %.2f ms | **%.2f × bwrap** (per-pair p10–p90 %.2f–%.2f); hyperfine, section 1: %.2f × | %s | %s |"
          % (name, pair["pairs"], pair["b"]["wall_ms"], pair["a"]["wall_ms"], r["median"], r["p10"], r["p90"], hyper / bw, target,
             "met" if r["median"] <= limit else "not met"))
oneshot("one-shot `stockade --host … run -- /bin/true`, warm service", pair_warm, warm, "≤ 0.8 × bwrap", 0.8)
oneshot("one-shot `stockade run -- /bin/true`, standalone, state on disk", pair_alone, alone, "at least halved from 5.97 × (≤ 2.99 ×)", 2.99)
PY
)"

NODE_ROWS=""
if [ -n "$PG_URL" ]; then
    echo "== (6) many nodes on one PostgreSQL store: runs/s with 1, 2 and 3 nodes" >&2
    NODE_ROWS="$(python3 "$HERE/nodes.py" --server "$SERVER" --stockade "$STOCKADE" --store "$PG_URL" --work "$WORK/nodes" \
        --runs "$([ "$QUICK" = 1 ] && echo 100 || echo 300)" --clients 8 --max-running 2)"
else
    echo "== (6) skipped: no PostgreSQL (set STOCKADE_BENCH_POSTGRES or install postgresql)" >&2
fi
stop_pg
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- report
{
    echo "# Stockade benchmarks $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$QUICK" = 1 ] && echo ' (--quick)')"
    echo
    echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
    echo "- cgroups: $( [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && echo v2 || echo v1 ); disk: $(df -T /var/tmp | awk 'NR==2 {print $2" on "$1}'), rotational=$(cat /sys/block/"$(basename "$(df /var/tmp | awk 'NR==2 {print $1}')")"/queue/rotational 2>/dev/null || echo '?')"
    echo "- load average (1, 5, 15 min): $LOAD_START at start, $LOAD_END at end"
    echo "- stockade: $STOCKADE (worktree at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')), release build; $(bwrap --version); $(hyperfine --version); $NSJAIL_NOTE"
    echo
    "$BENCH" header
    echo "$WHOLE_ROWS"
    echo "$BATCH_ROWS"
    echo "$RSS_ROWS"
    echo "$COMPONENT_ROWS"
    echo "$SERVE_ROWS"
    echo
    echo "Run cost, the four figures side by side (issue 21's targets):"
    echo
    echo "| figure | Stockade | reference | ratio | target | met? |"
    echo "|---|---|---|---|---|---|"
    echo "$COST_ROWS"
    if [ -n "$NODE_ROWS" ]; then echo; echo "Many nodes on one PostgreSQL store (Benchmarks/nodes.py):"; echo; echo "$NODE_ROWS"; fi
} | tee "$OUT"
echo "run.sh: written to $OUT" >&2
rm -rf "$SHM"
