import Synchronization

/// The one way runs are submitted, for the CLI's `run`, `batch` and a long-running service alike:
/// `submit` returns a handle at once (its run id, its state, `cancel`, the final report), and the
/// service starts queued runs as running ones finish. Admission lives here: at most `maxRunning`
/// runs at once and at most `maxQueued` waiting; a submission past that is refused
/// (`queueFull`) or, for a caller that can apply back-pressure (a batch reading its input), waits.
/// Queued runs are given a slot strictly in the order they were submitted: the slot is decided
/// here, on the actor, never by which run's task happens to be scheduled first. A queued run that
/// is cancelled leaves the queue through one extra lane of its own, one at a time (the supervisor
/// records it and ends it `cancelled` before anything is built for it); while the lane is busy it
/// keeps its place, so cancelling never moves a run ahead of another.
public actor RunService {
    public struct Admission: Sendable {
        public var maxRunning: Int
        public var maxQueued: Int

        public init(maxRunning: Int, maxQueued: Int) {
            self.maxRunning = max(1, maxRunning)
            self.maxQueued = max(0, maxQueued)
        }
    }

    public enum WhenFull: Sendable {
        /// Throw `RunServiceError.queueFull` (an API answers 429).
        case refuse
        /// Suspend the submitter until a queued run starts.
        case wait
    }

    /// Runs one request to its report (the supervisor's `run`).
    package typealias Runner = @Sendable (RunOptions, (@Sendable (Int32, [UInt8]) -> Void)?, RunCancellation, String) async -> RunReport

    public nonisolated let admission: Admission
    private let runner: Runner
    private var running = 0
    private var queued = 0
    /// Queued runs, oldest first; `finished` hands the slot it frees to the first.
    private var waiting: [RunHandle] = []
    /// A cancelled queued run is ending outside the `maxRunning` slots (one at a time).
    private var laneBusy = false
    private var roomWaiters: [CheckedContinuation<Void, Never>] = []
    private var outstanding: [String: RunHandle] = [:]
    private var closed = false

    public init(supervisor: Supervisor, admission: Admission) {
        self.init(admission: admission) { options, onOutput, cancellation, runId in
            await supervisor.run(options, onOutput: onOutput, cancellation: cancellation, runId: runId)
        }
    }

    /// Over any runner: the admission rules are tested without spawning workers.
    package init(admission: Admission, runner: @escaping Runner) {
        self.admission = admission
        self.runner = runner
    }

    /// Queues a run. The handle's report arrives when the run has ended, whatever happens: every
    /// failure is a classified report. `runId`: the id the caller reserved for it (`Supervisor.makeRunId`,
    /// or a shared run queue's), else a new one.
    public func submit(_ options: RunOptions, onOutput: (@Sendable (Int32, [UInt8]) -> Void)? = nil,
                       whenFull: WhenFull = .refuse, runId: String? = nil) async throws(RunServiceError) -> RunHandle {
        while running + queued >= admission.maxRunning + admission.maxQueued && !closed {
            guard whenFull == .wait else {
                throw RunServiceError.queueFull(running: running, queued: queued, limit: admission.maxQueued)
            }
            await withCheckedContinuation { roomWaiters.append($0) }
        }
        guard !closed else { throw RunServiceError.closed }
        let handle = RunHandle(runId: runId ?? Supervisor.makeRunId())
        outstanding[handle.runId] = handle
        if running < admission.maxRunning {
            running += 1
            handle.slot.grant(.slot)
        } else {
            queued += 1
            waiting.append(handle)
            handle.cancellation.onCancel { [self] in Task { await self.withdraw(handle) } }
        }
        let runner = self.runner
        handle.start { [self] cancellation, runId in
            let way = await handle.slot.wait()
            // Given its way in, the run no longer needs the service to hear of its cancellation
            // (which also lets the handle, its cancellation and the service go).
            cancellation.dropObservers()
            if way == .slot { handle.markRunning() }
            let report = await runner(options, onOutput, cancellation, runId)
            await self.finished(runId, way)
            return report
        }
        return handle
    }

    /// A queued run cancelled: out of the queue now through the lane when it is free; else it keeps
    /// its place, and the lane takes it when free (or a slot, if one comes first). Nothing when it
    /// has started.
    private func withdraw(_ handle: RunHandle) {
        guard !laneBusy, let index = waiting.firstIndex(where: { $0 === handle }) else { return }
        laneBusy = true
        leaveQueue(waiting.remove(at: index), by: .lane)
    }

    /// A queued run taken out of `waiting` starts by `way`; its place in the queue is free.
    private func leaveQueue(_ handle: RunHandle, by way: SlotGate.Way) {
        queued -= 1
        roomWaiters.popFirst()?.resume()
        handle.slot.grant(way)
    }

    /// Runs under way and waiting, for a service's metrics and a queue's `Retry-After`.
    public var load: (running: Int, queued: Int) { (running, queued) }

    /// Stops admitting runs and cancels every queued and running one (an interrupt, a shutdown).
    public func cancelAll() {
        closed = true
        for handle in outstanding.values { handle.cancel() }
        for waiter in roomWaiters { waiter.resume() }
        roomWaiters = []
    }

    public var isClosed: Bool { closed }

    private func finished(_ runId: String, _ way: SlotGate.Way) {
        outstanding[runId] = nil
        switch way {
        case .slot:
            if let next = waiting.popFirst() {
                leaveQueue(next, by: .slot)
            } else {
                running -= 1
                roomWaiters.popFirst()?.resume()
            }
        case .lane:
            if let index = waiting.firstIndex(where: { $0.cancellation.isCancelled }) {
                leaveQueue(waiting.remove(at: index), by: .lane)
            } else {
                laneBusy = false
            }
        }
    }
}

