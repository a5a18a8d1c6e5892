import StockadeLinux
import Synchronization

/// Lets a caller cancel a run it submitted (a signal to the CLI, later an API call). A run
/// cancelled before its worker starts never starts it; one cancelled while its worker runs has
/// the worker killed as at a timeout, its cgroup emptied, and ends with outcome `cancelled`.
public final class RunCancellation: Sendable {
    private struct State {
        var cancelled = false
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

    func markFinished() {
        // The run is over: drop the monitor (and what it holds).
        state.withLock { $0.monitor = nil }
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

