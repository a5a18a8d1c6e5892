import Foundation
import Logging
import ServiceLifecycle
import StockadeAudit
import StockadeAuditPostgres
import StockadePolicy
import StockadeSupervisor
import Synchronization

/// `stockade serve --node NAME`: this service is one node of many that share a PostgreSQL store's run
/// queue (docs/CONTRACT.md, "The run queue").
public struct NodeOptions: Sendable, Equatable {
    public var name: String
    /// `--labels`: what runs may require of the node that runs them.
    public var labels: [String: String]
    /// `--capacity`: queued runs this node runs at once.
    public var capacity: Int
    /// `--lease`: seconds after its last heartbeat that another node may take its runs.
    public var leaseSeconds: Int

    public init(name: String, labels: [String: String], capacity: Int, leaseSeconds: Int) {
        self.name = name
        self.labels = labels
        self.capacity = capacity
        self.leaseSeconds = leaseSeconds
    }

    /// Heartbeats (and the reaper) run this often: three to a lease.
    var heartbeatMilliseconds: Int { max(100, leaseSeconds * 1000 / 3) }
}

/// This node's place in the shared queue: the queue, the node's registration, its options.
final class NodeQueue: Sendable {
    let queue: PostgresRunQueue
    let lease: NodeLease
    let options: NodeOptions
    var name: String { options.name }
    /// How often the claim loop looks for work and for cancellations.
    static let pollMilliseconds = 100

    /// Wakes the claim loop at once: a run was queued on any node (NOTIFY), or a run of this node ended.
    let wakeup = Wakeup()

    init(queue: PostgresRunQueue, lease: NodeLease, options: NodeOptions) {
        self.queue = queue
        self.lease = lease
        self.options = options
    }

    /// Registers the node on the store `audit` is opened on, which must be a PostgreSQL store.
    static func register(_ options: NodeOptions, audit: any AuditStore, store: StoreURL) throws(ServiceFailure) -> NodeQueue {
        guard let ledger = audit as? PostgresAuditStore else {
            throw ServiceFailure(description: "--node \(options.name): a node shares its run queue through a PostgreSQL store, and this service's store is \(store): pass --store postgres://… (or $STOCKADE_STORE), the same for every node")
        }
        let queue = PostgresRunQueue(store: ledger)
        do {
            let lease = try queue.register(QueueNode(name: options.name, labels: options.labels, capacity: options.capacity,
                                                     leaseSeconds: options.leaseSeconds, hostId: ledger.hostId))
            return NodeQueue(queue: queue, lease: lease, options: options)
        } catch {
            throw ServiceFailure(description: "--node \(options.name): \(error.message)")
        }
    }
}

/// The node's own loops: heartbeats (and after each, the reaper), claims queued runs while it has room
/// and is not draining, runs each through the local `RunService` under the queue's run id, records
/// each report in the queue, and passes on cancellations asked for through any node. Listed before
/// the drain among the services, so at shutdown it stops only after the drain has finished this
/// node's runs: it keeps heartbeating meanwhile, and then leaves the queue.
struct NodeWorker: Service {
    let node: NodeQueue
    let registry: RunRegistry
    let logger: Logger

