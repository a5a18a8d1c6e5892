import Glibc
import StockadePolicy
import StockadeTestSupport
import Synchronization
import Testing
@testable import StockadeAudit
@testable import StockadeAuditPostgres

/// The run queue the `stockade serve --node` nodes share, on a real PostgreSQL server: claims under
/// contention, labels, capacity, leases judged on the server's clock, the reaper and its audit events,
/// retries, cancellation. Leases are 1 s here; every wait polls with a bound of a minute.
@Suite("PostgreSQL run queue: claims, leases, the reaper",
       .disabled(if: PostgresTestServer.unavailableReason != nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresRunQueueTests {
    private func open(_ url: PostgresStoreURL, host: String = "host-a", maxConnections: Int = 4) throws -> PostgresRunQueue {
        PostgresRunQueue(store: try PostgresAuditStore(url: url, environment: [:], supervisorPid: getpid(),
                                                       supervisorStart: ProcessIdentity.currentStartTime, hostId: host,
                                                       maxConnections: maxConnections))
    }

    private func node(_ name: String, labels: [String: String] = [:], capacity: Int = 1000, lease: Int = 30) -> QueueNode {
        QueueNode(name: name, labels: labels, capacity: capacity, leaseSeconds: lease, hostId: "host-\(name)")
    }

    private func submit(_ queue: PostgresRunQueue, _ runId: String, labels: [String: String] = [:], retries: Int = 0) throws(AuditError) {
        try queue.enqueue(QueueSubmission(runId: runId, principal: "engine", request: #"{"command":["/bin/true"]}"#,
                                          requiredLabels: labels, retries: retries, submittedOn: "a"))
    }

    private static func runId(_ i: Int) -> String { "run-" + String(1_000_000 + i).dropFirst() }

    private func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        try PostgresTestServer.waitUntil(what, condition)
    }

    @Test("6 claimers on 3 nodes, each with its own connections, claim 300 runs at once: every run claimed exactly once",
          .timeLimit(.minutes(3)))
    func concurrentClaimsNeverOverlap() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let setup = try open(url)
        for i in 0..<300 { try submit(setup, Self.runId(i)) }
        let leases = try ["a", "b", "c"].map { try setup.register(node($0)) }
        let claimed = ClaimLog()
        let failures = FailureLog()
        let claimers = (0..<6).map { i in
            TestThread {
                do {
                    let queue = try open(url, maxConnections: 1)
                    let lease = leases[i % 3]
                    while true {
                        let got = try queue.claim(lease, limit: 3)
                        if got.isEmpty { return }
                        claimed.add(got.map { ($0.runId, lease.name, $0.node) })
                    }
                } catch {
                    failures.add("claimer \(i): \(error)")
                }
            }
        }
        claimers.forEach { $0.start() }
        claimers.forEach { $0.join() }
        #expect(failures.all == [])
        let all = claimed.all
        #expect(all.count == 300, "claims: \(all.count)")
        #expect(Set(all.map(\.runId)) == Set((0..<300).map(Self.runId)), "every run claimed")
        #expect(all.allSatisfy { $0.claimer == $0.recorded }, "the row names the node that claimed it")
        let rows = try PostgresTestServer.execute(url, "SELECT node, count(*) FROM run_queue WHERE state = 'claimed' GROUP BY node ORDER BY node")
        #expect(rows.map { $0[1] ?? "" }.compactMap(Int.init).reduce(0, +) == 300)
        #expect(try setup.counts() == QueueCounts(queued: 0, claimed: Dictionary(all.map { ($0.claimer, 1) }, uniquingKeysWith: +)))
    }

    @Test("required labels select the nodes that may claim a run; a run no node satisfies stays queued", .timeLimit(.minutes(1)))
    func labelsSelectNodes() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let gpu = try queue.register(node("gpu", labels: ["gpu": "yes", "zone": "a"]))
        let plain = try queue.register(node("plain", labels: ["zone": "a"]))
        try submit(queue, "r1-gpu", labels: ["gpu": "yes"])
        try submit(queue, "r2-any")
        try submit(queue, "r3-zone-b", labels: ["zone": "b"])
        try submit(queue, "r4-gpu-zone-a", labels: ["gpu": "yes", "zone": "a"])
        try submit(queue, "r5-gpu-no", labels: ["gpu": "no"])
        #expect(try queue.claim(plain, limit: 10).map(\.runId) == ["r2-any"])
        #expect(try queue.claim(gpu, limit: 10).map(\.runId) == ["r1-gpu", "r4-gpu-zone-a"])
        #expect(try queue.claim(plain, limit: 10).isEmpty)
        #expect(try queue.run(id: "r3-zone-b")?.state == .queued)
        #expect(try queue.run(id: "r5-gpu-no")?.state == .queued)
        #expect(try queue.run(id: "r4-gpu-zone-a")?.requiredLabels == ["gpu": "yes", "zone": "a"])

        // Bad labels are refused naming the label.
        for bad in [["": "x"], ["k": "has space"], ["k=": "v"]] {
            #expect(throws: AuditError.self) { try submit(queue, "bad-\(bad.keys.first!)", labels: bad) }
        }
        do {
            try submit(queue, "bad", labels: ["zone": "a b"])
            Issue.record("a label value with a space was queued")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains("zone"), "\(error)")
        }
        #expect(try NodeLabels.parse("gpu=yes,zone=a") == ["gpu": "yes", "zone": "a"])
        #expect(try NodeLabels.parse("") == [:])
        for bad in ["gpu", "gpu=yes,gpu=no", "=v", "k=v w", "k=v,"] {
            #expect(throws: AuditError.self, "\(bad)") { try NodeLabels.parse(bad) }
        }
    }

    @Test("a node never holds more claimed runs than its capacity, whatever limit it asks for", .timeLimit(.minutes(1)))
    func capacityBoundsClaims() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let lease = try queue.register(node("small", capacity: 2))
        for i in 0..<5 { try submit(queue, Self.runId(i)) }
        let first = try queue.claim(lease, limit: 10)
        #expect(first.map(\.runId) == [Self.runId(0), Self.runId(1)])
        #expect(try queue.claim(lease, limit: 10).isEmpty, "full")
        try queue.finish(runId: Self.runId(0), lease: lease, report: #"{"outcome":"exited"}"#)
        #expect(try queue.claim(lease, limit: 10).map(\.runId) == [Self.runId(2)])
        let done = try #require(try queue.run(id: Self.runId(0)))
        #expect(done.state == .finished && done.report == #"{"outcome":"exited"}"# && done.node == "small" && done.finishedAt != nil)
        #expect(try queue.counts() == QueueCounts(queued: 2, claimed: ["small": 2]))
        // Finishing twice, or a run this node does not hold, is refused.
        #expect(throws: AuditError.self) { try queue.finish(runId: Self.runId(0), lease: lease, report: "{}") }
        #expect(throws: AuditError.self) { try queue.finish(runId: Self.runId(4), lease: lease, report: "{}") }
    }

    @Test("heartbeats keep a 1 s lease alive; once they stop, another node's reaper abandons its runs and the trail records it",
          .timeLimit(.minutes(2)))
    func expiredLeaseIsReaped() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let dying = try open(url, host: "host-a")
        let survivor = try open(url, host: "host-b")
        let a = try dying.register(node("a", lease: 1))
        let b = try survivor.register(node("b", lease: 30))
        try submit(dying, "started")
        try submit(dying, "not-started")
        // A node past its 1 s lease claims nothing: beat just before the claim, so a loaded machine's
        // slow opening, registering and submitting above cannot have let it run out.
        try dying.heartbeat(a)
        #expect(try dying.claim(a, limit: 2).map(\.runId) == ["started", "not-started"])
        // Only "started" got as far as run.created on node a; "not-started" died before.
        try dying.store.beginRun(runId: "started", profile: "default", profileDigest: "d", command: ["/bin/sleep", "30"], detail: .null)

        // Three lease lengths of heartbeats: the reaper finds nothing to take.
        for _ in 0..<6 {
            try dying.heartbeat(a)
            #expect(try survivor.reap(by: b, newRunId: { "never" }).isEmpty)
            usleep(500_000)
        }
        #expect(try survivor.run(id: "started")?.state == .claimed)

        var reaped: [QueueReaping] = []
        try waitUntil("node a's lease to expire and b's reaper to take its runs") {
            reaped += try survivor.reap(by: b, newRunId: { "never" })
            return reaped.count == 2
        }
        #expect(Set(reaped.map(\.runId)) == ["started", "not-started"])
        // A node stalled past its lease learns at its next heartbeat that the lease had run out (so it
        // gives up its runs); the lease is renewed, and the heartbeat after says it had not.
        #expect(try dying.heartbeat(a) == true, "the lapse is reported")
        #expect(try dying.heartbeat(a) == false)
        #expect(reaped.allSatisfy { $0.node == "a" && $0.reason == "lease-expired" && $0.attempt == 1 })
        #expect(reaped.first { $0.runId == "started" }?.action == .abandoned(audited: true))
        #expect(reaped.first { $0.runId == "not-started" }?.action == .abandoned(audited: false))
        for id in ["started", "not-started"] {
            let row = try #require(try survivor.run(id: id))
            #expect(row.state == .abandoned && row.endReason == "lease-expired" && row.node == "a" && row.finishedAt != nil && row.retriedBy == nil)
        }
        #expect(try survivor.reap(by: b, newRunId: { "never" }).isEmpty, "taken once")

        let store = survivor.store
        #expect(try store.allRuns().map { "\($0.runId) \($0.state)" } == ["started abandoned"])
        let abandoned = try store.allEvents(kind: "run.abandoned")
        #expect(abandoned.count == 1)
        let detail = try #require(abandoned.first?.detailValue?.object)
        #expect(abandoned.first?.runId == "started")
        #expect(detail["node"]?.string == "a" && detail["markedByNode"]?.string == "b" && detail["reason"]?.string == "lease-expired")
        #expect(detail["attempt"]?.exactInt64 == 1 && detail["retryRunId"] == .null && detail["supervisorPid"]?.exactInt64 == Int64(getpid()))
        #expect(try store.allEvents(kind: "run.retried").isEmpty)
        #expect(try store.allEvents(runId: nil).allSatisfy { $0.runId == "started" }, "nothing recorded for the run that never started")

        // The late node cannot record a report for a run it lost, in the queue or in the trail.
        #expect(throws: AuditError.self) { try dying.finish(runId: "started", lease: a, report: "{}") }
        #expect(throws: AuditError.self) {
            try dying.store.finishRun(runId: "started", outcome: "exited", exitStatus: 0, detail: .null)
        }
        expectIntact(try store.verifyChain(), events: 2)
    }

    @Test("retries: 1 gives exactly one new attempt, linked and audited; when that attempt's node dies too it is abandoned",
          .timeLimit(.minutes(2)))
    func retriesAreBounded() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let reaper = try queue.register(node("reaper", labels: ["role": "reaper"], lease: 60))
        try submit(queue, "first", labels: ["role": "worker"], retries: 1)
        var counter = 0
        let newId = { () -> String in counter += 1; return "attempt-\(counter + 1)" }

        let worker1 = try queue.register(node("w1", labels: ["role": "worker"], lease: 1))
        #expect(try queue.claim(worker1, limit: 5).map(\.runId) == ["first"])
        try queue.store.beginRun(runId: "first", profile: "default", profileDigest: "d", command: ["/bin/true"], detail: .null)
        var reaped: [QueueReaping] = []
        try waitUntil("w1's lease to expire") {
            reaped += try queue.reap(by: reaper, newRunId: newId)
            return !reaped.isEmpty
        }
        #expect(reaped == [QueueReaping(runId: "first", node: "w1", reason: "lease-expired", attempt: 1,
                                        action: .retried(runId: "attempt-2", attempt: 2, audited: true))])
        let second = try #require(try queue.run(id: "attempt-2"))
        #expect(second.state == .queued && second.attempt == 2 && second.retryOf == "first" && second.retries == 1
                && second.requiredLabels == ["role": "worker"] && second.request == #"{"command":["/bin/true"]}"# && second.principal == "engine")
        #expect(try queue.run(id: "first")?.retriedBy == "attempt-2")
        #expect(try queue.claim(reaper, limit: 5).isEmpty, "the retry keeps the labels it asked for")

        let worker2 = try queue.register(node("w2", labels: ["role": "worker"], lease: 1))
        #expect(try queue.claim(worker2, limit: 5).map(\.runId) == ["attempt-2"])
        reaped = []
        try waitUntil("w2's lease to expire") {
            reaped += try queue.reap(by: reaper, newRunId: newId)
            return !reaped.isEmpty
        }
        // attempt-2 never reached run.created: abandoned in the queue only, and no third attempt.
        #expect(reaped == [QueueReaping(runId: "attempt-2", node: "w2", reason: "lease-expired", attempt: 2, action: .abandoned(audited: false))])
        #expect(counter == 1)
        #expect(try queue.counts().queued == 0)

        let store = queue.store
        let retried = try store.allEvents(kind: "run.retried")
        #expect(retried.count == 1 && retried.first?.runId == "first")
        let detail = try #require(retried.first?.detailValue?.object)
        #expect(detail["retryRunId"]?.string == "attempt-2" && detail["attempt"]?.exactInt64 == 2 && detail["retries"]?.exactInt64 == 1
                && detail["node"]?.string == "w1" && detail["markedByNode"]?.string == "reaper")
        #expect(try store.allEvents(kind: "run.abandoned").map(\.runId) == ["first"])
        expectIntact(try store.verifyChain(), events: 3)
    }

    @Test("a run whose cancel was asked for is never retried, whatever its retries: its node dies, it is abandoned", .timeLimit(.minutes(2)))
    func cancelledNotRetried() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let reaper = try queue.register(node("reaper", labels: ["role": "reaper"], lease: 60))
        try submit(queue, "stop-me", labels: ["role": "worker"], retries: 3)
        let worker = try queue.register(node("w", labels: ["role": "worker"], lease: 1))
        #expect(try queue.claim(worker, limit: 1).map(\.runId) == ["stop-me"])
        try queue.store.beginRun(runId: "stop-me", profile: "default", profileDigest: "d", command: ["/bin/true"], detail: .null)
        _ = try queue.requestCancel(runId: "stop-me")
        var reaped: [QueueReaping] = []
        try waitUntil("w's lease to expire") {
            reaped += try queue.reap(by: reaper, newRunId: { "never" })
            return !reaped.isEmpty
        }
        #expect(reaped == [QueueReaping(runId: "stop-me", node: "w", reason: "lease-expired", attempt: 1, action: .abandoned(audited: true))])
        #expect(try queue.run(id: "never") == nil)
        #expect(try queue.counts().queued == 0)
    }

    @Test("a retry of a run that died before run.created is an event of no run naming both ids", .timeLimit(.minutes(2)))
    func retryOfUnstartedRun() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let reaper = try queue.register(node("reaper", labels: ["role": "reaper"], lease: 60))
        try submit(queue, "early", labels: ["role": "worker"], retries: 3)
        let worker = try queue.register(node("w", labels: ["role": "worker"], lease: 1))
        #expect(try queue.claim(worker, limit: 1).count == 1)
        var reaped: [QueueReaping] = []
        try waitUntil("w's lease to expire") {
            reaped += try queue.reap(by: reaper, newRunId: { "early-2" })
            return !reaped.isEmpty
        }
        #expect(reaped.map(\.action) == [.retried(runId: "early-2", attempt: 2, audited: false)])
        let events = try queue.store.allEvents()
        #expect(events.map(\.kind) == ["run.retried"] && events.first?.runId == nil)
        #expect(events.first?.detailValue?.object?["runId"]?.string == "early")
    }

    @Test("cancel: a queued run at once and never claimed; a claimed one flagged for its node; an ended one refused", .timeLimit(.minutes(1)))
    func cancel() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let lease = try queue.register(node("a"))
        try submit(queue, "q1")
        #expect(try queue.requestCancel(runId: "q1") == .cancelled)
        let cancelled = try #require(try queue.run(id: "q1"))
        #expect(cancelled.state == .cancelled && cancelled.endReason == "cancelled" && cancelled.finishedAt != nil && cancelled.node == nil)
        #expect(try queue.claim(lease, limit: 5).isEmpty)
        #expect(try queue.requestCancel(runId: "q1") == .ended(.cancelled))

        try submit(queue, "c1")
        #expect(try queue.claim(lease, limit: 5).map(\.runId) == ["c1"])
        #expect(try queue.cancelRequests(lease).isEmpty)
        #expect(try queue.requestCancel(runId: "c1") == .requested(node: "a"))
        #expect(try queue.cancelRequests(lease) == ["c1"])
        #expect(try queue.run(id: "c1")?.state == .claimed)
        try queue.finish(runId: "c1", lease: lease, report: #"{"outcome":"cancelled"}"#)
        #expect(try queue.cancelRequests(lease).isEmpty)
        #expect(try queue.requestCancel(runId: "c1") == .ended(.finished))
        do {
            _ = try queue.requestCancel(runId: "nope")
            Issue.record("an unknown run was cancelled")
        } catch {
            #expect(error.code == .unknownRun)
        }
    }

    @Test("a live node's name is refused; after its lease the name is taken over, the old lease claims nothing and its runs are reaped as node-restarted",
          .timeLimit(.minutes(2)))
    func nodeRestart() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let old = try queue.register(node("a", lease: 1))
        do {
            _ = try queue.register(node("a", lease: 1))
            Issue.record("two live registrations of one name")
        } catch {
            #expect(error.code == .nodeInUse && error.message.contains("host-a"), "\(error)")
        }
        try submit(queue, "held")
        #expect(try queue.claim(old, limit: 1).map(\.runId) == ["held"])
        var new: NodeLease?
        try waitUntil("the old lease to run out") {
            new = try? queue.register(node("a", lease: 30))
            return new != nil
        }
        let lease = try #require(new)
        #expect(lease.incarnation != old.incarnation)
        #expect(throws: AuditError.self) { try queue.heartbeat(old) }
        try submit(queue, "later")
        #expect(try queue.claim(old, limit: 5).isEmpty, "a replaced lease claims nothing")
        let reaped = try queue.reap(by: lease, newRunId: { "never" })
        #expect(reaped.map { "\($0.runId) \($0.reason)" } == ["held node-restarted"])
        #expect(try queue.claim(lease, limit: 5).map(\.runId) == ["later"])
        try queue.leave(lease)
        let left = try open(url)
        let other = try left.register(node("b"))
        #expect(try left.reap(by: other, newRunId: { "never" }).map { "\($0.runId) \($0.reason)" } == ["later node-left"])
    }

    @Test("a listener on another connection is notified of each run queued, and of each retry the reaper queues; cancelling it ends it",
          .timeLimit(.minutes(2)))
    func notifications() async throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let listener = try open(url, host: "host-l")
        let queue = try open(url, host: "host-q")
        let heard = Mutex(0)
        let listening = Task { try await listener.listenForQueuedRuns { heard.withLock { $0 += 1 } } }
        // LISTEN takes effect once its connection is up: queue until the first is heard.
        var sent = 0
        try await waitUntilAsync("the listener to hear a run queued on another connection") {
            sent += 1
            try submit(queue, "n\(sent)")
            return heard.withLock { $0 } > 0
        }
        // The runs queued before LISTEN took effect may still be announced: let those arrive first.
        var settled = heard.withLock { $0 }
        while true {
            try await Task.sleep(for: .milliseconds(500))
            let now = heard.withLock { $0 }
            if now == settled { break }
            settled = now
        }
        let before = settled
        try submit(queue, "after", retries: 1)
        try await waitUntilAsync("one more notification") { heard.withLock { $0 } == before + 1 }

        let reaper = try queue.register(node("reaper", lease: 60))
        let worker = try queue.register(node("w", labels: ["only": "w"], lease: 1))
        _ = try queue.claim(worker, limit: 100)
        let claimed = try queue.runs(after: nil, limit: 100, state: .claimed).map(\.runId)
        #expect(claimed.count == sent + 1)
        try await waitUntilAsync("w's lease to expire and the retry to be queued") {
            _ = try queue.reap(by: reaper, newRunId: { "after-2" })
            return try queue.run(id: "after-2") != nil
        }
        try await waitUntilAsync("the retry's notification") { heard.withLock { $0 } == before + 2 }
        listening.cancel()
        try await listening.value
    }

    private func waitUntilAsync(_ what: String, _ condition: () throws -> Bool) async throws {
        for _ in 0..<600 {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw PostgresTestServer.TestServerError(description: "still waiting after a minute for \(what)")
    }

    @Test("a run the trail shows finished is closed in the queue without a report and never run again", .timeLimit(.minutes(2)))
    func finishedInTrailNotRetried() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let queue = try open(url)
        let reaper = try queue.register(node("reaper", lease: 60))
        let worker = try queue.register(node("w", labels: ["role": "worker"], lease: 1))
        try submit(queue, "done", labels: ["role": "worker"], retries: 2)
        #expect(try queue.claim(worker, limit: 1).count == 1)
        try queue.store.beginRun(runId: "done", profile: "default", profileDigest: "d", command: ["/bin/true"], detail: .null)
        try queue.store.finishRun(runId: "done", outcome: "exited", exitStatus: 0, detail: .null)
        var reaped: [QueueReaping] = []
        try waitUntil("w's lease to expire") {
            reaped += try queue.reap(by: reaper, newRunId: { "never" })
            return !reaped.isEmpty
        }
        #expect(reaped.map(\.action) == [.finishedWithoutReport])
        let row = try #require(try queue.run(id: "done"))
        #expect(row.state == .finished && row.report == nil && row.endReason == "finished-without-report" && row.retriedBy == nil)
        #expect(try queue.store.allEvents().map(\.kind) == ["run.created", "run.finished"])
    }
}

/// Claims collected from the claimer threads.
private final class ClaimLog: Sendable {
    struct Claim: Sendable {
        let runId: String
        let claimer: String
        let recorded: String?
    }

    private let claims = Mutex<[Claim]>([])
    func add(_ batch: [(String, String, String?)]) { claims.withLock { $0 += batch.map { Claim(runId: $0.0, claimer: $0.1, recorded: $0.2) } } }
    var all: [Claim] { claims.withLock { $0 } }
}
