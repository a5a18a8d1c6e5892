import Glibc

/// A plain thread of its own for a piece of work, started now and never joined: for loops that
/// block (the event loop, the spawner, a stdin copy) and for work that must start at once rather
/// than wait for a free thread of libdispatch or the concurrency pool.
public enum DetachedThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts `body` on a new detached thread; false (nothing started) when the kernel refuses one,
    /// with the reason in `errno`.
    @discardableResult
    public static func start(_ body: @escaping @Sendable () -> Void) -> Bool {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            guard let arg else { return nil }
            Unmanaged<Body>.fromOpaque(arg).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            errno = rc
            return false
        }
        pthread_detach(thread)
        return true
    }
}

/// Blocking work (waitpid, poll, a socket's calls) awaited from async code on a thread of its own,
/// off Swift's cooperative pool (a handful of threads on a small machine); run inline when no thread
/// can be made.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let work: @Sendable () -> Void = { continuation.resume(returning: body()) }
            if !DetachedThread.start(work) { work() }
        }
    }
}
