import Foundation
import Logging
import StockadeAudit
import StockadeSupervisor
import StockadeTokens
import Synchronization

/// The runs this service submitted and still has in hand, and the idempotency keys of submissions.
/// A finished run leaves the registry: its report is then read from its run directory, or, for a run
/// refused in setup (which may have no run directory: an unknown profile), from the last
/// `maxRefusedReports` such reports kept here, so `wait` answers it too.
actor RunRegistry {
    struct Submitted: Sendable {
        let handle: RunHandle
        let labels: [String: String]
        let name: String?
    }

    enum SubmitError: Error {
        case queueFull(RunServiceError)
        case closed
        /// The key was used before by this principal with another body.
        case keyReused
        /// The stored keys could not be read: nothing was started.
        case keyStoreFailed(String)
        /// The principal has `maxPerPrincipal` runs queued and running already.
        case quotaExceeded(limit: Int)
        /// Node mode: the shared run queue did not take the run (nothing was queued).
        case queueFailed(String)
    }

    /// Node mode: the submission as it goes into the shared queue.
    struct Queued: Sendable {
        /// The request object as submitted: what the claiming node parses and runs.
        let body: String
        let nodeLabels: [String: String]
        let retries: Int
    }

    private enum Slot {
        case pending(bodyHash: String, Task<Result<String, SubmitError>, Never>)
        case done(bodyHash: String, runId: String)
    }

    let service: RunService
    /// Where keys outlive the process (`idempotency_keys`): a retry after a restart still answers the first run.
    let keyStore: TokenStore
    let logger: Logger
    private var runs: [String: Submitted] = [:]
    private var refused: [String: RunReport] = [:]
    private var refusedOrder: [String] = []
    static let maxRefusedReports = 1024
    private var keys: [String: Slot] = [:]
    private var keyOrder: [String] = []
    private static let maxKeys = 100_000
    private var draining = false
    /// `--max-per-principal`; 0: no limit.
    let maxPerPrincipal: Int
    /// Runs queued and running per principal, counted from admission (before the first suspension,
    /// so concurrent submissions cannot both take the last place) until the run's report exists.
    private var active: [String: Int] = [:]
    let metrics: ServiceMetrics?
    /// `--node`: submissions go into the shared run queue, and this registry holds the runs this
    /// node claimed from it.
    let node: NodeQueue?

    init(service: RunService, keyStore: TokenStore, logger: Logger, maxPerPrincipal: Int = 0, metrics: ServiceMetrics? = nil,
         node: NodeQueue? = nil) {
        self.node = node
        self.service = service
        self.keyStore = keyStore
        self.logger = logger
        self.maxPerPrincipal = maxPerPrincipal
        self.metrics = metrics
    }

    /// Runs queued and running that `principal` submitted.
    func activeRuns(of principal: String) -> Int { active[principal] ?? 0 }

    func submitted(_ runId: String) -> Submitted? { runs[runId] }

    /// The report of a run this service submitted that was refused in setup, while it is kept.
    func refusedReport(_ runId: String) -> RunReport? { refused[runId] }

    var all: [String: Submitted] { runs }

    var isDraining: Bool { draining }

    /// Submits a run, or answers the first run of an earlier submission with the same key from the
    /// same principal (never starting a second one, even for concurrent retries).
    /// Returns the run id and whether it was a replay.
    func submit(_ options: RunOptions, principal: String, idempotencyKey: String?, bodyHash: String,
                queued: Queued? = nil) async -> Result<(String, Bool), SubmitError> {
        guard let idempotencyKey else { return await start(options, principal: principal, queued: queued).map { ($0, false) } }
        let slotKey = principal + "\n" + idempotencyKey
        switch keys[slotKey] {
        case .done(let hash, let runId)?:
            return hash == bodyHash ? .success((runId, true)) : .failure(.keyReused)
        case .pending(let hash, let task)?:
            guard hash == bodyHash else { return .failure(.keyReused) }
            return await task.value.map { ($0, true) }
        case nil:
            // The key is reserved in the store before the run starts, so a retry that reaches another
            // service on the same store (or this one after a restart) finds it. No actor suspension
            // between this call and taking the slot: a concurrent retry here finds the slot.
            let runId = Supervisor.makeRunId()
            let stored: (bodySha256: String, runId: String)?
            do {
                stored = try keyStore.reserveSubmission(principal: principal, key: idempotencyKey, bodySha256: bodyHash, runId: runId)
            } catch {
                return .failure(.keyStoreFailed(error.description))
            }
            if let stored {
                keys[slotKey] = .done(bodyHash: stored.bodySha256, runId: stored.runId)
                return stored.bodySha256 == bodyHash ? .success((stored.runId, true)) : .failure(.keyReused)
            }
            let task = Task { await self.start(options, principal: principal, queued: queued, runId: runId) }
            keys[slotKey] = .pending(bodyHash: bodyHash, task)
            let result = await task.value
            switch result {
            case .success:
                keys[slotKey] = .done(bodyHash: bodyHash, runId: runId)
                keyOrder.append(slotKey)
                if keyOrder.count > Self.maxKeys { keys[keyOrder.removeFirst()] = nil }
            case .failure(.queueFailed):
                // The shared queue's answer was lost: the run may be queued after all, so the key stays
                // reserved for it (a retry answers this run id, which `GET /v1/runs/{id}` then finds or not).
                keys[slotKey] = .done(bodyHash: bodyHash, runId: runId)
            case .failure:
                // A refused submission started nothing: a retry with the key may start the run.
                keys[slotKey] = nil
                do {
                    try keyStore.forgetSubmission(principal: principal, key: idempotencyKey, runId: runId)
                } catch {
                    logger.error("idempotency-key.not-released", metadata: ["run.id": "\(runId)", "error": "\(error)"])
                }
            }
            return result.map { ($0, false) }
        }
    }

    private func start(_ options: RunOptions, principal: String, queued: Queued?, runId: String? = nil) async -> Result<String, SubmitError> {
        guard !draining else { return .failure(.closed) }
        if let node {
            // Any node may run it: it is queued in the store, and this node claims like the others.
            guard let queued else { return .failure(.queueFailed("no request body to queue")) }
            let runId = runId ?? Supervisor.makeRunId()
            do {
                try node.queue.enqueue(QueueSubmission(runId: runId, principal: principal.isEmpty ? nil : principal, request: queued.body,
                                                       requiredLabels: queued.nodeLabels, retries: queued.retries, submittedOn: node.name))
            } catch {
                return .failure(.queueFailed(error.description))
            }
            node.wakeup.signal()
            return .success(runId)
        }
        if maxPerPrincipal > 0, activeRuns(of: principal) >= maxPerPrincipal { return .failure(.quotaExceeded(limit: maxPerPrincipal)) }
        active[principal, default: 0] += 1
        let handle: RunHandle
        do {
            handle = try await service.submit(options, whenFull: .refuse, runId: runId)
        } catch {
            release(principal)
            if case .closed = error { return .failure(.closed) }
            return .failure(.queueFull(error))
        }
        runs[handle.runId] = Submitted(handle: handle, labels: options.labels, name: options.name)
        let runId = handle.runId
        Task {
            let report = await handle.report()
            self.metrics?.runFinished(report)
            self.forget(runId, principal: principal, report: report)
        }
        return .success(runId)
    }

    /// Node mode: claimed runs announced (`expectAdoption`) and not yet handed to the run service:
    /// the drain waits for them too.
    private(set) var adopting = 0

    func expectAdoption() { adopting += 1 }

    /// Runs in hand, or claimed runs on their way to the run service: what a drain waits for.
    var hasWork: Bool { !runs.isEmpty || adopting > 0 }

    /// Node mode: runs a run this node claimed from the shared queue, under the queue's run id, and
    /// hands its report to `record` (which writes it to the queue) when it has ended.
    func adopt(_ options: RunOptions, runId: String, record: @escaping @Sendable (RunReport) -> Void) async {
        defer { adopting -= 1 }
        let handle: RunHandle
        do {
            handle = try await service.submit(options, whenFull: .wait, runId: runId)
        } catch {
            // Shutting down: the run stays claimed until this node leaves, then the reaper takes it.
            logger.error("node.run-not-started", metadata: ["run.id": "\(runId)", "error": "\(error)"])
            return
        }
        runs[runId] = Submitted(handle: handle, labels: options.labels, name: options.name)
        Task {
            let report = await handle.report()
            self.metrics?.runFinished(report)
            record(report)
            self.forgetAdopted(runId, report: report)
            self.node?.wakeup.signal()
        }
    }

    private func forgetAdopted(_ runId: String, report: RunReport) {
        runs[runId] = nil
        if report.setupError != nil {
            refused[runId] = report
            refusedOrder.append(runId)
            if refusedOrder.count > Self.maxRefusedReports { refused[refusedOrder.removeFirst()] = nil }
        }
    }

    private func forget(_ runId: String, principal: String, report: RunReport) {
        runs[runId] = nil
        if report.setupError != nil {
            refused[runId] = report
            refusedOrder.append(runId)
            if refusedOrder.count > Self.maxRefusedReports { refused[refusedOrder.removeFirst()] = nil }
        }
        release(principal)
    }

    private func release(_ principal: String) {
        let left = (active[principal] ?? 1) - 1
        active[principal] = left > 0 ? left : nil
    }

    /// Refuses new runs and cancels the queued ones (they never start); running ones go on.
    func beginDrain() {
        draining = true
        for submitted in runs.values where submitted.handle.currentState == .queued { submitted.handle.cancel() }
    }

    var outstanding: [RunHandle] { runs.values.map(\.handle) }
}

/// Set once the runs are drained: event streams end and the listener closes.
final class ShutdownFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}
