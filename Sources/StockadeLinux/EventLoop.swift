import CStockade
import Glibc
import Synchronization
import StockadePolicy

/// One epoll thread for every run of the process: worker exits (pidfds),
/// output pipes, seccomp listeners and deadlines (timerfds). Handlers run on
/// the loop thread and must not block.
public final class EventLoop: Sendable {
    /// Called with the epoll events; returns false to be unregistered.
    public typealias Handler = @Sendable (UInt32) -> Bool

    public static let shared = EventLoop()

    private struct Registrations {
        var next: UInt64 = 1
        var tokens: [Int32: UInt64] = [:]
        var handlers: [UInt64: Handler] = [:]
    }

    private let epoll: Int32
    private let registrations = Mutex(Registrations())

    private init() {
        epoll = stk_epoll_create()
        precondition(epoll >= 0, "epoll_create1 failed: errno \(errno)")
        let started = DetachedThread.start { [self] in run() }
        precondition(started, "pthread_create failed: errno \(errno)")
    }

    /// Watches `fd` for readability (and hang-up).
    public func register(_ fd: Int32, handler: @escaping Handler) throws(LinuxError) {
        let token = registrations.withLock { r in
            let token = r.next
            r.next += 1
            r.tokens[fd] = token
            r.handlers[token] = handler
            return token
        }
        if stk_epoll_add(epoll, fd, token) != 0 {
            let e = errno
            registrations.withLock { r in
                r.tokens[fd] = nil
                r.handlers[token] = nil
            }
            throw LinuxError(.setup, stage: .epoll, errno: e, "could not watch descriptor \(fd)")
        }
    }

    /// Stops watching `fd` (the caller still owns and closes it).
    public func unregister(_ fd: Int32) {
        let removed = registrations.withLock { r -> Bool in
            guard let token = r.tokens.removeValue(forKey: fd) else { return false }
            r.handlers[token] = nil
            return true
        }
        if removed { _ = stk_epoll_remove(epoll, fd) }
    }

    /// Unregisters the registration `token` only if it is still current.
    private func unregister(token: UInt64) {
        let fd = registrations.withLock { r -> Int32? in
            guard r.handlers.removeValue(forKey: token) != nil,
                  let fd = r.tokens.first(where: { $0.value == token })?.key else { return nil }
            r.tokens[fd] = nil
            return fd
        }
        if let fd { _ = stk_epoll_remove(epoll, fd) }
    }

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while true {
            let n = stk_epoll_wait(epoll, &tokens, &events, 64, -1)
            if n < 0 { continue }
            for i in 0..<Int(n) {
                let token = tokens[i]
                // A registration removed earlier in this batch (and perhaps its
                // fd number reused) is gone from the table: its event is dropped.
                guard let handler = registrations.withLock({ $0.handlers[token] }) else { continue }
                if !handler(events[i]) { unregister(token: token) }
            }
        }
    }
}
