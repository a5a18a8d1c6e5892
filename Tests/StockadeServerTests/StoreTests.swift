import Foundation
import Glibc
import StockadeAudit
import StockadeTestSupport
import Synchronization
import Testing

/// `stockade serve --store URL` on a real PostgreSQL (a scratch server the tests start, or
/// `$STOCKADE_TEST_POSTGRES_URL`): two services with state directories of their own share its trail,
/// tokens and event stream; a store that stops answering fails runs closed, and they run again when
/// it is back.
@Suite("stockade serve --store: a shared PostgreSQL store", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .enabled(if: PostgresTestServer.unavailableReason == nil, "\(PostgresTestServer.unavailableReason ?? "")"), .timeLimit(.minutes(4)))
struct StoreTests {
    /// A fresh database, its URL as a child process can use it, and the environment that selects it.
    static func database() throws -> (url: PostgresStoreURL, text: String, environment: [String: String]) {
        let url = try PostgresTestServer.createDatabase()
        let text = PostgresTestServer.connectableText(url)
        return (url, text, ["STOCKADE_STORE": text])
    }

    static func report(_ server: ServerHarness, _ id: String, token: String) throws -> [String: Any] {
        let answer = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        try #require(answer.status == 200, "wait \(id): \(answer.status) \(answer.text)")
        return try #require(answer.json()["report"] as? [String: Any], "wait \(id): \(answer.text)")
    }

    static func submit(_ server: ServerHarness, token: String, _ json: String) throws -> String {
        let answer = try server.client.request("POST", "/v1/runs", token: token, json: json)
        try #require(answer.status == 202, "submit: \(answer.status) \(answer.text)")
        return try #require(answer.json()["id"] as? String)
    }

