import Dispatch
import StockadeLinux
import Synchronization

/// Work started on a thread of its own now, and waited for where its result is needed: two
/// independent parts of a start (the audit store's open and the cgroup side) overlap instead of
/// adding up.
///
/// A new thread rather than a dispatch queue: at a one-shot run's start libdispatch's threads are
/// few (as many as there are CPUs) and all busy, and work queued there started a millisecond or more
/// later, after the part it was to overlap.
final class Background<Value: Sendable>: Sendable {
    private let done = DispatchGroup()
    private let value = Mutex<Value?>(nil)

    init(_ work: @escaping @Sendable () -> Value) {
        done.enter()
        let body: @Sendable () -> Void = { [self] in
            let result = work()
            value.withLock { $0 = result }
            done.leave()
        }
        // Without a thread, the work is done here, before the caller goes on.
        if !DetachedThread.start(body) { body() }
    }

    /// The work's result, once it is done.
    func wait() -> Value {
        done.wait()
        guard let result = value.withLock({ $0 }) else { preconditionFailure("the background work finished without a result") }
        return result
    }
}
