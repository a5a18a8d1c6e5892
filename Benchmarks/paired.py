#!/usr/bin/env python3
"""Two commands measured against each other, one invocation at a time.

    Benchmarks/paired.py N CMD_A... ::: CMD_B...

Forks A and B in turn (A B, then B A, and so on: N pairs after 5 warm-up pairs), each with its
output to /dev/null, and reads each child's wall time and CPU (ru_utime + ru_stime from wait4: the
process and the children it reaped). Prints the medians and the median of the per-pair ratios B/A,
which on this noisy VM moves far less than separate rounds of hyperfine or perf stat. How a change to
a one-shot command is measured against the build before it (BENCHMARKS.md).
"""
import os
import statistics
import sys
import time


def run(cmd):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"paired.py: {' '.join(cmd)} exited with {os.waitstatus_to_exitcode(status)}")
    return (time.perf_counter() - start) * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def main():
    if len(sys.argv) < 5 or ":::" not in sys.argv:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    rest = sys.argv[2:]
    split = rest.index(":::")
    a, b = rest[:split], rest[split + 1:]
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
    med = statistics.median
    wall = med(rb[0] / ra[0] for ra, rb in pairs)
    cpu = med(rb[1] / ra[1] for ra, rb in pairs if ra[1] > 0)
    print(f"A: wall {med(p[0][0] for p in pairs):.2f} ms, CPU {med(p[0][1] for p in pairs):.2f} ms")
    print(f"B: wall {med(p[1][0] for p in pairs):.2f} ms, CPU {med(p[1][1] for p in pairs):.2f} ms")
    print(f"paired median B/A over {n} pairs: wall {wall:.3f}, CPU {cpu:.3f}")


main()
