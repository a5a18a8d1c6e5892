import Foundation
import Glibc
import StockadeAudit
import StockadeTestSupport
import Synchronization
import Testing

/// `stockade serve --node`: several daemons, each with its own state directory, socket and host id,
/// share one PostgreSQL store's run queue. Leases are 2 s here; every wait polls with a bound.
@Suite("stockade serve --node: one run queue shared by several nodes", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .enabled(if: PostgresTestServer.unavailableReason == nil, "\(PostgresTestServer.unavailableReason ?? "")"), .timeLimit(.minutes(8)))
struct NodeQueueTests {
    static func node(_ name: String, _ environment: [String: String], labels: String? = nil, maxRunning: Int = 3) throws -> ServerHarness {
        var arguments = ["--node", name, "--lease", "2s", "--max-running", "\(maxRunning)"]
        if let labels { arguments += ["--labels", labels] }
        return try ServerHarness(arguments: arguments, environment: environment.merging(["STOCKADE_HOST_ID": "host-\(name)"]) { $1 })
    }

    static func submit(_ server: ServerHarness, token: String, _ json: String) throws -> String {
        let answer = try server.client.request("POST", "/v1/runs", token: token, json: json)
        try #require(answer.status == 202, "submit: \(answer.status) \(answer.text)")
        // Queued in the store; a node may have claimed it before the answer was written.
        #expect(try ["queued", "running"].contains(answer.json()["state"] as? String ?? ""), "\(answer.text)")
        return try #require(answer.json()["id"] as? String)
    }

    /// Polls `condition` every 100 ms; still false after `seconds` is a failure, not a hang.
    static func waitUntil(_ what: String, seconds: Int = 60, _ condition: () throws -> Bool) throws {
        for _ in 0..<(seconds * 10) {
            if try condition() { return }
            usleep(100_000)
        }
        Issue.record("still waiting after \(seconds) s for \(what)")
        throw HTTPClient.Failure(description: "timed out waiting for \(what)")
    }

    static func rows(_ url: PostgresStoreURL, _ sql: String) throws -> [[String]] {
        try PostgresTestServer.execute(url, sql).map { $0.map { $0 ?? "" } }
    }

    @Test("three nodes on one store: 300 runs submitted round-robin to their APIs at once each finish exactly once, spread over the nodes; every node answers for every run and its stream carries every node's events; the chain verifies")
    func threeNodesShareTheQueue() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let text = PostgresTestServer.connectableText(url)
        let environment = ["STOCKADE_STORE": text]
        let nodes = try ["a", "b", "c"].map { try Self.node($0, environment) }
        let token = try nodes[0].token("engine", scopes: "run:read,run:write,audit:read")

