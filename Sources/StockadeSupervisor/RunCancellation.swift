import StockadeLinux
import Synchronization

/// Lets a caller cancel a run it submitted (a signal to the CLI, later an API call). A run
/// cancelled before its worker starts never starts it; one cancelled while its worker runs has
/// the worker killed as at a timeout, its cgroup emptied, and ends with outcome `cancelled`.
public final class RunCancellation: Sendable {
    private struct State {
        var cancelled = false
        var monitor: WorkerMonitor?
        var observers: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())

    public init() {}

    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    public func cancel() {
        let (monitor, observers) = state.withLock { s -> (WorkerMonitor?, [@Sendable () -> Void]) in
            s.cancelled = true
            defer { s.observers = [] }
            return (s.monitor, s.observers)
        }
        monitor?.cancel()
        for observer in observers { observer() }
    }

    /// Calls `body` once when the run is cancelled: at once when it is already, never after
    /// `dropObservers`.
    func onCancel(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.cancelled { return true }
            s.observers.append(body)
            return false
        }
        if now { body() }
    }

    func dropObservers() {
        state.withLock { $0.observers = [] }
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