public enum RunServiceError: Error, Sendable, Equatable, CustomStringConvertible {
    case queueFull(running: Int, queued: Int, limit: Int)
    case closed

    public var description: String {
        switch self {
        case .queueFull(let running, let queued, let limit):
            "the run queue is full (\(running) running, \(queued) of \(limit) queued): retry when a run has finished"
        case .closed:
            "the run service is shutting down and admits no more runs"
        }
    }
}

/// A submitted run: its id from the start, its state, a way to cancel it, and its report.
public final class RunHandle: Sendable {
    public enum State: String, Sendable { case queued, running, finished }

    public let runId: String
    public let cancellation = RunCancellation()
    /// Opened by the service when the run may start.
    let slot = SlotGate()
    private let state = Mutex(State.queued)
    private let task = Mutex<Task<RunReport, Never>?>(nil)

    init(runId: String) {
        self.runId = runId
    }

    func start(_ body: @escaping @Sendable (RunCancellation, String) async -> RunReport) {
        let cancellation = self.cancellation, runId = self.runId
        let started = Task { [self] in
            let report = await body(cancellation, runId)
            state.withLock { $0 = .finished }
            return report
        }
        task.withLock { $0 = started }
    }

    func markRunning() {
        state.withLock { if $0 == .queued { $0 = .running } }
    }

    public var currentState: State { state.withLock { $0 } }

    /// Cancels the run: a queued one never starts its worker, a running one is killed (outcome `cancelled`).
    public func cancel() {
        cancellation.cancel()
    }

    /// The final report, when the run has ended.
    public func report() async -> RunReport {
        // `start` is called before the handle is returned, so the task is there.
        guard let running = task.withLock({ $0 }) else { preconditionFailure("a RunHandle is started before it is handed out") }
        return await running.value
    }
}

/// A one-time gate: `wait` returns, once `grant` has been called (before or after), the way in
/// it was given: one of the `maxRunning` slots, or the lane of cancelled queued runs.
final class SlotGate: Sendable {
    enum Way: Sendable { case slot, lane }
    private enum State {
        case closed
        case waiter(CheckedContinuation<Way, Never>)
        case open(Way)
    }
    private let state = Mutex(State.closed)

    /// The first grant counts; a later one changes nothing.
    func grant(_ way: Way) {
        let waiter: CheckedContinuation<Way, Never>? = state.withLock { state in
            switch state {
            case .open: return nil
            case .closed:
                state = .open(way)
                return nil
            case .waiter(let waiter):
                state = .open(way)
                return waiter
            }
        }
        waiter?.resume(returning: way)
    }

    func wait() async -> Way {
        await withCheckedContinuation { (continuation: CheckedContinuation<Way, Never>) in
            let given = state.withLock { state -> Way? in
                if case .open(let way) = state { return way }
                state = .waiter(continuation)
                return nil
            }
            if let given { continuation.resume(returning: given) }
        }
    }
}

extension Array {
    fileprivate mutating func popFirst() -> Element? {
        isEmpty ? nil : removeFirst()
    }
}
