import Foundation
import StockadeSupervisor
import Synchronization

/// The runs this service submitted and still has in hand, and the idempotency keys of submissions.
/// A finished run leaves the registry: its report is then read from its run directory.
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
    }

    private enum Slot {
        case pending(bodyHash: String, Task<Result<String, SubmitError>, Never>)
        case done(bodyHash: String, runId: String)
    }

    let service: RunService
    private var runs: [String: Submitted] = [:]
    private var keys: [String: Slot] = [:]
    private var keyOrder: [String] = []
    private static let maxKeys = 100_000
    private var draining = false

    init(service: RunService) {
        self.service = service
    }

    func submitted(_ runId: String) -> Submitted? { runs[runId] }

    var all: [String: Submitted] { runs }

    var isDraining: Bool { draining }

    /// Submits a run, or answers the first run of an earlier submission with the same key from the
    /// same principal (never starting a second one, even for concurrent retries).
    /// Returns the run id and whether it was a replay.
    func submit(_ options: RunOptions, principal: String, idempotencyKey: String?, bodyHash: String) async -> Result<(String, Bool), SubmitError> {
        guard let idempotencyKey else { return await start(options).map { ($0, false) } }
        let slotKey = principal + "\n" + idempotencyKey
        switch keys[slotKey] {
        case .done(let hash, let runId)?:
            return hash == bodyHash ? .success((runId, true)) : .failure(.keyReused)
        case .pending(let hash, let task)?:
            guard hash == bodyHash else { return .failure(.keyReused) }
            return await task.value.map { ($0, true) }
        case nil:
            // The slot is taken before the first suspension: a concurrent retry finds it.
            let task = Task { await self.start(options) }
            keys[slotKey] = .pending(bodyHash: bodyHash, task)
            let result = await task.value
            switch result {
            case .success(let runId):
                keys[slotKey] = .done(bodyHash: bodyHash, runId: runId)
                keyOrder.append(slotKey)
                if keyOrder.count > Self.maxKeys { keys[keyOrder.removeFirst()] = nil }
            case .failure:
                // A refused submission started nothing: a retry with the key may start the run.
                keys[slotKey] = nil
            }
            return result.map { ($0, false) }
        }
    }

    private func start(_ options: RunOptions) async -> Result<String, SubmitError> {
        guard !draining else { return .failure(.closed) }
        let handle: RunHandle
        do {
            handle = try await service.submit(options, whenFull: .refuse)
        } catch {
            if case .closed = error { return .failure(.closed) }
            return .failure(.queueFull(error))
        }
        runs[handle.runId] = Submitted(handle: handle, labels: options.labels, name: options.name)
        let runId = handle.runId
        Task {
            _ = await handle.report()
            self.forget(runId)
        }
        return .success(runId)
    }

    private func forget(_ runId: String) {
        runs[runId] = nil
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