    func run() async throws {
        logger.notice("node.joined", metadata: ["node": "\(node.name)", "labels": "\(node.options.labels)",
                                                "capacity": "\(node.options.capacity)", "lease": "\(node.options.leaseSeconds)s"])
        let healthy = HeartbeatState(lease: .seconds(node.options.leaseSeconds))
        // Two loops, so a slow claim or a run waiting for a local slot never delays a heartbeat.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isShuttingDownGracefully && !Task.isCancelled {
                    let (beaten, lapsed) = heartbeat()
                    healthy.record(beaten)
                    if beaten, healthy.mayReap { reap() }
                    // Fencing: once two thirds of the lease have passed without a heartbeat, another
                    // node may soon take this node's runs, so it stops them itself first; and at once
                    // when the store says the lease had run out (this process was stalled past it).
                    if healthy.isLost { await giveUpRuns(because: "no heartbeat for two thirds of the lease: the runs were cancelled before another node may take them") }
                    if lapsed { await giveUpRuns(because: "the lease had run out before this heartbeat (this process was stalled past it): another node may have taken the runs") }
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(node.options.heartbeatMilliseconds)) }
                }
            }
            group.addTask {
                // PostgreSQL's NOTIFY wakes the claim loop when any node queues a run; if the
                // connection breaks it is opened again a second later (the loop polls meanwhile).
                while !Task.isShuttingDownGracefully && !Task.isCancelled {
                    let wakeup = node.wakeup
                    do {
                        try await cancelWhenGracefulShutdown { try await node.queue.listenForQueuedRuns { wakeup.signal() } }
                    } catch {
                        if Task.isShuttingDownGracefully || Task.isCancelled { break }
                        logger.warning("node.listen-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
                    }
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
                }
            }
            group.addTask {
                while !Task.isShuttingDownGracefully && !Task.isCancelled {
                    if healthy.isCurrent, !(await registry.isDraining) { await claim() }
                    await passOnCancellations()
                    // Woken at once by a submission on any node (NOTIFY) or a freed slot; else polls.
                    await node.wakeup.wait(upTo: .milliseconds(NodeQueue.pollMilliseconds))
                }
            }
        }
        // The drain has run (it is shut down before this service): no run of this node is left.
        do {
            try node.queue.leave(node.lease)
            logger.notice("node.left", metadata: ["node": "\(node.name)"])
        } catch {
            logger.error("node.leave-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
        }
    }

    /// False when the heartbeat failed.
    /// Whether the heartbeat went through, and whether the lease had run out before it (this process
    /// was stalled, or the store unreachable, past it).
    private func heartbeat() -> (beaten: Bool, lapsed: Bool) {
        do {
            let lapsed = try node.queue.heartbeat(node.lease)
            return (true, lapsed)
        } catch {
            logger.error("node.heartbeat-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
            return (false, false)
        }
    }

    /// Cancels every run this node holds (running or waiting for a local slot): its lease is about
    /// to run out, and another node may take them, so none may go on here.
    private func giveUpRuns(because reason: String) async {
        var stopped: [String] = []
        for (runId, submitted) in await registry.all where submitted.handle.currentState != .finished && !submitted.handle.cancellation.isCancelled {
            submitted.handle.cancel()
            stopped.append(runId)
        }
        if !stopped.isEmpty {
            logger.error("node.lease-lost", metadata: ["node": "\(node.name)", "runs": "\(stopped)",
                                                      "reason": "\(reason)"])
        }
    }

    /// Reaps the runs of nodes whose lease has run out.
    private func reap() {
        do {
            for reaped in try node.queue.reap(by: node.lease, newRunId: Supervisor.makeRunId) {
                logger.notice("node.reaped", metadata: ["run.id": "\(reaped.runId)", "node": "\(reaped.node)", "reason": "\(reaped.reason)",
                                                        "action": "\(reaped.action)"])
            }
        } catch {
            logger.error("node.reap-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
        }
    }

    private func claim() async {
        let room = node.options.capacity - (await registry.all.count)
        guard room > 0 else { return }
        let claimed: [QueuedRun]
        do {
            claimed = try node.queue.claim(node.lease, limit: room)
        } catch {
            logger.error("node.claim-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
            return
        }
        for run in claimed { await start(run) }
    }

    /// The node's heartbeats as they went: a node claims only while its last heartbeat went through
    /// and is recent; it gives up its runs once two thirds of its lease have passed without one; and
    /// it reaps other nodes only after a whole lease of heartbeats that went through, so after an
    /// outage of the store (when no node could heartbeat) every live node has beaten again before any
    /// is judged, and the dead ones have stopped their runs by then.
    final class HeartbeatState: Sendable {
        private struct State {
            var lastSuccess = ContinuousClock.now
            var lastFailed = false
            var healthySince: ContinuousClock.Instant?
        }
        private let state = Mutex(State())
        let lease: Duration

        init(lease: Duration) { self.lease = lease }

        func record(_ success: Bool) {
            let now = ContinuousClock.now
            state.withLock { state in
                state.lastFailed = !success
                if success {
                    state.lastSuccess = now
                    if state.healthySince == nil { state.healthySince = now }
                } else {
                    state.healthySince = nil
                }
            }
        }

        private var sinceSuccess: Duration { ContinuousClock.now - state.withLock { $0.lastSuccess } }
        var isCurrent: Bool { !state.withLock { $0.lastFailed } && sinceSuccess < lease / 3 * 2 }
        var isLost: Bool { sinceSuccess >= lease / 3 * 2 }
        var mayReap: Bool {
            guard let since = state.withLock({ $0.healthySince }) else { return false }
            return ContinuousClock.now - since >= lease
        }
    }

    private func start(_ run: QueuedRun) async {
        let runId = run.runId
        let request: BatchRequest
        do {
            request = try BatchRequest.parse(Array(run.request.utf8))
        } catch {
            // Validated when it was queued: a row that no longer parses was changed behind the service.
            var report = Supervisor.rejectedRequest(reason: "the queued request no longer parses: \(error.description)")
            report.runId = runId
            Self.record(node, runId, report, logger)
            return
        }
        var options = request.options
        options.submittedBy = run.principal
        options.queuePlacement = QueuePlacement(node: node.name, attempt: run.attempt, retryOf: run.retryOf)
        let queue = node
        let log = logger
        let registry = registry
        // Not awaited: a run that waits for a local slot (the service's probe runs may hold them)
        // does not hold up the claim loop; the queue bounds the node's claims by its capacity.
        // Announced first, so a drain that starts now waits for it.
        await registry.expectAdoption()
        Task {
            await registry.adopt(options, runId: runId) { report in
                NodeWorker.record(queue, runId, report, log)
            }
        }
        logger.info("node.run-claimed", metadata: ["run.id": "\(runId)", "attempt": "\(run.attempt)"])
    }

    /// Records a run's report in the queue; a node that lost the run (its lease ran out) is told so.
    static func record(_ node: NodeQueue, _ runId: String, _ report: RunReport, _ logger: Logger) {
        do {
            try node.queue.finish(runId: runId, lease: node.lease, report: report.jsonValue.serialized())
        } catch {
            logger.error("node.finish-failed", metadata: ["run.id": "\(runId)", "error": "\(error)"])
        }
    }

    private func passOnCancellations() async {
        let wanted: [String]
        do {
            wanted = try node.queue.cancelRequests(node.lease)
        } catch {
            logger.error("node.cancel-poll-failed", metadata: ["node": "\(node.name)", "error": "\(error)"])
            return
        }
        for runId in wanted {
            if let submitted = await registry.submitted(runId), submitted.handle.currentState != .finished, !submitted.handle.cancellation.isCancelled {
                submitted.handle.cancel()
            }
        }
    }
}

/// A wake-up call for one waiter, remembered when nobody waits: the claim loop sleeps until it is
/// signalled or its poll interval has passed.
final class Wakeup: Sendable {
    private struct State: Sendable {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns once signalled (or at once when a signal came since the last wait), or after `timeout`.
    func wait(upTo timeout: Duration) async {
        let timer = Task { [self] in
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { signal() }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.pending {
                    state.pending = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
        timer.cancel()
    }
}
