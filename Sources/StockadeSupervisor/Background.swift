import Dispatch
import Synchronization

/// Work started on another thread now, and waited for where its result is needed: two independent
/// parts of a start (the audit store's open and the cgroup side) overlap instead of adding up.
final class Background<Value: Sendable>: Sendable {
    private let done = DispatchGroup()
    private let value = Mutex<Value?>(nil)

    /// `label` names the work's thread. A queue of its own rather than a global one: libdispatch serves
    /// it from its overcommitting pool, so it starts at once even when the process's few global
    /// threads (as many as there are CPUs) are all busy, as in a start where every part blocks.
    init(_ label: String, _ work: @escaping @Sendable () -> Value) {
        DispatchQueue(label: label).async(group: done) { [self] in
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
