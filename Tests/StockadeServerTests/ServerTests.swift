import Foundation
import Glibc
import StockadeTestSupport
import Testing


/// Every protected route, with a method, a path and the scope it needs.
private let protectedRoutes: [(method: String, path: String, scope: String)] = [
    ("POST", "/v1/runs", "run:write"),
    ("GET", "/v1/runs", "run:read"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR", "run:read"),
    ("POST", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/cancel", "run:write"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/wait", "run:read"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/logs", "run:read"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/receipt", "run:read"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/result", "run:read"),
    ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/result/out/a.txt", "run:read"),
    ("POST", "/v1/verify", "admin"),
    ("GET", "/v1/reviews", "review:read"),
    ("GET", "/v1/reviews?state=pending", "review:read"),
    ("GET", "/v1/reviews/1", "review:read"),
    ("POST", "/v1/reviews/1/accept", "review:submit"),
    ("POST", "/v1/reviews/1/reject", "review:submit"),
    ("GET", "/v1/events", "audit:read"),
]

@Suite("stockade serve: the /v1 API over a Unix socket", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ServerTests {
    @Test("health answers without a token; the socket is 0660; tokens: 401 missing, unknown, revoked, expired; 403 without the scope")
    func authentication() throws {
        let server = try ServerHarness()
        let health = try server.client.request("GET", "/v1/health")
        #expect(health.status == 200)
        #expect(try health.json()["status"] as? String == "ok")
        var st = stat()
        #expect(lstat(server.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660, "socket mode \(String(st.st_mode & 0o777, radix: 8))")

        let reader = try server.token("reader", scopes: "run:read")
        let writer = try server.token("writer", scopes: "run:write")
        let auditor = try server.token("auditor", scopes: "audit:read")
        let doomed = try server.token("doomed", scopes: "admin")
        let shortLived = try server.token("short", scopes: "admin", ttl: "1s")
        let listed = try server.stockade(["token", "list", "--json"])
        #expect(listed.status == 0)
        #expect(listed.stdout.split(separator: "\n").count == 5)
        #expect(!listed.stdout.contains(reader) && !listed.stdout.contains("stk_"), "token list never shows a token")
        #expect(try server.stockade(["token", "revoke", "doomed"]).status == 0)
        #expect(try server.stockade(["token", "revoke", "doomed"]).status == 1, "a second revoke names no active token")
        let state = try server.stockade(["token", "list", "--json"]).stdout
        #expect(state.contains(#""name":"doomed""#) && state.contains(#""state":"revoked""#))
        // The database keeps the hash, never the token.
        let database = try Data(contentsOf: URL(fileURLWithPath: server.stateDirectory + "/audit.sqlite"))
        #expect(database.range(of: Data(reader.utf8)) == nil)
        usleep(1_200_000) // `short` expires

        let unknown = "stk_" + String(repeating: "A", count: 43)
        for route in protectedRoutes {
            for (token, why) in [(nil, "missing"), (unknown, "unknown"), (doomed, "revoked"), (shortLived, "expired")] as [(String?, String)] {
                let response = try server.client.request(route.method, route.path, token: token, json: route.method == "POST" ? #"{"command":["true"]}"# : "")
                #expect(response.status == 401, "\(route.method) \(route.path) with a \(why) token: \(response.status) \(response.text)")
                #expect(try response.error().code == "unauthorized")
            }
            let wrong = [reader, writer, auditor].first { token in
                !(route.scope == "run:read" && token == reader) && !(route.scope == "run:write" && token == writer)
                    && !(route.scope == "audit:read" && token == auditor)
            }!
            let forbidden = try server.client.request(route.method, route.path, token: wrong, json: route.method == "POST" ? #"{"command":["true"]}"# : "")
            #expect(forbidden.status == 403, "\(route.method) \(route.path) without \(route.scope): \(forbidden.status) \(forbidden.text)")
            #expect(try forbidden.error().code == "forbidden")
        }
        // Every call is in the trail with its principal and route, never a token: in a row of its
        // own, or, for the calls without a valid token past their bound (AnonymousLimiter), counted
        // in an api.throttled row, written at the stop at the latest.
        #expect(server.terminate() == 0)
        let events = try server.stockade(["audit", "events", "--kind", "api.request", "--json"])
        #expect(events.status == 0, "\(events.stderr)")
        let lines = events.stdout.split(separator: "\n")
        let throttled = try server.stockade(["audit", "events", "--kind", "api.throttled", "--json"]).stdout.split(separator: "\n")
        let counted = throttled.compactMap { line -> Int? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let detail = object["detail"] as? [String: Any] else { return nil }
            return (detail["calls"] as? NSNumber)?.intValue
        }.reduce(0, +)
        #expect(lines.count + counted >= 1 + protectedRoutes.count * 5, "\(lines.count) rows and \(counted) counted")
        #expect(events.stdout.contains(#""authFailure":"revoked""#) && events.stdout.contains(#""authFailure":"expired""#))
        #expect(events.stdout.contains(#""principal":"reader""#) && events.stdout.contains(#""route":"/v1/runs/{id}/cancel""#))
        #expect(!events.stdout.contains("stk_"), "no token in the trail")
    }

    @Test("submit, idempotent resubmission, wait, show, list, logs from an offset; 404, 413, 400 naming the field, 422 on a reused key")
    func runs() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let body = #"{"command":["/bin/sh","-c","echo hi"],"labels":{"team":"a"},"name":"greeting"}"#
        let first = try server.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-1"], json: body)
        #expect(first.status == 202, "\(first.text)")
        let id = try #require(try first.json()["id"] as? String)
        #expect(["queued", "running"].contains(try first.json()["state"] as? String ?? ""))
        let again = try server.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-1"], json: body)
        #expect(again.status == 202)
        #expect(try again.json()["id"] as? String == id, "the retry answers the first run")
        #expect(try again.json()["replayed"] as? Bool == true)
        let reused = try server.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-1"], json: #"{"command":["true"]}"#)
        #expect(reused.status == 422)
        #expect(try reused.error().field == "Idempotency-Key")

        let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        #expect(waited.status == 200, "\(waited.text)")
        let report = try #require(try waited.json()["report"] as? [String: Any])
        #expect(report["outcome"] as? String == "exited")
        #expect(report["stdout"] as? String == "hi\n")
        #expect(report["runId"] as? String == id)

        // The retry after the run ended still answers the same run.
        let late = try server.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-1"], json: body)
        #expect(try late.json()["id"] as? String == id)
        let runs = try server.stockade(["audit", "runs", "--json"])
        #expect(runs.stdout.split(separator: "\n").count == 1, "one run in the trail: \(runs.stdout)")
        #expect(runs.stdout.contains(id))

        let shown = try server.client.request("GET", "/v1/runs/\(id)", token: token)
        #expect(try shown.json()["state"] as? String == "finished")
        #expect((try shown.json()["report"] as? [String: Any])?["stdout"] as? String == "hi\n")
        let listed = try server.client.request("GET", "/v1/runs?state=finished&label=team%3Da&limit=10", token: token)
        let items = try #require(try listed.json()["runs"] as? [[String: Any]])
        #expect(items.map { $0["id"] as? String } == [id])
        #expect(items.first?["name"] as? String == "greeting")
        #expect(try server.client.request("GET", "/v1/runs?label=team%3Db", token: token).json()["runs"] as? [Any] != nil)
        #expect((try server.client.request("GET", "/v1/runs?label=team%3Db", token: token).json()["runs"] as? [Any])?.isEmpty == true)
        let page = try server.client.request("GET", "/v1/runs?after=\(id)", token: token)
        #expect((try page.json()["runs"] as? [Any])?.isEmpty == true)

        let logs = try server.client.request("GET", "/v1/runs/\(id)/logs?stream=stdout&offset=1", token: token)
        #expect(logs.status == 200)
        #expect(logs.text == "i\n")
        #expect(logs.headers["stockade-next-offset"] == "3")
        let stderr = try server.client.request("GET", "/v1/runs/\(id)/logs?stream=stderr", token: token)
        #expect(stderr.status == 200 && stderr.body.isEmpty)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/logs?stream=stdin", token: token).error().field == "stream")

        let missing = try server.client.request("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR", token: token)
        #expect(missing.status == 404)
        #expect(try server.client.request("GET", "/v1/runs/..%2F..%2Fetc", token: token).status == 404)
        #expect(try server.client.request("GET", "/v1/nothing", token: token).status == 404)

        let big = Array(repeating: UInt8(ascii: " "), count: (1 << 20) + 10)
        let tooLarge = try server.client.request("POST", "/v1/runs", token: token, body: big)
        #expect(tooLarge.status == 413, "\(tooLarge.text)")
        let badField = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true"],"memory":"1k"}"#)
        #expect(badField.status == 400)
        #expect(try badField.error().field == "memory")
        let badItem = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true", 3]}"#)
        #expect(try badItem.error().field == "command[1]")
        let unknownKey = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true"],"memroy":"64m"}"#)
        #expect(try unknownKey.error().field == "memroy")
        // Placement on nodes is refused by a service without --node, not ignored.
        let nodeLabels = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true"],"nodeLabels":{"gpu":"yes"}}"#)
        #expect(nodeLabels.status == 400, "\(nodeLabels.text)")
        #expect(try nodeLabels.error().field == "nodeLabels")
        let retries = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true"],"retries":2}"#)
        #expect(retries.status == 400, "\(retries.text)")
        #expect(try retries.error().field == "retries")
        let malformed = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["#)
        #expect(malformed.status == 400)
        #expect(try malformed.error().code == "invalid-json")
        #expect(try server.stockade(["audit", "runs", "--json"]).stdout.split(separator: "\n").count == 1, "no refused body started a run")
        #expect(server.terminate() == 0)
    }

    @Test("an idempotency key outlives a restart of the service: the retry answers the first run, none is started")
    func idempotencyAcrossRestart() throws {
        let first = try ServerHarness()
        let token = try first.token("engine", scopes: "run:read,run:write")
        let body = #"{"command":["/bin/sh","-c","echo once"]}"#
        let submitted = try first.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-7"], json: body)
        let id = try #require(try submitted.json()["id"] as? String)
        _ = try first.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        #expect(first.terminate() == 0)

        let second = try ServerHarness(sharing: first)
        let retried = try second.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-7"], json: body)
        #expect(retried.status == 202, "\(retried.text)")
        #expect(try retried.json()["id"] as? String == id)
        #expect(try retried.json()["replayed"] as? Bool == true)
        let other = try second.client.request("POST", "/v1/runs", token: token, headers: ["Idempotency-Key": "job-7"], json: #"{"command":["true"]}"#)
        #expect(other.status == 422)
        // Keys are per principal: another token's job-7 is a run of its own.
        let colleague = try second.token("colleague", scopes: "run:read,run:write")
        let theirs = try second.client.request("POST", "/v1/runs", token: colleague, headers: ["Idempotency-Key": "job-7"], json: body)
        let theirId = try #require(try theirs.json()["id"] as? String)
        #expect(theirId != id)
        _ = try second.client.request("GET", "/v1/runs/\(theirId)/wait", token: colleague)
        #expect(try second.stockade(["audit", "runs", "--json"]).stdout.split(separator: "\n").count == 2)
        #expect(second.terminate() == 0)
    }

    @Test("a sleeping run is cancelled: its report says cancelled")
    func cancel() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let submitted = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["sleep","100"]}"#)
        let id = try #require(try submitted.json()["id"] as? String)
        for _ in 0..<200 {
            if try server.client.request("GET", "/v1/runs/\(id)", token: token).json()["state"] as? String == "running" { break }
            usleep(50_000)
        }
        // Logs are readable while the run goes (it has written nothing yet).
        let logs = try server.client.request("GET", "/v1/runs/\(id)/logs", token: token)
        #expect(logs.status == 200 && logs.body.isEmpty, "logs before the end: \(logs.text)")
        let cancelled = try server.client.request("POST", "/v1/runs/\(id)/cancel", token: token)
        #expect(cancelled.status == 202, "\(cancelled.text)")
        let started = Date()
        let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        #expect(Date().timeIntervalSince(started) < 30)
        #expect((try waited.json()["report"] as? [String: Any])?["outcome"] as? String == "cancelled")
        let again = try server.client.request("POST", "/v1/runs/\(id)/cancel", token: token)
        #expect(again.status == 409)
        #expect(server.terminate() == 0)
    }

    @Test("the event stream read partway, cut, resumed with Last-Event-ID: every event once, in order, as audit events lists them")
    func eventStream() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write,audit:read")
        let submitted = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/sh","-c","echo one"]}"#)
        let id = try #require(try submitted.json()["id"] as? String)
        _ = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)

        var seen: [SSEEvent] = []
        do {
            let stream = try EventStreamReader(client: server.client, path: "/v1/events", token: token)
            for _ in 0..<4 { seen.append(try #require(try stream.next(), "an event")) }
            #expect(stream.status == 200)
        } // cut
        // Written while the client was away: another run and more calls.
        let second = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/sh","-c","echo two"]}"#)
        let secondId = try #require(try second.json()["id"] as? String)
        _ = try server.client.request("GET", "/v1/runs/\(secondId)/wait", token: token)
        let listed = try server.stockade(["audit", "events", "--json"])
        let expected = try listed.stdout.split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        let lastSeq = try #require(expected.last?["seq"] as? Int)
        let resumed = try EventStreamReader(client: server.client, path: "/v1/events", token: token,
                                            headers: ["Last-Event-ID": try #require(seen.last?.id)])
        while let event = try resumed.next() {
            seen.append(event)
            if Int(event.id ?? "") ?? 0 >= lastSeq { break }
        }
        let got = seen.filter { Int($0.id ?? "") ?? 0 <= lastSeq }
        #expect(got.map(\.id) == expected.map { ($0["seq"] as? Int).map(String.init) }, "each event once, in order")
        for (event, listedEvent) in zip(got, expected) {
            let data = try #require(try JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? [String: Any])
            #expect(data["hash"] as? String == listedEvent["hash"] as? String)
            #expect(event.event == listedEvent["kind"] as? String)
        }
        #expect(got.contains { $0.event == "run.finished" } && got.contains { $0.event == "api.request" })

        // Filters: one run's events only, from `since`.
        let filtered = try EventStreamReader(client: server.client, path: "/v1/events?run=\(secondId)&since=0", token: token)
        let firstOfRun = try #require(try filtered.next())
        #expect(firstOfRun.event == "run.created")
        #expect((try JSONSerialization.jsonObject(with: Data(firstOfRun.data.utf8)) as? [String: Any])?["runId"] as? String == secondId)
        let badKind = try server.client.request("GET", "/v1/events?kind=nope", token: token)
        #expect(try badKind.error().field == "kind")
        #expect(server.terminate() == 0)
    }

    @Test("a token revoked while its event stream is open ends that stream within seconds; another token's stays open",
          .timeLimit(.minutes(2)))
    func revokedTokenEndsItsStream() throws {
        let server = try ServerHarness()
        let leaked = try server.token("leaked", scopes: "audit:read")
        let kept = try server.token("kept", scopes: "audit:read")
        let revoked = try EventStreamReader(client: server.client, path: "/v1/events", token: leaked)
        let control = try EventStreamReader(client: server.client, path: "/v1/events", token: kept)
        #expect(try revoked.next() != nil && revoked.status == 200, "the stream is open and delivers")
        #expect(try control.next() != nil && control.status == 200)
        #expect(try server.stockade(["token", "revoke", "leaked"]).status == 0)
        // Checked every 5 s: closed well before the 12 s this waits between reads (less than the 15 s
        // between keep-alives, so a stream left open is seen as such).
        let ended = revoked.drainUntilClosed(seconds: 12)
        #expect(ended.closed, "the revoked token's stream is still open")
        // The control: the token still valid keeps its stream (nothing closes it in 7 s).
        #expect(!control.drainUntilClosed(seconds: 7).closed, "the valid token's stream was closed")
        #expect(server.terminate() == 0)
    }

    @Test("an event-stream reader that stops reading is disconnected after the stall limit, not buffered for")
    func slowReader() throws {
        let server = try ServerHarness(environment: ["STOCKADE_SERVE_STALL_SECONDS": "2"])
        let token = try server.token("auditor", scopes: "audit:read,run:read")
        // Enough events (each an api.request of about 250 bytes) to fill the socket's buffers, made
        // with a token: calls without one are bounded per peer.
        let unknownRun = String(repeating: "0", count: 26)
        for _ in 0..<3000 { _ = try server.client.request("GET", "/v1/runs/\(unknownRun)", token: token) }
        let stream = try EventStreamReader(client: server.client, path: "/v1/events", token: token)
        #expect(try stream.next() != nil)
        // Stop reading: the server's write waits on a full socket, then gives up.
        var stalled = false
        for _ in 0..<200 where !stalled {
            usleep(100_000)
            stalled = server.log.contains("events.stalled")
        }
        #expect(stalled, "the server cut the stalled stream: \(server.log)")
        let drained = stream.drainUntilClosed(seconds: 10)
        #expect(drained.closed, "the connection was closed after \(drained.events) buffered events")
        #expect(drained.events < 3000, "not every event was sent: the stream stopped at the stall")
        // The service goes on: a new stream reads from where that one stopped.
        #expect(try server.client.request("GET", "/v1/health").status == 200)
        #expect(server.terminate() == 0)
    }

    @Test("SIGTERM: new runs refused, a short run finishes, a long one is cancelled after the grace period, exit 0")
    func gracefulShutdown() throws {
        let server = try ServerHarness(arguments: ["--grace", "3s"])
        let token = try server.token("engine", scopes: "run:read,run:write")
        let short = try #require(try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["sleep","1"]}"#).json()["id"] as? String)
        let long = try #require(try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["sleep","100"]}"#).json()["id"] as? String)
        for _ in 0..<200 {
            let states = try [short, long].map { try server.client.request("GET", "/v1/runs/\($0)", token: token).json()["state"] as? String }
            if states == ["running", "running"] { break }
            usleep(50_000)
        }
        let started = Date()
        kill(server.process.processIdentifier, SIGTERM)
        usleep(300_000)
        let refused = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["true"]}"#)
        #expect(refused.status == 503, "\(refused.text)")
        #expect(try server.client.request("GET", "/v1/health").json()["status"] as? String == "draining")
        #expect(server.terminate(within: 30) == 0, "\(server.log)")
        let took = Date().timeIntervalSince(started)
        #expect(took >= 2.5 && took < 20, "drained in \(took) s")
        func outcome(_ id: String) throws -> String? {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(server.stateDirectory)/runs/\(id)/report.json"))
            return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["outcome"] as? String
        }
        #expect(try outcome(short) == "exited")
        #expect(try outcome(long) == "cancelled")
        #expect(!FileManager.default.fileExists(atPath: server.socketPath), "the socket is removed at exit")
    }

    @Test("listeners: non-loopback TCP refused (TLS required), loopback TCP served, a stale socket replaced, a live one refused")
    func listeners() throws {
        let refused = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://0.0.0.0:8080"])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("requires TLS"), "\(refused.stderr)")
        #expect(try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://localhost:8080"]).status == 2)

        // A stale socket file (nobody listening) is replaced.
        let server = try ServerHarness(start: false)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var sa = unixSocketAddress(server.socketPath)
        let bound = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        close(fd)
        try server.start([])
        #expect(try server.client.request("GET", "/v1/health").status == 200)
        // A second service on the same live socket is refused and leaves it alone.
        let second = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "unix://\(server.socketPath)", "--state-dir", server.stateDirectory])
        #expect(second.status == 1)
        #expect(second.stderr.contains("another process is listening"), "\(second.stderr)")
        #expect(try server.client.request("GET", "/v1/health").status == 200)
        #expect(server.terminate() == 0)

        // Loopback TCP.
        let port = Ops.freePort()
        let tcp = try ServerHarness(start: false)
        try tcp.start([], listen: "tcp://127.0.0.1:\(port)")
        let health = try HTTPClient(address: .tcp(port: port)).request("GET", "/v1/health")
        #expect(health.status == 200)
        #expect(tcp.terminate() == 0)
    }

    @Test("Examples/engine_client.py submits over the socket, follows the events and prints the report",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3"))
    func engineClient() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write,audit:read")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Examples/engine_client.py").path
        let result = try ServerHarness.exec("/usr/bin/python3", [script, "--socket", server.socketPath, "--", "/bin/sh", "-c", "echo from-engine"],
                                            environment: ["STOCKADE_TOKEN": token])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout) \(result.stderr)")
        #expect(report["outcome"] as? String == "exited")
        #expect(report["stdout"] as? String == "from-engine\n")
        #expect(result.stderr.contains("run.finished"))
        // --logs follows the worker's stdout as it is written, to the end of the run.
        let followed = try ServerHarness.exec("/usr/bin/python3", [script, "--socket", server.socketPath, "--logs", "--", "/bin/sh", "-c",
                                                                   "echo one; sleep 0.3; echo two"], environment: ["STOCKADE_TOKEN": token])
        #expect(followed.status == 0, "\(followed.stderr)")
        #expect(followed.stderr.contains("one\ntwo\n"), "\(followed.stderr)")
        #expect(server.terminate() == 0)
    }

    @Test("--verify-every: each profile proven at start and on change, published in /metrics and the trail; runs under a failing one refused")
    func continuousVerification() throws {
        let dir = "/tmp/stk-verify-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A profile that grants the keyring calls: the required control cannot hold under it.
        let weak = dir + "/weak.json"
        try Data(#"{"extends":"default","seccomp":{"allow":["add_key","keyctl"]}}"#.utf8).write(to: URL(fileURLWithPath: weak))
        let controls = dir + "/controls.json"
        try Data(#"{"version":1,"profiles":{"*":{"require":["seccomp.keyrings"]}}}"#.utf8).write(to: URL(fileURLWithPath: controls))
        let server = try ServerHarness(arguments: ["--verify-every", "1h", "--verify-profile", "default", "--verify-profile", weak,
                                                   "--verify-only", "seccomp.keyrings", "--verify-controls", controls])
        let auditor = try server.token("scraper", scopes: "audit:read")
        let engine = try server.token("engine", scopes: "run:read,run:write")
        func metrics() throws -> String { try server.client.request("GET", "/metrics", token: auditor).text }
        func waitFor(_ line: String, seconds: Int = 90) throws -> String {
            var text = ""
            for _ in 0..<(seconds * 4) {
                text = try metrics()
                if text.contains(line) { return text }
                usleep(250_000)
            }
            Issue.record("no \(line) in /metrics after \(seconds) s: \(text)\n\(server.log)")
            return text
        }
        let text = try waitFor(#"stockade_verification_passed{profile="\#(weak)"}"#)
        _ = try waitFor(#"stockade_verification_passed{profile="default"}"#)
        let all = try metrics()
        #expect(all.contains(#"stockade_verification_passed{profile="default"} 1"#), "\(all)")
        #expect(all.contains(#"stockade_controls{profile="default",verdict="enforced"} 1"#), "\(all)")
        #expect(all.contains(#"stockade_verification_passed{profile="\#(weak)"} 0"#), "\(text)")
        #expect(all.contains(#"stockade_controls{profile="\#(weak)",verdict="not-applicable"} 1"#), "\(all)")
        #expect(try server.client.request("GET", "/metrics", token: engine).status == 403, "metrics need audit:read")

        // A run under the failing profile is refused, naming it; under the proven one it runs.
        let refused = try server.client.request("POST", "/v1/runs", token: engine, json: #"{"profile":"\#(weak)","command":["/bin/true"]}"#)
        #expect(refused.status == 503, "\(refused.text)")
        #expect(try refused.error().code == "profile-not-verified")
        #expect(try refused.error().field == "profile")
        let accepted = try server.client.request("POST", "/v1/runs", token: engine, json: #"{"command":["/bin/true"]}"#)
        #expect(accepted.status == 202, "\(accepted.text)")

        // Each verification is on record.
        let events = try server.stockade(["audit", "events", "--kind", "verification", "--json"]).stdout.split(separator: "\n")
        #expect(events.count >= 2, "\(events)")

        // The profile is fixed: the change is seen and proven again without waiting the hour, and runs go.
        try Data(#"{"extends":"default"}"#.utf8).write(to: URL(fileURLWithPath: weak))
        _ = try waitFor(#"stockade_verification_passed{profile="\#(weak)"} 1"#)
        let now = try server.client.request("POST", "/v1/runs", token: engine, json: #"{"profile":"\#(weak)","command":["/bin/true"]}"#)
        #expect(now.status == 202, "\(now.text)")
        #expect(server.terminate() == 0)
    }
}
