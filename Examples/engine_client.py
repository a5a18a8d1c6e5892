#!/usr/bin/env python3
"""An engine's side of `stockade serve`, with the Python 3 standard library only.

Submits one run over the service's Unix socket (with an Idempotency-Key, so a retry after a
lost answer never starts a second run), follows the run's audit events as Server-Sent Events
(resuming with Last-Event-ID if the stream is cut), and prints the final report as JSON.
With --logs it follows the worker's stdout as it is written instead of the events, copying it to
stderr (resuming from the byte offset it reached if the stream is cut).

    STOCKADE_TOKEN=stk_... python3 Examples/engine_client.py \
        --socket /run/stockade/stockade.sock -- /bin/sh -c 'echo hi'

Exit status: 0 when the run was reported, 1 on an API error (its JSON error is printed).
"""
import argparse
import http.client
import json
import os
import socket
import sys
import uuid


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class APIError(Exception):
    pass


def call(args, method, path, body=None, headers=None):
    conn = UnixHTTPConnection(args.socket)
    all_headers = {"Authorization": "Bearer " + args.token}
    all_headers.update(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    if response.status >= 400:
        raise APIError(f"{method} {path}: {response.status} {payload.decode(errors='replace').strip()}")
    return json.loads(payload)


def follow_events(args, run_id, last_event_id):
    """Yields (seq, kind, data) for the run's events after last_event_id until run.finished."""
    while True:
        conn = UnixHTTPConnection(args.socket)
        headers = {"Authorization": "Bearer " + args.token, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn.request("GET", f"/v1/events?run={run_id}", headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            raise APIError(f"GET /v1/events: {response.status} {response.read().decode(errors='replace').strip()}")
        event = {}
        try:
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line == "":
                    if "id" in event:
                        last_event_id = int(event["id"])
                        yield last_event_id, event.get("event"), json.loads(event.get("data", "null"))
                        if event.get("event") == "run.finished":
                            return
                    event = {}
                    continue
                field, _, value = line.partition(":")
                event[field] = value[1:] if value.startswith(" ") else value
        except (ConnectionError, socket.timeout, http.client.IncompleteRead):
            pass  # cut: resume from the last event seen
        finally:
            conn.close()


def follow_log(args, run_id, stream="stdout"):
    """Yields the run's log as it is written until the run has ended; a cut stream is resumed
    from the byte offset reached, so nothing is lost or repeated."""
    offset = 0
    while True:
        conn = UnixHTTPConnection(args.socket)
        conn.request("GET", f"/v1/runs/{run_id}/logs?stream={stream}&follow=true&offset={offset}",
                     headers={"Authorization": "Bearer " + args.token})
        response = conn.getresponse()
        if response.status != 200:
            raise APIError(f"GET /v1/runs/{run_id}/logs: {response.status} {response.read().decode(errors='replace').strip()}")
        try:
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        except (ConnectionError, socket.timeout, http.client.IncompleteRead):
            pass  # cut: resume from the offset reached
        finally:
            conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/stockade/stockade.sock")
    parser.add_argument("--token", default=os.environ.get("STOCKADE_TOKEN"))
    parser.add_argument("--memory", default="64m")
    parser.add_argument("--timeout", default="60s")
    parser.add_argument("--logs", action="store_true", help="follow the worker's stdout (to stderr) instead of the events")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    if not args.token:
        print("engine_client: give --token or set STOCKADE_TOKEN (stockade token create makes one)", file=sys.stderr)
        return 1
    try:
        request = {"command": args.command, "memory": args.memory, "timeout": args.timeout}
        submitted = call(args, "POST", "/v1/runs", request, {"Idempotency-Key": str(uuid.uuid4())})
        run_id = submitted["id"]
        print(f"submitted {run_id} ({submitted['state']})", file=sys.stderr)
        if args.logs:
            for chunk in follow_log(args, run_id):
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
        else:
            for seq, kind, _ in follow_events(args, run_id, None):
                print(f"event {seq} {kind}", file=sys.stderr)
        final = call(args, "GET", f"/v1/runs/{run_id}/wait")
        print(json.dumps(final["report"], sort_keys=True))
        return 0
    except APIError as error:
        print(f"engine_client: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
