#!/usr/bin/env python3
"""Two commands measured against each other, one invocation at a time.

    Benchmarks/paired.py [--json] N CMD_A... ::: CMD_B...

Starts A and B in turn (A B, then B A, and so on: N pairs after 5 warm-up pairs), each with its
output to /dev/null, and reads each child's wall time and CPU (ru_utime + ru_stime from wait4: the
process and the children it reaped). Prints the medians and the median of the per-pair ratios B/A,
which on this noisy VM moves far less than separate rounds of hyperfine or perf stat. How a change to
a one-shot command is measured against the build before it (BENCHMARKS.md), and how run.sh measures
the one-shot ratios to bubblewrap (A = bwrap). --json prints the summary as one JSON object: each
side's medians and the per-pair ratios' median, p10 and p90.
"""
import json
import os
import statistics
import sys
import time


def run(cmd):
    # posix_spawn (glibc's clone with CLONE_VM | CLONE_VFORK) rather than fork: forking this
    # interpreter costs about a millisecond, which would be added to both sides of every pair and
    # pull each ratio towards 1. Started this way, /bin/true measures as under hyperfine -N.
    start = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"paired.py: {' '.join(cmd)} exited with {os.waitstatus_to_exitcode(status)}")
    return (time.perf_counter() - start) * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def measure(n, a, b):
    """N alternated pairs (A B, then B A, ...) after 5 warm-up pairs: [((wall, cpu) of A, (wall, cpu) of B)]."""
    for _ in range(5):
        run(a)
        run(b)
    pairs = []
    for k in range(n):
        if k % 2 == 0:
            ra = run(a)
            rb = run(b)
        else:
            rb = run(b)
            ra = run(a)
        pairs.append((ra, rb))
    return pairs


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(pairs):
    """Medians of each side and the per-pair ratios B/A (median, p10, p90), wall and CPU."""
    wall = [rb[0] / ra[0] for ra, rb in pairs]
    cpu = [rb[1] / ra[1] for ra, rb in pairs if ra[1] > 0]
    med = statistics.median
    return {
        "pairs": len(pairs),
        "a": {"wall_ms": med(p[0][0] for p in pairs), "cpu_ms": med(p[0][1] for p in pairs)},
        "b": {"wall_ms": med(p[1][0] for p in pairs), "cpu_ms": med(p[1][1] for p in pairs)},
        "ratio_wall": {"median": med(wall), "p10": percentile(wall, 10), "p90": percentile(wall, 90)},
        "ratio_cpu": {"median": med(cpu), "p10": percentile(cpu, 10), "p90": percentile(cpu, 90)},
    }


def main():
    args = sys.argv[1:]
    as_json = bool(args) and args[0] == "--json"
    if as_json:
        args = args[1:]
    if len(args) < 4 or ":::" not in args:
        sys.exit(__doc__)
    n = int(args[0])
    rest = args[1:]
    split = rest.index(":::")
    a, b = rest[:split], rest[split + 1:]
    result = summary(measure(n, a, b))
    if as_json:
        print(json.dumps(result))
        return
    print(f"A: wall {result['a']['wall_ms']:.2f} ms, CPU {result['a']['cpu_ms']:.2f} ms")
    print(f"B: wall {result['b']['wall_ms']:.2f} ms, CPU {result['b']['cpu_ms']:.2f} ms")
    print(f"paired median B/A over {n} pairs: wall {result['ratio_wall']['median']:.3f}, CPU {result['ratio_cpu']['median']:.3f}")


main()