        // 300 submissions from 6 clients at once, round-robin over the nodes; then each is awaited
        // on the next node round, which did not necessarily run it.
        let total = 300
        let clients = nodes.map(\.client)
        let ids = Mutex<[Int: String]>([:])
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            for i in stride(from: worker, to: total, by: 6) {
                do {
                    let answer = try clients[i % 3].request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/echo","\#(i)"]}"#)
                    guard answer.status == 202, let id = try answer.json()["id"] as? String else {
                        failures.withLock { $0.append("submit \(i): \(answer.status) \(answer.text)") }
                        continue
                    }
                    ids.withLock { $0[i] = id }
                } catch {
                    failures.withLock { $0.append("submit \(i): \(error)") }
                }
            }
        }
        let submitted = ids.withLock { $0 }
        try #require(submitted.count == total, "\(failures.withLock { $0.prefix(5) })")
        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            for i in stride(from: worker, to: total, by: 6) {
                do {
                    let answer = try clients[(i + 1) % 3].request("GET", "/v1/runs/\(submitted[i]!)/wait", token: token)
                    let object = try answer.json()
                    let report = object["report"] as? [String: Any]
                    if answer.status != 200 || report?["stdout"] as? String != "\(i)\n" || report?["outcome"] as? String != "exited"
                        || !["a", "b", "c"].contains(object["node"] as? String ?? "") || object["attempt"] as? Int != 1 {
                        failures.withLock { $0.append("wait \(i): \(answer.status) \(answer.text)") }
                    }
                } catch {
                    failures.withLock { $0.append("wait \(i): \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")

        // Exactly once, in the trail: one run.created and one run.finished per run id, nothing else.
        let counts = try Self.rows(url, """
            SELECT runid, count(*) FILTER (WHERE kind = 'run.created'), count(*) FILTER (WHERE kind = 'run.finished')
            FROM events WHERE kind IN ('run.created', 'run.finished') GROUP BY runid
            """)
        #expect(counts.count == total, "runs in the trail: \(counts.count)")
        #expect(counts.allSatisfy { $0[1] == "1" && $0[2] == "1" }, "\(counts.filter { $0[1] != "1" || $0[2] != "1" })")
        #expect(Set(counts.map { $0[0] }) == Set(submitted.values))
        // Spread over the nodes, each run recorded as run by the node the queue says claimed it.
        let spread = try Self.rows(url, "SELECT node, state, count(*) FROM run_queue GROUP BY node, state ORDER BY node")
        #expect(spread.map { $0[0] } == ["a", "b", "c"] && spread.allSatisfy { $0[1] == "finished" && (Int($0[2]) ?? 0) > 0 }, "\(spread)")
        let mismatched = try Self.rows(url, """
            SELECT q.runid FROM run_queue q JOIN events e ON e.runid = q.runid AND e.kind = 'run.created'
            WHERE e.detail::jsonb ->> 'node' IS DISTINCT FROM q.node OR (e.detail::jsonb ->> 'attempt')::int <> 1
            """)
        #expect(mismatched.isEmpty, "run.created names another node than the queue: \(mismatched)")

        // Any node lists every node's runs; logs stay with the node that ran the run.
        let listed = try nodes[1].client.request("GET", "/v1/runs?limit=1000", token: token).json()["runs"] as? [[String: Any]] ?? []
        #expect(listed.count == total && listed.allSatisfy { $0["state"] as? String == "finished" && $0["outcome"] as? String == "exited" })
        let ranOnA = try #require(listed.first { $0["node"] as? String == "a" }?["id"] as? String)
        let elsewhere = try nodes[1].client.request("GET", "/v1/runs/\(ranOnA)/logs", token: token)
        #expect(elsewhere.status == 409, "\(elsewhere.text)")
        #expect(try elsewhere.error().code == "run-on-other-node")
        #expect(try (elsewhere.json()["error"] as? [String: Any])?["node"] as? String == "a")
        for route in ["result", "receipt", "result/out.txt"] {
            let refused = try nodes[1].client.request("GET", "/v1/runs/\(ranOnA)/\(route)", token: token)
            #expect(refused.status == 409, "\(route): \(refused.text)")
            #expect(try refused.error().code == "run-on-other-node", "\(route)")
        }
        let here = try nodes[0].client.request("GET", "/v1/runs/\(ranOnA)/logs", token: token)
        #expect(here.status == 200 && !here.body.isEmpty, "\(here.status) \(here.text)")
        let shown = try nodes[2].client.request("GET", "/v1/runs/\(ranOnA)", token: token).json()
        #expect(shown["node"] as? String == "a" && shown["state"] as? String == "finished" && shown["report"] is [String: Any])

        // c's event stream carries the runs every node created, by seq.
        let stream = try EventStreamReader(client: nodes[2].client, path: "/v1/events?kind=run.created", token: token)
        var seen: Set<String> = []
        var lastSeq = 0
        while seen.count < 3, let event = try stream.next() {
            let seq = Int(event.id ?? "") ?? 0
            #expect(seq > lastSeq)
            lastSeq = seq
            if let data = event.data.data(using: .utf8), let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
               let node = (object["detail"] as? [String: Any])?["node"] as? String {
                seen.insert(node)
            }
        }
        #expect(seen == ["a", "b", "c"], "run.created of nodes \(seen) in c's stream")

        // The CLI through a node: submitted to b, waited for wherever it ran.
        let cli = try ServerHarness.exec(ServerHarness.stockade, ["run", "--json", "--", "/bin/echo", "through b"],
                                         environment: ["STOCKADE_HOST": "unix://\(nodes[1].socketPath)", "STOCKADE_TOKEN": token])
        #expect(cli.status == 0 && cli.stdout.contains(#""stdout":"through b\n""#), "\(cli.stdout) \(cli.stderr)")

        let verified = try ServerHarness.exec(ServerHarness.stockade, ["audit", "verify", "--store", text])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        for node in nodes { #expect(node.terminate() == 0, "\(node.log)") }
        #expect(try Self.rows(url, "SELECT count(*) FROM nodes") == [["0"]], "every node left the queue at SIGTERM")
    }

    @Test("a node killed with SIGKILL mid-run: after its 2 s lease another node marks its runs abandoned naming it; the one that asked for a retry gets exactly one new attempt, which finishes on another node; nothing duplicated, the chain verifies")
    func killedNodeIsReaped() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let text = PostgresTestServer.connectableText(url)
        let environment = ["STOCKADE_STORE": text]
        let a = try Self.node("a", environment, labels: "pool=general")
        let c = try Self.node("c", environment, labels: "pool=c")
        let token = try a.token("engine", scopes: "run:read,run:write,audit:read")

        // Only c carries pool=c: these run there.
        let sleepers = try (0..<2).map { _ in
            try Self.submit(a, token: token, #"{"command":["/bin/sleep","30"],"nodeLabels":{"pool":"c"}}"#)
        }
        let retried = try Self.submit(a, token: token, #"{"command":["/bin/sh","-c","sleep 6; echo done"],"nodeLabels":{"pool":"c"},"retries":1}"#)
        let onC = sleepers + [retried]
        let list = onC.map { "'\($0)'" }.joined(separator: ", ")
        try Self.waitUntil("the three runs to start on c") {
            try Self.rows(url, "SELECT count(*) FROM events WHERE kind = 'worker.started' AND runid IN (\(list))") == [["3"]]
        }
        #expect(try Self.rows(url, "SELECT DISTINCT node FROM run_queue WHERE runid IN (\(list))") == [["c"]])
        kill(c.process.processIdentifier, SIGKILL)
        c.process.waitUntilExit()

        try Self.waitUntil("a to reap c's runs after its lease") {
            try Self.rows(url, "SELECT count(*) FROM run_queue WHERE runid IN (\(list)) AND state = 'abandoned'") == [["3"]]
        }
        let abandoned = try Self.rows(url, """
            SELECT runid, detail::jsonb ->> 'node', detail::jsonb ->> 'markedByNode', detail::jsonb ->> 'reason' FROM events
            WHERE kind = 'run.abandoned' ORDER BY runid
            """)
        #expect(abandoned.map { $0[0] } == onC.sorted() && abandoned.allSatisfy { $0[1] == "c" && $0[2] == "a" && $0[3] == "lease-expired" },
                "\(abandoned)")
        let attempts = try Self.rows(url, "SELECT runid, attempt, state FROM run_queue WHERE retryof = '\(retried)'")
        try #require(attempts.count == 1, "one new attempt: \(attempts)")
        let second = attempts[0][0]
        #expect(attempts[0][1] == "2" && attempts[0][2] == "queued", "the retry waits for a node with pool=c: \(attempts)")
        #expect(try Self.rows(url, "SELECT count(*) FROM events WHERE kind = 'run.retried' AND runid = '\(retried)'") == [["1"]])

        // Any node says what happened, and where the retry went.
        let original = try a.client.request("GET", "/v1/runs/\(retried)", token: token).json()
        #expect(original["state"] as? String == "abandoned" && original["retriedBy"] as? String == second && original["report"] is NSNull, "\(original)")
        let lost = try a.client.request("GET", "/v1/runs/\(sleepers[0])/wait", token: token)
        #expect(lost.status == 409 && lost.text.contains("node c"), "\(lost.text)")
        #expect(try lost.error().code == "not-waitable")

        // Another node that carries pool=c runs the new attempt, once.
        let d = try Self.node("d", environment, labels: "pool=c")
        let waited = try d.client.request("GET", "/v1/runs/\(second)/wait", token: token)
        #expect(waited.status == 200, "\(waited.text)")
        let answer = try waited.json()
        let report = answer["report"] as? [String: Any]
        #expect(answer["node"] as? String == "d" && answer["attempt"] as? Int == 2 && answer["retryOf"] as? String == retried)
        #expect(report?["outcome"] as? String == "exited" && report?["stdout"] as? String == "done\n", "\(answer)")

        // Nothing duplicated: one run.created per run id, run.finished only for the retry, run.abandoned for c's three.
        let perRun = try Self.rows(url, """
            SELECT runid, count(*) FILTER (WHERE kind = 'run.created'), count(*) FILTER (WHERE kind = 'run.finished'),
                   count(*) FILTER (WHERE kind = 'run.abandoned') FROM events WHERE runid IS NOT NULL GROUP BY runid ORDER BY runid
            """)
        #expect(perRun.count == 4, "\(perRun)")
        for row in perRun {
            let expected = row[0] == second ? ["1", "1", "0"] : ["1", "0", "1"]
            #expect(Array(row[1...]) == expected, "\(row)")
        }
        #expect(try Self.rows(url, "SELECT count(*) FROM run_queue") == [["4"]])
        let cliWait = try ServerHarness.exec(ServerHarness.stockade, ["run", "--json", "--", "/bin/true"],
                                             environment: ["STOCKADE_HOST": "unix://\(a.socketPath)", "STOCKADE_TOKEN": token])
        #expect(cliWait.status == 0, "an unlabelled run through the CLI after the reaping: \(cliWait.stderr)")
        let verified = try ServerHarness.exec(ServerHarness.stockade, ["audit", "verify", "--store", text])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(a.terminate() == 0 && d.terminate() == 0)
        #expect(d.log.contains("node.left"), "\(d.log)")
    }

    @Test("SIGTERM on a node: it stops claiming, finishes its own run, leaves; the run still queued stays queued and another node runs it")
    func drainLeavesQueuedRuns() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let environment = ["STOCKADE_STORE": PostgresTestServer.connectableText(url)]
        let a = try Self.node("a", environment, labels: "pool=p", maxRunning: 1)
        let token = try a.token("engine", scopes: "run:read,run:write")
        let first = try Self.submit(a, token: token, #"{"command":["/bin/sh","-c","sleep 2; echo first"],"nodeLabels":{"pool":"p"}}"#)
        let second = try Self.submit(a, token: token, #"{"command":["/bin/echo","second"],"nodeLabels":{"pool":"p"}}"#)
        try Self.waitUntil("a to start the first run") {
            try Self.rows(url, "SELECT count(*) FROM events WHERE kind = 'worker.started' AND runid = '\(first)'") == [["1"]]
        }
        #expect(try Self.rows(url, "SELECT state FROM run_queue WHERE runid = '\(second)'") == [["queued"]], "capacity 1: the second waits")
        #expect(a.terminate(within: 60) == 0, "\(a.log)")
        #expect(try Self.rows(url, "SELECT state, report::jsonb ->> 'stdout' FROM run_queue WHERE runid = '\(first)'") == [["finished", "first\n"]])
        #expect(try Self.rows(url, "SELECT state FROM run_queue WHERE runid = '\(second)'") == [["queued"]], "left for the other nodes")
        #expect(try Self.rows(url, "SELECT count(*) FROM events WHERE runid = '\(second)'") == [["0"]])
        #expect(try Self.rows(url, "SELECT count(*) FROM nodes") == [["0"]] && a.log.contains("node.left"), "\(a.log)")

        let b = try Self.node("b", environment, labels: "pool=p")
        let waited = try b.client.request("GET", "/v1/runs/\(second)/wait", token: token)
        #expect(try waited.json()["node"] as? String == "b", "\(waited.text)")
        #expect(try (waited.json()["report"] as? [String: Any])?["stdout"] as? String == "second\n", "\(waited.text)")
        #expect(b.terminate() == 0)
    }

    /// Pids of processes whose command line is exactly `argv`.
    static func processes(_ argv: [String]) -> [Int32] {
        let wanted = argv.joined(separator: "\0") + "\0"
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
                  String(decoding: data, as: UTF8.self) == wanted else { return nil }
            return pid
        }
    }

    @Test("fencing: a node whose heartbeats stop going through (the store cut off) cancels its running run within its lease, before another node may take it")
    func fencing() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let environment = ["STOCKADE_STORE": PostgresTestServer.connectableText(url)]
        let a = try Self.node("a", environment)
        let token = try a.token("engine", scopes: "run:read,run:write")
        let seconds = "31.\(getpid() % 1000)"
        let id = try Self.submit(a, token: token, #"{"command":["/bin/sleep","\#(seconds)"]}"#)
        // Positive control: the worker runs while the store answers.
        try Self.waitUntil("the worker to start") { !Self.processes(["/bin/sleep", seconds]).isEmpty }

        let admin = try PostgresTestServer.adminURL()
        try PostgresTestServer.execute(admin, "ALTER DATABASE \(url.database) ALLOW_CONNECTIONS false")
        try PostgresTestServer.execute(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(url.database)'")
        defer { _ = try? PostgresTestServer.execute(admin, "ALTER DATABASE \(url.database) ALLOW_CONNECTIONS true") }
        // Lease 2 s: given up after two thirds of it without a heartbeat (plus a heartbeat interval).
        try Self.waitUntil("the node to give up its run", seconds: 20) { Self.processes(["/bin/sleep", seconds]).isEmpty }
        #expect(a.log.contains("node.lease-lost") && a.log.contains(id), "\(a.log)")
        kill(a.process.processIdentifier, SIGKILL)
    }

    @Test("--node needs a PostgreSQL store; its companions need --node; a cancelled queued run never starts, and any node cancels a run another node holds")
    func flagsAndCancel() throws {
        let refused = try ServerHarness(start: false)
        let sqlite = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", [
            "--node", "a", "--listen", "unix://\(refused.socketPath)", "--state-dir", refused.stateDirectory,
        ])
        #expect(sqlite.status == 2 && sqlite.stderr.contains("--node a") && sqlite.stderr.contains("postgres"), "\(sqlite.stderr)")
        for arguments in [["--labels", "a=b"], ["--capacity", "1"], ["--lease", "5s"]] {
            let alone = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", arguments + ["--listen", "unix://\(refused.socketPath)"])
            #expect(alone.status == 2 && alone.stderr.contains(arguments[0]) && alone.stderr.contains("--node"), "\(alone.stderr)")
        }
        let badLabels = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", ["--node", "a", "--labels", "gpu"])
        #expect(badLabels.status == 2 && badLabels.stderr.contains("--labels"), "\(badLabels.stderr)")
        // A store across the network whose certificate is not checked is refused before anything is
        // contacted (192.0.2.1 is a documentation address: nothing is sent to it).
        for mode in ["disable", "prefer", "require"] {
            let unchecked = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", [
                "--node", "a", "--store", "postgres://stockade@192.0.2.1:5432/queue?sslmode=\(mode)", "--listen", "unix://\(refused.socketPath)",
                "--state-dir", refused.stateDirectory,
            ])
            #expect(unchecked.status == 2 && unchecked.stderr.contains("verify-full"), "sslmode=\(mode): \(unchecked.stderr)")
        }

        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let environment = ["STOCKADE_STORE": PostgresTestServer.connectableText(url)]
        let a = try Self.node("a", environment, labels: "pool=a")
        let token = try a.token("engine", scopes: "run:read,run:write")
        // A second live process under a's name is refused.
        let twin = try ServerHarness(start: false)
        let second = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", [
            "--node", "a", "--store", environment["STOCKADE_STORE"]!, "--listen", "unix://\(twin.socketPath)", "--state-dir", twin.stateDirectory,
        ], environment: ["STOCKADE_HOST_ID": "host-twin"])
        #expect(second.status == 1 && second.stderr.contains("host-a") && second.stderr.contains("lease"), "\(second.stderr)")

        // No node carries pool=none: it stays queued until cancelled, and never starts.
        let waiting = try Self.submit(a, token: token, #"{"command":["/bin/true"],"nodeLabels":{"pool":"none"}}"#)
        let cancelled = try a.client.request("POST", "/v1/runs/\(waiting)/cancel", token: token)
        #expect(cancelled.status == 202, "\(cancelled.text)")
        #expect(try cancelled.json()["state"] as? String == "cancelled")
        #expect(try a.client.request("GET", "/v1/runs/\(waiting)", token: token).json()["state"] as? String == "cancelled")
        let gone = try a.client.request("GET", "/v1/runs/\(waiting)/wait", token: token)
        #expect(gone.status == 409)
        #expect(try gone.error().code == "not-waitable")
        #expect(try Self.rows(url, "SELECT count(*) FROM events WHERE runid = '\(waiting)'") == [["0"]], "a cancelled queued run never started")

        // A run held by a, cancelled through b.
        let b = try Self.node("b", environment, labels: "pool=b")
        let long = try Self.submit(b, token: token, #"{"command":["/bin/sleep","30"],"nodeLabels":{"pool":"a"}}"#)
        try Self.waitUntil("a to start the run") {
            try Self.rows(url, "SELECT count(*) FROM events WHERE kind = 'worker.started' AND runid = '\(long)'") == [["1"]]
        }
        let asked = try b.client.request("POST", "/v1/runs/\(long)/cancel", token: token)
        #expect(asked.status == 202, "\(asked.text)")
        #expect(try asked.json()["node"] as? String == "a")
        let ended = try b.client.request("GET", "/v1/runs/\(long)/wait", token: token)
        #expect(try (ended.json()["report"] as? [String: Any])?["outcome"] as? String == "cancelled", "\(ended.text)")
        #expect(a.terminate() == 0 && b.terminate() == 0)
    }
}
