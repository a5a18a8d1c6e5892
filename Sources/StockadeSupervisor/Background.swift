import Dispatch
import Synchronization

/// Work started on another thread now, and waited for where its result is needed: two independent
/// parts of a start (the audit store's open and the cgroup side) overlap instead of adding up.
final class Background<Value: Sendable>: Sendable {
    private let done = DispatchGroup()
    private let value = Mutex<Value?>(nil)

    init(_ work: @escaping @Sendable () -> Value) {
        DispatchQueue.global().async(group: done) { [self] in
            let result = work()
            value.withLock { $0 = result }
        }
    }

    /// The work's result, once it is done.
    func wait() -> Value {
        done.wait()
        guard let result = value.withLock({ $0 }) else { preconditionFailure("the background work finished without a result") }
        return result
    }
}
