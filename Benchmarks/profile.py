#!/usr/bin/env python3
"""Where one `stockade run -- /bin/true` spends its wall time, phase by phase.

Usage: Benchmarks/profile.py [--perf] STOCKADE_BINARY [RUNS] [STATE_DIR]

--perf: the same phases from kernel tracepoints (`perf record -a` of exec, exit, task creation
and a few syscalls), which stop nothing: the phases are those of an untraced run, and TOTAL is
comparable with hyperfine's median. Without it, strace as below.

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


PERF_EVENTS = ",".join([
    "task:task_newtask", "sched:sched_process_exec", "sched:sched_process_exit",
    "syscalls:sys_enter_fdatasync", "syscalls:sys_exit_fdatasync", "syscalls:sys_enter_mkdirat",
    "syscalls:sys_enter_renameat2", "syscalls:sys_enter_unshare", "syscalls:sys_exit_waitid",
    "syscalls:sys_enter_rmdir",
])
PERF_LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)$")
CLONE_NEWUSER = 0x10000000
CLONE_NEWCGROUP = 0x02000000


def perf_runs(script_output, binary):
    """Splits `perf script` output into one event list per run of BINARY: (time, tgid, tid, event, fields),
    only the events of the run's processes (the stockade process, its spawn helper, init and worker)."""
    runs = []
    current = None
    family = set()
    for raw in script_output.splitlines():
        m = PERF_LINE.match(raw)
        if not m:
            continue
        tgid, tid, ts, event, fields = int(m.group(2)), int(m.group(3)), float(m.group(4)), m.group(5), m.group(6)
        if event == "sched:sched_process_exec" and ("filename=" + binary + " ") in fields + " ":
            current = []
            runs.append(current)
            family = {tgid}
        if current is None:
            continue
        if event == "task:task_newtask" and tgid in family:
            family.add(int(re.search(r"pid=(\d+)", fields).group(1)))
        if tgid in family or tid in family:
            current.append((ts, tgid, tid, event, fields))
    return runs


def perf_phases(events):
    main = events[0][1]
    t0 = events[0][0]
    marks = [("start", t0)]

    def find(pred, after=0.0, last=False):
        found = None
        for e in events:
            if e[0] >= after and pred(e):
                found = e
                if not last:
                    break
        if found is None:
            raise ValueError("marker not found")
        return found

    def flags(e):
        return int(re.search(r"clone_flags=([0-9a-f]+)", e[4]).group(1), 16)

    start = find(lambda e: e[1] == main and e[3] == "task:task_newtask")
    marks.append(("start-up", start[0]))
    marks.append(("supervisor init", find(lambda e: e[1] == main and e[3] == "syscalls:sys_enter_mkdirat")[0]))
    marks.append(("run dir", find(lambda e: e[1] == main and e[3] == "syscalls:sys_enter_renameat2")[0]))
    clone = find(lambda e: e[3] == "task:task_newtask" and flags(e) & CLONE_NEWUSER)
    marks.append(("run.created, spawn", clone[0]))
    init = int(re.search(r"pid=(\d+)", clone[4]).group(1))
    unshare = find(lambda e: e[2] == init and e[3] == "syscalls:sys_enter_unshare"
                   and int(re.search(r"unshare_flags: (0x[0-9a-f]+)", e[4]).group(1), 16) & CLONE_NEWCGROUP, after=clone[0])
    marks.append(("clone+maps+join", unshare[0]))
    worker = find(lambda e: e[3] == "sched:sched_process_exec" and "filename=/bin/true " in e[4] + " ", after=clone[0])
    marks.append(("child setup", worker[0]))
    exited = find(lambda e: e[2] == worker[2] and e[3] == "sched:sched_process_exit", after=worker[0])
    marks.append(("worker", exited[0]))
    marks.append(("ns teardown", find(lambda e: e[1] == main and e[3] == "syscalls:sys_exit_waitid", after=exited[0])[0]))
    marks.append(("after the run", find(lambda e: e[1] == main and e[3] == "syscalls:sys_enter_rmdir", last=True)[0]))
    marks.append(("exit", find(lambda e: e[1] == main and e[3] == "sched:sched_process_exit" and "group_dead=true" in e[4])[0]))
    out = {}
    for (name, ts), (_, prev) in zip(marks[1:], marks[:-1]):
        out[name] = (ts - prev) * 1000
    out["TOTAL"] = (marks[-1][1] - t0) * 1000
    entered = {}
    total = 0.0
    count = 0
    for ts, tgid, tid, event, fields in events:
        if event == "syscalls:sys_enter_fdatasync":
            entered[tid] = ts
        elif event == "syscalls:sys_exit_fdatasync" and tid in entered:
            total += ts - entered.pop(tid)
            count += 1
    out["fdatasync total"] = total * 1000
    out["fdatasync count"] = count
    return out


def perf_profile(binary, runs, state):
    if not shutil.which("perf"):
        sys.exit("profile.py: perf is needed (apt-get install -y linux-perf)")
    binary = os.path.realpath(binary)
    data = os.path.join(tempfile.gettempdir(), "stockade-profile.perf")
    loop = "for i in $(seq %d); do %s run --state-dir %s -- /bin/true 2>/dev/null; done" % (
        runs, binary, state)
    subprocess.run(["perf", "record", "-q", "-a", "-o", data, "-e", PERF_EVENTS, "--", "sh", "-c", loop],
                   check=True, stderr=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,time,event,trace"],
                            check=True, capture_output=True, text=True).stdout
    results = []
    for i, events in enumerate(perf_runs(script, binary)):
        try:
            results.append(perf_phases(events))
        except (ValueError, AttributeError) as e:
            print("profile.py: run %d skipped: %s" % (i, e), file=sys.stderr)
    return results


def main():
    args = sys.argv[1:]
    use_perf = "--perf" in args
    args = [a for a in args if a != "--perf"]
    if len(args) < 1:
        print(__doc__)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + args
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    state = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="stockade-profile-", dir="/var/tmp")
    # one untraced run creates the database, so every traced run opens an existing one
    subprocess.run([binary, "run", "--state-dir", state, "--", "/bin/true"], check=True, stderr=subprocess.DEVNULL)
    if use_perf:
        report(perf_profile(binary, runs, state), "%d runs of %s run -- /bin/true under perf's tracepoints, state dir %s" % (runs, binary, state))
        return
    if not shutil.which("strace"):
        sys.exit("profile.py: strace is needed (apt-get install -y strace)")
    results = []
    trace = os.path.join(tempfile.gettempdir(), "stockade-profile.strace")
    for i in range(runs):
        subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-T", "-e", "trace=" + TRACE, "-o", trace,
                        binary, "run", "--state-dir", state, "--", "/bin/true"], check=True, stderr=subprocess.DEVNULL)
        try:
            results.append(phases(parse(trace)))
        except (ValueError, StopIteration) as e:
            print("profile.py: run %d skipped: %s" % (i, e), file=sys.stderr)
    report(results, "%d traced runs of %s run -- /bin/true, state dir %s" % (len(results), binary, state))


def report(results, caption):
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
    print("\n" + caption)


if __name__ == "__main__":
    main()
