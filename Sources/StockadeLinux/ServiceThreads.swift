import CStockade
import Glibc
import Synchronization

/// The threads of a relay service the supervisor runs for a worker (the port forwarder, the
/// egress proxy): an accept loop and one thread per connection, a stop pipe whose read end
/// (`stopEvent`) every poll watches, connection threads that put themselves on a list to be
/// joined when they end, and a stop that wakes and joins them all. Plain threads, not tasks:
/// each blocks in poll on hostile peers and must not hold a cooperative thread.
final class ServiceThreads: Sendable {
    /// Readable once `stopAndJoin` ran: it wakes every poll.
    let stopEvent: Int32
    private let stopTrigger: Int32
    private let stackSize: Int?
    private let failure: @Sendable (Int32) -> LinuxError
    /// Threads running, and connection threads that ended and wait to be joined.
    private let threads = Mutex((running: [pthread_t](), finished: [pthread_t]()))

    /// `failure` names the service in errors (a thread or the pipe could not be made).
    init(stackSize: Int? = nil, failure: @escaping @Sendable (Int32) -> LinuxError) throws(LinuxError) {
        var pipe: [Int32] = [-1, -1]
        guard stk_pipe_cloexec(&pipe, O_NONBLOCK) == 0 else { throw failure(errno) }
        stopEvent = pipe[0]
        stopTrigger = pipe[1]
        self.stackSize = stackSize
        self.failure = failure
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts `body` on a thread of its own. A `connection` thread puts itself on the list of
    /// threads to join when `body` returns (`joinFinished`); others are joined by `stopAndJoin`.
    func start(connection: Bool = false, _ body: @escaping @Sendable () -> Void) throws(LinuxError) {
        let run: @Sendable () -> Void
        if connection {
            run = { [self] in
                body()
                let me = pthread_self()
                threads.withLock { t in
                    if let i = t.running.firstIndex(where: { pthread_equal($0, me) != 0 }) {
                        t.running.remove(at: i)
                        t.finished.append(me)
                    }
                }
            }
        } else {
            run = body
        }
        let box = Unmanaged.passRetained(Body(run))
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if let stackSize { pthread_attr_setstacksize(&attributes, stackSize) }
        // Registered before it can end, so that it always finds itself on the list.
        let rc = self.threads.withLock { t -> Int32 in
            let rc = pthread_create(&thread, &attributes, { arg in
                guard let arg else { return nil }
                Unmanaged<Body>.fromOpaque(arg).takeRetainedValue().run()
                return nil
            }, box.toOpaque())
            if rc == 0 { t.running.append(thread) }
            return rc
        }
        guard rc == 0 else {
            box.release()
            throw failure(rc)
        }
    }

    /// Joins the connection threads that have ended.
    func joinFinished() {
        let done = threads.withLock { t -> [pthread_t] in
            defer { t.finished = [] }
            return t.finished
        }
        for t in done { pthread_join(t, nil) }
    }

    /// Wakes every poll, joins every thread (those started meanwhile too), closes the pipe.
    /// Call once.
    func stopAndJoin() {
        var one: UInt8 = 1
        _ = write(stopTrigger, &one, 1)
        while true {
            let all = threads.withLock { t -> [pthread_t] in
                defer { t.running = []; t.finished = [] }
                return t.running + t.finished
            }
            if all.isEmpty { break }
            for t in all { pthread_join(t, nil) }
        }
        close(stopEvent)
        close(stopTrigger)
    }
}
