#!/usr/bin/env python3
"""Where one `stockade run -- /bin/true` spends its wall time, phase by phase.

Usage: Benchmarks/profile.py STOCKADE_BINARY [RUNS] [STATE_DIR]

Runs the binary RUNS times (default 15) under
  strace -f --seccomp-bpf -ttt -T -e trace=<a few marker syscalls>
(only the listed syscalls stop the tracee; thread creation is still traced, so a traced run
takes longer than an untraced one: compare TOTAL with hyperfine's median), splits each trace at
marker syscalls and prints the median and p10/p90 of every phase in milliseconds. The phases
are contiguous: they add up to the whole run. Markers (all seen from the outside, no change to
Stockade needed):

  start-up          execve of stockade -> first thread created (dynamic loading, Swift runtime,
                    argument parsing)
  supervisor init   -> the run directory's first mkdirat (state dir, audit database open and
                    migration check, abandoned-run scan, cgroup driver detection, stale-cgroup
                    scan, profile load)
  run dir           -> renameat2 of the run directory into place
  run.created, spawn -> the spawn helper's clone3 with CLONE_NEWUSER (the durable run.created
                    transaction, the root skeleton's clone, the request to the helper; the run's
                    cgroup comes from the pool and the filter from the state directory's cache, so
                    neither is usually on this path)
  clone+maps+join   -> init's unshare(CLONE_NEWCGROUP) (clone3 itself, setgroups, uid/gid maps,
                    joining the cgroup, releasing the child)
  child setup       -> execve of the worker (mounts on the skeleton, pivot_root, caps, fork,
                    the seccomp filter's load)
  worker            -> exit_group of the worker (/bin/true itself)
  ns teardown       -> the supervisor's waitid sees init gone (init's exit, namespace teardown)
  after the run     -> the last rmdir of the run cgroup (usage read, audit events, logs,
                    report.json, cgroup removal)
  exit              -> the stockade process is gone (closing audit transaction, WAL
                    checkpoint, runtime teardown)

It also totals the fdatasync time (the audit's synchronous=FULL commits) across the run.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

TRACE = "execve,clone3,mkdirat,mkdir,renameat2,seccomp,unshare,exit_group,waitid,rmdir,fdatasync,fsync"

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")


def parse(path):
    events = []
    unfinished = {}
    for raw in open(path, errors="replace"):
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        dur = None
        d = re.search(r"<(\d+\.\d+)>$", rest)
        if d:
            dur = float(d.group(1))
        if rest.endswith("<unfinished ...>"):
            unfinished[pid] = (ts, rest)
            events.append((ts, pid, rest, None, "start"))
            continue
        if rest.startswith("<..."):
            start = unfinished.pop(pid, (ts, rest))
            events.append((ts, pid, start[1].replace("<unfinished ...>", "") + " " + rest, dur, "end"))
            continue
        events.append((ts, pid, rest, dur, "whole"))
    return events


def first(events, pred, after=0.0):
    for ts, pid, text, dur, kind in events:
        if ts >= after and pred(pid, text, kind):
            return ts
    return None


def last(events, pred):
    found = None
    for ts, pid, text, dur, kind in events:
        if pred(pid, text, kind):
            found = ts
    return found


def phases(events):
    main = events[0][1]
    t0 = events[0][0]
    marks = [("start", t0)]

    def add(name, ts):
        if ts is None:
            raise ValueError("marker for %r not found" % name)
        marks.append((name, ts))

    add("start-up", first(events, lambda p, t, k: p == main and t.startswith("clone3(") and "CLONE_THREAD" in t))
    add("supervisor init", first(events, lambda p, t, k: t.startswith("mkdirat(") and ".creating-" in t))
    add("run dir", first(events, lambda p, t, k: t.startswith("renameat2(")))
    clone = first(events, lambda p, t, k: t.startswith("clone3(") and "CLONE_NEWUSER" in t)
    add("run.created, spawn", clone)
    add("clone+maps+join", first(events, lambda p, t, k: t.startswith("unshare(") and k in ("whole", "start"), after=clone))
    worker_exec = first(events, lambda p, t, k: t.startswith("execve(\"/bin/true\"") and k in ("start", "whole"), after=clone)
    add("child setup", worker_exec)
    worker_pid = next(pid for ts, pid, text, dur, kind in events if ts == worker_exec)
    add("worker", first(events, lambda p, t, k: p == worker_pid and t.startswith("exit_group("), after=worker_exec))
    add("ns teardown", first(events, lambda p, t, k: t.startswith("waitid(") and "CLD_EXITED" in t and k in ("end", "whole"), after=worker_exec))
    add("after the run", last(events, lambda p, t, k: t.startswith("rmdir(\"/sys/fs/cgroup/")))
    add("exit", events[-1][0])
    out = {}
    for (name, ts), (_, prev) in zip(marks[1:], marks[:-1]):
        out[name] = (ts - prev) * 1000
    out["TOTAL"] = (marks[-1][1] - t0) * 1000
    out["fdatasync total"] = sum((d or 0) for ts, p, t, d, k in events if t.startswith(("fdatasync(", "fsync(")) and k != "start") * 1000
    out["fdatasync count"] = sum(1 for ts, p, t, d, k in events if t.startswith(("fdatasync(", "fsync(")) and k != "start")
    return out


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    state = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="stockade-profile-", dir="/var/tmp")
    if not shutil.which("strace"):
        sys.exit("profile.py: strace is needed (apt-get install -y strace)")
    # one untraced run creates the database, so every traced run opens an existing one
    subprocess.run([binary, "run", "--state-dir", state, "--", "/bin/true"], check=True, stderr=subprocess.DEVNULL)
    results = []
    trace = os.path.join(tempfile.gettempdir(), "stockade-profile.strace")
    for i in range(runs):
        subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-T", "-e", "trace=" + TRACE, "-o", trace,
                        binary, "run", "--state-dir", state, "--", "/bin/true"], check=True, stderr=subprocess.DEVNULL)
        try:
            results.append(phases(parse(trace)))
        except (ValueError, StopIteration) as e:
            print("profile.py: run %d skipped: %s" % (i, e), file=sys.stderr)
    if not results:
        sys.exit("profile.py: no run could be split into phases")
    print("| phase | median ms | p10 – p90 ms |")
    print("|---|---|---|")
    for name in results[0]:
        values = sorted(r[name] for r in results)
        def pct(p):
            return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]
        fmtv = "%.0f" if name == "fdatasync count" else "%.2f"
        print("| %s | %s | %s – %s |" % (name, fmtv % statistics.median(values), fmtv % pct(10), fmtv % pct(90)))
    print("\n%d traced runs of %s run -- /bin/true, state dir %s" % (len(results), binary, state))


if __name__ == "__main__":
    main()
