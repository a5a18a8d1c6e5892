import CStockade
import Glibc
import Synchronization

/// One epoll thread for every run of the process: worker exits (pidfds),
/// output pipes, seccomp listeners and deadlines (timerfds). Handlers run on
/// the loop thread and must not block.
public final class EventLoop: Sendable {
    /// Called with the epoll events; returns false to be unregistered.
    public typealias Handler = @Sendable (UInt32) -> Bool

    public static let shared = EventLoop()

    private let epoll: Int32
    private let handlers = Mutex<[Int32: Handler]>([:])

    private init() {
        epoll = stk_epoll_create()
        precondition(epoll >= 0, "epoll_create1 failed: errno \(errno)")
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            guard let arg else { return nil }
            Unmanaged<EventLoop>.fromOpaque(arg).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// Watches `fd` for readability (and hang-up).
    public func register(_ fd: Int32, handler: @escaping Handler) throws(LinuxError) {
        handlers.withLock { $0[fd] = handler }
        if stk_epoll_add(epoll, fd) != 0 {
            let e = errno
            _ = handlers.withLock { $0.removeValue(forKey: fd) }
            throw LinuxError(.setup, stage: "epoll", errno: e, "could not watch descriptor \(fd)")
        }
    }

    /// Stops watching `fd` (the caller still owns and closes it).
    public func unregister(_ fd: Int32) {
        if handlers.withLock({ $0.removeValue(forKey: fd) }) != nil {
            _ = stk_epoll_remove(epoll, fd)
        }
    }

    private func run() {
        var fds = [Int32](repeating: -1, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while true {
            let n = stk_epoll_wait(epoll, &fds, &events, 64, -1)
            if n < 0 { continue }
            for i in 0..<Int(n) {
                let fd = fds[i]
                guard let handler = handlers.withLock({ $0[fd] }) else { continue }
                if !handler(events[i]) { unregister(fd) }
            }
        }
    }
}
