import Dispatch
import Glibc
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
        DetachedThread.start { [self] in
            let result = work()
            value.withLock { $0 = result }
            done.leave()
        }
    }

    /// The work's result, once it is done.
    func wait() -> Value {
        done.wait()
        guard let result = value.withLock({ $0 }) else { preconditionFailure("the background work finished without a result") }
        return result
    }
}

/// A thread of its own for a piece of work, started now.
enum DetachedThread {
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    /// Runs `body` on a new detached thread; on this one if no thread can be made.
    static func start(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            guard let arg else { return nil }
            Unmanaged<Body>.fromOpaque(arg).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(thread)
        } else {
            box.takeRetainedValue().run()
        }
    }
}
