import StockadeLinux
import Synchronization

/// Lets a caller cancel a run it submitted (a signal to the CLI, later an API call). A run
/// cancelled before its worker starts never starts it; one cancelled while its worker runs has
/// the worker killed as at a timeout, its cgroup emptied, and ends with outcome `cancelled`.
public final class RunCancellation: Sendable {
    private struct State {
        var cancelled = false
        var finished = false
        var monitor: WorkerMonitor?
    }

    private let state = Mutex(State())

    public init() {}

    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    public func cancel() {
        let monitor = state.withLock { s -> WorkerMonitor? in
            s.cancelled = true
            return s.monitor
        }
        monitor?.cancel()
    }

    /// False once the run has ended.
    var isPending: Bool { state.withLock { !$0.finished } }

    func markFinished() {
        state.withLock { s in
            s.finished = true
            s.monitor = nil
        }
    }

    /// Watches `monitor` from now on; cancels it at once if the run was cancelled meanwhile.
    func attach(_ monitor: WorkerMonitor) {
        let cancelled = state.withLock { s -> Bool in
            s.monitor = monitor
            return s.cancelled
        }
        if cancelled { monitor.cancel() }
    }
}

/// Cancellations for many runs at once (a batch): `make` hands out one per run, `cancelAll`
/// cancels those and every one made later.
public final class RunCancellationGroup: Sendable {
    private struct State {
        var cancelled = false
        var members: [RunCancellation] = []
    }

    private let state = Mutex(State())

    public init() {}

    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    public func make() -> RunCancellation {
        let member = RunCancellation()
        let cancelled = state.withLock { s -> Bool in
            s.members.removeAll { !$0.isPending }
            s.members.append(member)
            return s.cancelled
        }
        if cancelled { member.cancel() }
        return member
    }

    public func cancelAll() {
        let members = state.withLock { s -> [RunCancellation] in
            s.cancelled = true
            return s.members
        }
        for member in members { member.cancel() }
    }
}
