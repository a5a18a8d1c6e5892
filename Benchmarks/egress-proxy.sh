#!/bin/sh
# The egress proxy's cost next to a direct connection, over loopback only:
# a 100 MB download (plain HTTP through the proxy, and a CONNECT tunnel) and
# the added latency per connection (200 small requests, each a new connection).
# Usage: Benchmarks/egress-proxy.sh [path/to/stockade]   (as root)
set -eu
stockade=${1:-.build/debug/stockade}
dir=$(mktemp -d /tmp/stockade-egress-bench.XXXXXX)
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
head -c 100000000 /dev/zero > "$dir/big"
echo ok > "$dir/small"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$port" >/dev/null 2>&1 &
server=$!
sleep 1
cat > "$dir/p.json" <<JSON
{"extends": "default", "limits": {"timeout": 300},
 "network": {"mode": "proxy", "egress": {"allow": ["bench.test:$port"], "allowPrivate": true, "maxConnections": 1000},
             "hosts": {"bench.test": "127.0.0.1"}}}
JSON
latency='
import sys, time, socket
host, port, proxied = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
n = 200
start = time.monotonic()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 3128) if proxied else (host, port))
    target = "http://%s:%d/small" % (host, port) if proxied else "/small"
    s.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (target, host)).encode())
    while s.recv(65536): pass
    s.close()
print("%.3f ms per connection" % ((time.monotonic() - start) * 1000 / n))
'
fmt='%{size_download} bytes in %{time_total} s = %{speed_download} B/s\n'
echo "direct download:";  curl -s -o /dev/null -w "$fmt" "http://127.0.0.1:$port/big"
echo "proxied download (plain HTTP):"
"$stockade" run --state-dir "$dir/state" --profile "$dir/p.json" -- curl -s -o /dev/null -w "$fmt" "http://bench.test:$port/big"
echo "proxied download (CONNECT tunnel):"
"$stockade" run --state-dir "$dir/state" --profile "$dir/p.json" -- curl -s -p -o /dev/null -w "$fmt" "http://bench.test:$port/big"
echo "direct latency:";  python3 -c "$latency" 127.0.0.1 "$port" 0
echo "proxied latency:"
"$stockade" run --state-dir "$dir/state" --profile "$dir/p.json" -- python3 -c "$latency" bench.test "$port" 1
