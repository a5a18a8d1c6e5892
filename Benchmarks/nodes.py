#!/usr/bin/env python3
"""Runs per second through the API with 1, 2, 3 `stockade serve --node` nodes on one PostgreSQL store.

    python3 Benchmarks/nodes.py --server BIN --stockade BIN --store URL --work DIR \
        [--nodes 0,1,2,3] [--runs 300] [--clients 8] [--max-running 2]

For each node count N (0: one service without --node on the same store, the baseline): N `stockade-server --node` daemons on this host (each its own state directory,
socket and STOCKADE_HOST_ID), the same store; `--clients` threads each take the next of `--runs`
`/bin/true` submissions, POST it to node i mod N and wait for its report on node (i+1) mod N (a node
that did not necessarily run it), over raw HTTP/1.1 on the Unix sockets. Prints one markdown row per
N: runs, wall time, runs/s, submit -> report p50/p99, and how many runs each node ran. The store must
be an existing database; the runs stay in it. Run as root; not part of the test suite.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def http(path_sock, method, path, token=None, body=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    s.connect(path_sock)
    payload = b"" if body is None else body.encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: stockade\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    s.sendall(head.encode() + b"\r\n" + payload)
    raw = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, i = b"", 0
        while True:
            lf = rest.index(b"\n", i)
            size = int(rest[i:lf].strip(), 16)
            if size == 0:
                break
            out += rest[lf + 1:lf + 1 + size]
            i = lf + 1 + size + 2
        rest = out
    return status, rest


def start_nodes(args, count, token_env):
    nodes = []
    # 0: one service without --node on the same store (the baseline: no queue).
    for k in range(max(count, 1)):
        name = f"bench{count}-{chr(97 + k)}"
        sock = f"{args.work}/{name}.sock"
        state = f"{args.work}/state-{name}"
        os.makedirs(state, exist_ok=True)
        log = open(f"{args.work}/{name}.log", "w")
        env = dict(os.environ, STOCKADE_HOST_ID=f"host-{name}", **token_env)
        node = ["--node", name] if count > 0 else []
        proc = subprocess.Popen([args.server] + node + ["--store", args.store, "--listen", f"unix://{sock}",
                                 "--state-dir", state, "--max-running", str(args.max_running), "--max-queued", "1000",
                                 "--grace", "0s"], stdout=log, stderr=log, env=env)
        nodes.append((name, sock, proc))
    for name, sock, proc in nodes:
        for _ in range(600):
            try:
                if http(sock, "GET", "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"{name} exited {proc.returncode}: see {args.work}/{name}.log")
            time.sleep(0.02)
        else:
            sys.exit(f"{name} did not answer /v1/health within 12 s")
    return nodes


def measure(args, count, token):
    nodes = start_nodes(args, count, {})
    socks = [sock for _, sock, _ in nodes]
    count = len(socks)
    next_index = [0]
    lock = threading.Lock()
    latencies, ran_on, failures = [], {}, []

    def client():
        while True:
            with lock:
                i = next_index[0]
                if i >= args.runs:
                    return
                next_index[0] += 1
            started = time.monotonic()
            status, body = http(socks[i % count], "POST", "/v1/runs", token, '{"command":["/bin/true"]}')
            if status != 202:
                failures.append(f"submit {i}: {status} {body[:200]}")
                continue
            run_id = json.loads(body)["id"]
            status, body = http(socks[(i + 1) % count], "GET", f"/v1/runs/{run_id}/wait", token)
            answer = json.loads(body)
            if status != 200 or answer["report"]["outcome"] != "exited":
                failures.append(f"wait {i}: {status} {body[:200]}")
                continue
            with lock:
                latencies.append(time.monotonic() - started)
                node = answer.get("node") or "-a"
                ran_on[node] = ran_on.get(node, 0) + 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    for _, _, proc in nodes:
        proc.send_signal(signal.SIGTERM)
    for _, _, proc in nodes:
        proc.wait(timeout=120)
    if failures:
        sys.exit(f"{len(failures)} failures, first: {failures[0]}")
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))] * 1000
    spread = ", ".join(f"{k.split('-')[-1]} {v}" for k, v in sorted(ran_on.items()))
    label = count if nodes[0][0].split("-")[0] != "bench0" else "1, no `--node`"
    return f"| {label} | {len(latencies)} | {wall:.1f} s | {len(latencies) / wall:.1f} | {p(0.5):.0f} ms / {p(0.99):.0f} ms | {spread} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--stockade", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--nodes", default="0,1,2,3", help="node counts; 0: one service without --node")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-running", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    token = subprocess.run([args.stockade, "token", "create", "--store", args.store, "--state-dir", f"{args.work}/token",
                            "--name", f"bench-{os.getpid()}", "--scope", "run:read,run:write", "--ttl", "2h"],
                           check=True, capture_output=True, text=True).stdout.strip()
    print("| nodes | runs | wall | runs/s | submit → report p50 / p99 | runs per node |")
    print("|---|---|---|---|---|---|")
    for count in [int(n) for n in args.nodes.split(",")]:
        print(measure(args, count, token), flush=True)


if __name__ == "__main__":
    main()