    @Test("two services, each with its own state directory, on one store: a token made once works on both, each sees the other's runs in /v1/events, a revocation holds on both, and the chain verifies")
    func twoServicesOneStore() throws {
        let (url, text, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let a = try ServerHarness(environment: environment)
        let b = try ServerHarness(environment: environment)
        #expect(a.log.contains("store=\(url.description)"), "\(a.log)")
        #expect(!a.stateDirectory.isEmpty && a.stateDirectory != b.stateDirectory)
        // Made through a's state directory, stored in the shared store: b knows it too.
        let token = try a.token("engine", scopes: "run:read,run:write,audit:read")
        let id = try Self.submit(a, token: token, #"{"command":["/bin/echo","from a"]}"#)
        let report = try Self.report(a, id, token: token)
        #expect(report["outcome"] as? String == "exited" && report["stdout"] as? String == "from a\n", "\(report)")

        // b's event stream carries a's run, by seq, from the shared trail.
        let stream = try EventStreamReader(client: b.client, path: "/v1/events", token: token)
        var kinds: [String] = []
        var lastSeq = 0
        while let event = try stream.next() {
            guard let data = event.data.data(using: .utf8), let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { continue }
            let seq = Int(event.id ?? "") ?? 0
            #expect(seq > lastSeq, "seq must increase: \(seq) after \(lastSeq)")
            lastSeq = seq
            if object["runId"] as? String == id, let kind = object["kind"] as? String { kinds.append(kind) }
            if kinds.last == "run.finished" { break }
        }
        #expect(kinds.first == "run.created" && kinds.contains("worker.started") && kinds.last == "run.finished", "b saw \(kinds)")
        #expect(stream.status == 200)

        // A run through b lands in the same chain; nothing of either run is in a state directory's SQLite file.
        let second = try Self.submit(b, token: token, #"{"command":["/bin/true"]}"#)
        #expect(try Self.report(b, second, token: token)["outcome"] as? String == "exited")
        for server in [a, b] {
            #expect(!FileManager.default.fileExists(atPath: server.stateDirectory + "/audit.sqlite"), "the SQLite default was used beside --store")
        }
        let rows = try PostgresTestServer.execute(url, "SELECT runid FROM runs ORDER BY createdat")
        #expect(rows.map { $0[0] } == [id, second], "\(rows)")

        // Revoked through b's state directory: a refuses it from the next request on.
        let revoked = try b.stockade(["token", "revoke", "engine"])
        #expect(revoked.status == 0, "\(revoked.stderr)")
        #expect(try a.client.request("GET", "/v1/runs/\(id)", token: token).status == 401)
        #expect(try b.client.request("GET", "/v1/runs/\(id)", token: token).status == 401)

        let verified = try ServerHarness.exec(ServerHarness.stockade, ["audit", "verify", "--store", text])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        let events = try PostgresTestServer.execute(url, "SELECT kind FROM events WHERE kind LIKE 'token.%' ORDER BY seq").map { $0[0] ?? "" }
        #expect(events == ["token.created", "token.revoked"], "\(events)")
        #expect(a.terminate() == 0 && b.terminate() == 0)
    }

    @Test("one Idempotency-Key sent at once to two services on one store starts one run: both answer its id, the store holds one run")
    func idempotencyAcrossServices() throws {
        let (url, _, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let a = try ServerHarness(environment: environment)
        let b = try ServerHarness(environment: environment)
        let token = try a.token("engine", scopes: "run:read,run:write")
        for round in 0..<5 {
            let body = #"{"command":["/bin/echo","round \#(round)"]}"#
            let headers = ["Idempotency-Key": "retry-\(round)"]
            let answers = Mutex<[Int: HTTPClient.Response]>([:])
            let clients = [a.client, b.client]
            DispatchQueue.concurrentPerform(iterations: 4) { i in
                if let answer = try? clients[i % 2].request("POST", "/v1/runs", token: token, headers: headers, json: body) {
                    answers.withLock { $0[i] = answer }
                }
            }
            let got = answers.withLock { $0 }
            #expect(got.count == 4 && got.values.allSatisfy { $0.status == 202 }, "round \(round): \(got.mapValues(\.text))")
            let ids = Set(got.values.compactMap { try? $0.json()["id"] as? String })
            #expect(ids.count == 1, "round \(round): one key started \(ids.count) runs: \(ids)")
            let replayed = got.values.filter { (try? $0.json()["replayed"] as? Bool) == true }.count
            #expect(replayed == 3, "round \(round): \(replayed) answers were replays, not 3")
        }
        try PostgresTestServer.waitUntil("the five runs to finish") {
            try PostgresTestServer.execute(url, "SELECT count(*) FROM runs WHERE state = 'finished'").first?[0] == "5"
        }
        let created = try PostgresTestServer.execute(url, "SELECT count(*) FROM events WHERE kind = 'run.created'")
        #expect(created.first?[0] == "5", "\(created)")
        #expect(a.terminate() == 0 && b.terminate() == 0)
    }

    /// Cuts the store off (no new connection, every open one closed) and returns the call that brings it back.
    static func cutOff(_ url: PostgresStoreURL) throws -> () throws -> Void {
        let admin = try PostgresTestServer.adminURL()
        try PostgresTestServer.execute(admin, "ALTER DATABASE \(url.database) ALLOW_CONNECTIONS false")
        try PostgresTestServer.execute(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(url.database)'")
        return { try PostgresTestServer.execute(admin, "ALTER DATABASE \(url.database) ALLOW_CONNECTIONS true") }
    }

    @Test("the service's store stops taking connections: a submission is refused (500 with a reference to the log entry naming the store, nothing recorded as started) and its worker never runs; once the store is back runs go on, and the chain verifies")
    func storeGoesAwayAndComesBack() throws {
        let (url, text, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let server = try ServerHarness(environment: environment)
        let token = try server.token("engine", scopes: "run:read,run:write")
        let volume = server.directory + "/vol"
        try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
        chmod(volume, 0o777)
        func touching(_ name: String) -> String {
            #"{"command":["/bin/sh","-c","echo ran > /w/\#(name)"],"volumes":["\#(volume):/w:rw"]}"#
        }
        let before = try Self.submit(server, token: token, touching("before"))
        #expect(try Self.report(server, before, token: token)["outcome"] as? String == "exited")
        // Positive control: the probe leaves its mark when the store answers.
        #expect(FileManager.default.fileExists(atPath: volume + "/before"), "the control run did not write through its volume")

        let restore = try Self.cutOff(url)
        let refused = try server.client.request("POST", "/v1/runs", token: token, json: touching("during"))
        #expect(refused.status == 500, "\(refused.status) \(refused.text)")
        let (code, _) = try refused.error()
        #expect(["audit-unavailable", "token-store-unavailable"].contains(code), "\(refused.text)")
        // The answer names neither the store nor its error; the log does, under the answer's
        // reference (audit-unavailable) or as token-store.failed (answered before authentication).
        #expect(!refused.text.contains(url.description) && !refused.text.contains(url.database) && !refused.text.contains("reachable"),
                "the answer quotes the store or its error: \(refused.text)")
        if code == "audit-unavailable" {
            let reference = try #require(Self.reference(in: refused.text), "no reference in \(refused.text)")
            let entry = server.log.split(separator: "\n").first { $0.contains("api.failed") && $0.contains(reference) }
            // Which words depend on whether a pooled connection was cut or a new one refused by the server.
            #expect(entry.map { $0.contains("reachable") || $0.contains("accepting connections") } == true,
                    "no api.failed entry saying what went wrong under \(reference): \(server.log)")
        } else {
            #expect(server.log.contains("token-store.failed"), "\(server.log)")
        }
        usleep(500_000)
        #expect(!FileManager.default.fileExists(atPath: volume + "/during"), "a worker ran that the trail could not record")

        // Back: the pool reconnects and the next run is recorded and runs.
        try restore()
        var outcome = ""
        for attempt in 0..<40 {
            let answer = try server.client.request("POST", "/v1/runs", token: token, json: touching("after\(attempt)"))
            if answer.status == 202, let id = try answer.json()["id"] as? String {
                outcome = try Self.report(server, id, token: token)["outcome"] as? String ?? ""
                if outcome == "exited" { break }
            }
            usleep(250_000)
        }
        #expect(outcome == "exited", "runs did not recover once the store was back")
        let verified = try ServerHarness.exec(ServerHarness.stockade, ["audit", "verify", "--store", text])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(server.terminate() == 0)
    }

    @Test("a run whose end the store cannot record (its runs table moved away meanwhile) reports a setup error at stage audit: the answer says what could not be recorded and quotes neither the store nor its error, which the run's report.json on the host keeps")
    func auditFailureInAReportQuotesNothing() throws {
        let (url, _, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let server = try ServerHarness(environment: environment)
        let token = try server.token("engine", scopes: "run:read,run:write")
        let id = try Self.submit(server, token: token, #"{"command":["/bin/sh","-c","sleep 2"]}"#)
        // Its worker has started, and that is recorded: what remains to record is its end.
        try PostgresTestServer.waitUntil("the run's worker.started row") {
            try PostgresTestServer.execute(url, "SELECT count(*) FROM events WHERE runid = '\(id)' AND kind = 'worker.started'").first?[0] == "1"
        }
        try PostgresTestServer.execute(url, "ALTER TABLE runs RENAME TO runs_moved_by_test")
        var moved = true
        defer { if moved { _ = try? PostgresTestServer.execute(url, "ALTER TABLE runs_moved_by_test RENAME TO runs") } }
        let onDisk = server.stateDirectory + "/runs/\(id)/report.json"
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: onDisk) { usleep(20_000) }
        try PostgresTestServer.execute(url, "ALTER TABLE runs_moved_by_test RENAME TO runs")
        moved = false

        let report = try Self.report(server, id, token: token)
        let error = try #require(report["setupError"] as? [String: Any], "\(report)")
        #expect(error["stage"] as? String == "audit", "\(error)")
        let message = try #require(error["message"] as? String)
        #expect(message.hasPrefix("the run's outcome could not be recorded") && message.contains("report.json"), "\(message)")
        for quoted in [url.database, url.description, "runs_moved_by_test", "does not exist"] {
            #expect(!message.contains(quoted), "the answer quotes \(quoted): \(message)")
        }
        // Positive control: the host's copy has the store and its error.
        let kept = try String(contentsOfFile: onDisk, encoding: .utf8)
        #expect(kept.contains(url.database) && kept.contains("runs"), "\(kept)")
        #expect(server.terminate() == 0)
    }

    /// The 16 hex digits after "(reference " in an answer's message.
    static func reference(in message: String) -> String? {
        let words = message.split(separator: " ").map(String.init)
        guard let at = words.firstIndex(of: "(reference"), at + 1 < words.count else { return nil }
        let reference = String(words[at + 1].prefix(16))
        return reference.count == 16 && reference.allSatisfy(\.isHexDigit) ? reference : nil
    }

    @Test("a call the service fails on unexpectedly (the store's runs table gone) is a 500 internal that gives a reference and neither the store's URL nor its error; the log holds both under that reference")
    func internalFailureQuotesNothing() throws {
        let (url, _, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let server = try ServerHarness(environment: environment)
        let token = try server.token("reader", scopes: "run:read")
        let unknown = String(repeating: "0", count: 26)
        // Positive control: with the table in place the same call is an ordinary 404.
        let before = try server.client.request("GET", "/v1/runs/\(unknown)", token: token)
        #expect(before.status == 404, "\(before.status) \(before.text)")

        try PostgresTestServer.execute(url, "ALTER TABLE runs RENAME TO runs_moved_by_test")
        defer { _ = try? PostgresTestServer.execute(url, "ALTER TABLE runs_moved_by_test RENAME TO runs") }
        let failed = try server.client.request("GET", "/v1/runs/\(unknown)", token: token)
        #expect(failed.status == 500, "\(failed.status) \(failed.text)")
        #expect(try failed.error().code == "internal", "\(failed.text)")
        let object = try failed.json()["error"] as? [String: Any]
        let message = try #require(object?["message"] as? String, "\(failed.text)")
        #expect(!message.contains(url.description) && !message.contains(url.database) && !message.contains("runs"),
                "the answer quotes the store or its error: \(message)")
        let reference = try #require(Self.reference(in: message), "no reference in \(message)")
        let entry = try #require(server.log.split(separator: "\n").first { $0.contains("api.failed") && $0.contains(reference) },
                                 "no api.failed entry with \(reference) in the log: \(server.log)")
        #expect(entry.contains(url.database), "the log entry says what failed: \(entry)")
    }

    @Test("stockade batch on a PostgreSQL store that goes away mid-batch: the line run while it is away fails closed in setup (stage audit, naming the store) and never runs; the lines after it run once it is back")
    func batchStoreGoesAway() throws {
        let (url, text, environment) = try Self.database()
        defer { PostgresTestServer.dropDatabase(url) }
        let directory = "/tmp/stk-store-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory + "/vol", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        chmod(directory + "/vol", 0o777)
        let batch = Process()
        batch.executableURL = URL(fileURLWithPath: ServerHarness.stockade)
        batch.arguments = ["batch", "--state-dir", directory + "/state", "-"]
        batch.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let input = Pipe(), output = Pipe()
        batch.standardInput = input
        batch.standardOutput = output
        batch.standardError = FileHandle.nullDevice
        try batch.run()
        defer { if batch.isRunning { kill(batch.processIdentifier, SIGKILL); batch.waitUntilExit() } }
        var pending = Data()
        func line(_ id: String) throws -> [String: Any] {
            try input.fileHandleForWriting.write(contentsOf: Data((#"{"id":"\#(id)","command":["/bin/sh","-c","echo ran > /w/\#(id)"],"volumes":["\#(directory)/vol:/w:rw"]}"# + "\n").utf8))
            while true {
                if let newline = pending.firstIndex(of: 0x0A) {
                    let text = pending[pending.startIndex..<newline]
                    pending = Data(pending[(newline + 1)...])
                    return try #require(JSONSerialization.jsonObject(with: Data(text)) as? [String: Any])
                }
                let chunk = output.fileHandleForReading.availableData
                try #require(!chunk.isEmpty, "stockade batch ended early")
                pending += chunk
            }
        }
        #expect(try line("first")["outcome"] as? String == "exited")
        #expect(FileManager.default.fileExists(atPath: directory + "/vol/first"), "positive control: the first line's worker ran")
        let restore = try Self.cutOff(url)
        let during = try line("during")
        #expect(during["outcome"] as? String == "setup-failed", "\(during)")
        let setup = during["setupError"] as? [String: Any]
        #expect(setup?["stage"] as? String == "audit", "\(during)")
        let message = setup?["message"] as? String ?? ""
        #expect(message.contains("audit store") && message.contains(url.description), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/vol/during"), "a worker ran that the trail could not record")
        try restore()
        var after: [String: Any] = [:]
        for attempt in 0..<40 {
            after = try line("after\(attempt)")
            if after["outcome"] as? String == "exited" { break }
            usleep(250_000)
        }
        #expect(after["outcome"] as? String == "exited", "the batch did not recover once the store was back: \(after)")
        try input.fileHandleForWriting.close()
        batch.waitUntilExit()
        let verified = try ServerHarness.exec(ServerHarness.stockade, ["audit", "verify", "--store", text])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
    }

    @Test("--store names a bad URL, or carries a password, or an unreachable server: stockade serve refuses to start, exit 2, 2 or 1, naming it without its password")
    func badStore() throws {
        let server = try ServerHarness(start: false)
        let bad = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", ["--store", "postgres://u:hunter2@/db?sslmode=maybe",
                                                                                         "--listen", "unix://\(server.socketPath)"])
        #expect(bad.status == 2, "\(bad.stderr)")
        #expect(bad.stderr.contains("--store") && bad.stderr.contains("sslmode") && !bad.stderr.contains("hunter2"), "\(bad.stderr)")
        // A password on the command line is refused: every local user can read it in /proc/PID/cmdline.
        let visible = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", [
            "--store", "postgresql://stockade:hunter2@/nowhere?host=\(server.directory)&port=1", "--listen", "unix://\(server.socketPath)",
            "--state-dir", server.stateDirectory,
        ])
        #expect(visible.status == 2, "\(visible.stderr)")
        #expect(visible.stderr.contains("$STOCKADE_STORE") && visible.stderr.contains("cmdline") && !visible.stderr.contains("hunter2"), "\(visible.stderr)")
        let cli = try ServerHarness.exec(ServerHarness.stockade, ["audit", "runs", "--store", "postgres://stockade:hunter2@127.0.0.1:1/x"])
        #expect(cli.status == 2 && cli.stderr.contains("cmdline") && !cli.stderr.contains("hunter2"), "\(cli.stderr)")
        // The same URL in $STOCKADE_STORE is taken; the server is not there: exit 1, naming it without the password.
        let gone = try ServerHarness.exec(ServerHarness.binDirectory + "/stockade-server", [
            "--listen", "unix://\(server.socketPath)", "--state-dir", server.stateDirectory,
        ], environment: ["STOCKADE_STORE": "postgresql://stockade:hunter2@/nowhere?host=\(server.directory)&port=1"])
        #expect(gone.status == 1, "\(gone.stderr)")
        #expect(gone.stderr.contains("cannot open the audit store") && gone.stderr.contains("nowhere") && !gone.stderr.contains("hunter2"), "\(gone.stderr)")
    }
}
