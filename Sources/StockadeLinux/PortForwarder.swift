import CStockade
import Glibc
import StockadePolicy
import Synchronization

/// Publishes worker ports on the host: listens on host `127.0.0.1:HOSTPORT`
/// and relays each accepted connection to `127.0.0.1:WORKERPORT` inside the
/// worker's network namespace. The worker itself gets no route out: its
/// namespace has only `lo`, and the forwarder's worker-side socket is made in
/// that namespace by a thread that entered it with setns(2) and left again (a
/// socket stays in the namespace it was created in).
///
/// One thread accepts per mapping and one relays per connection, at most
/// `maxConnections` at once (more are accepted and closed at once). `stop()`
/// closes every listener and connection and joins every thread.
extension LinuxError.Code {
    /// A published port could not be set up.
    public static let publish = LinuxError.Code(rawValue: "publish")
}

public final class PortForwarder: Sendable {
    public static let maxConnections = 64

    private struct State {
        var stopped = false
        var active = 0
        var workerNamespace: Int32 = -1
    }

    public let mappings: [Profile.PortMapping]
    private let listeners: [Int32]
    private let threads: ServiceThreads
    /// Readable once `stop()` ran: it wakes every poll.
    private var stopEvent: Int32 { threads.stopEvent }
    private let state = Mutex(State())

    private init(mappings: [Profile.PortMapping], listeners: [Int32], threads: ServiceThreads) {
        self.mappings = mappings
        self.listeners = listeners
        self.threads = threads
    }

    /// Listens on every host port and relays to the worker `workerPid`.
    public static func start(mappings: [Profile.PortMapping], workerPid: Int32) throws(LinuxError) -> PortForwarder {
        let forwarder = try listen(mappings: mappings)
        do {
            try forwarder.attach(workerPid: workerPid)
        } catch {
            forwarder.stop()
            throw error
        }
        return forwarder
    }

    /// Binds and listens on host `127.0.0.1:HOSTPORT` for every mapping, before
    /// the worker exists, so that a taken port fails the run before anything runs.
    public static func listen(mappings: [Profile.PortMapping]) throws(LinuxError) -> PortForwarder {
        var seen: Set<UInt16> = []
        for m in mappings where !seen.insert(m.hostPort).inserted {
            throw LinuxError(.publish, stage: .publish, "host port \(m.hostPort) is published twice: give each mapping its own host port")
        }
        let threads = try ServiceThreads { rc in
            LinuxError(.publish, stage: .publish, errno: rc, "cannot start the port forwarder (a thread or its stop pipe)")
        }
        func closeStop() { threads.stopAndJoin() }
        var listeners: [Int32] = []
        for m in mappings {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                let e = errno
                for l in listeners { close(l) }
                closeStop()
                throw LinuxError(.publish, stage: .publish, errno: e, "cannot create a socket for host port \(m.hostPort)")
            }
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = loopbackAddress(port: m.hostPort)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if bound != 0 || Glibc.listen(fd, 64) != 0 {
                let e = errno
                close(fd)
                for l in listeners { close(l) }
                closeStop()
                let why = e == EADDRINUSE ? "it is already in use on the host: choose another HOSTPORT or stop what listens there"
                    : e == EACCES ? "ports below 1024 need root or CAP_NET_BIND_SERVICE" : String(cString: strerror(e))
                throw LinuxError(.publish, stage: .publish, errno: e, "cannot listen on 127.0.0.1:\(m.hostPort) to publish worker port \(m.workerPort): \(why)")
            }
            listeners.append(fd)
        }
        return PortForwarder(mappings: mappings, listeners: listeners, threads: threads)
    }

    /// Starts relaying into the network namespace of `workerPid` (which must
    /// not have been reaped yet, so that the pid still names the worker).
    /// A worker that has already exited (its namespaces are gone: ENOENT)
    /// leaves nothing to relay to: connections wait unanswered until `stop()`
    /// closes them, and that is not an error.
    public func attach(workerPid: Int32) throws(LinuxError) {
        let ns = open("/proc/\(workerPid)/ns/net", O_RDONLY | O_CLOEXEC)
        guard ns >= 0 else {
            if errno == ENOENT && access("/proc/\(workerPid)", F_OK) == 0 { return }
            throw LinuxError(.publish, stage: .publish, errno: errno, "cannot open the network namespace of worker \(workerPid)")
        }
        let proceed = state.withLock { s -> Bool in
            guard !s.stopped, s.workerNamespace < 0 else { return false }
            s.workerNamespace = ns
            return true
        }
        guard proceed else {
            close(ns)
            throw LinuxError(.publish, stage: .publish, "the port forwarder was stopped or already attached")
        }
        for (index, listener) in listeners.enumerated() {
            let port = mappings[index].workerPort
            try threads.start { [self] in acceptLoop(listener: listener, workerPort: port, namespace: ns) }
        }
    }

    /// Closes every listener and connection and waits for every thread.
    public func stop() {
        let first = state.withLock { s -> Bool in
            defer { s.stopped = true }
            return !s.stopped
        }
        guard first else { return }
        threads.stopAndJoin()
        for l in listeners { close(l) }
        let ns = state.withLock { s -> Int32 in
            defer { s.workerNamespace = -1 }
            return s.workerNamespace
        }
        if ns >= 0 { close(ns) }
    }

    deinit {
        stop()
    }

    static func loopbackAddress(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    private var isStopped: Bool { state.withLock { $0.stopped } }

    /// Connections being relayed now.
    public var activeConnections: Int { state.withLock { $0.active } }

    private func acceptLoop(listener: Int32, workerPort: UInt16, namespace: Int32) {
        var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
        while !isStopped {
            threads.joinFinished()
            let n = poll(&fds, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { return }
            guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
            var stopped = false
            guard let client = WorkerListener.accept(listener, stopEvent: stopEvent, stopped: &stopped) else {
                if stopped { return }
                continue
            }
            let admitted = state.withLock { s -> Bool in
                guard !s.stopped, s.active < PortForwarder.maxConnections else { return false }
                s.active += 1
                return true
            }
            guard admitted else {
                close(client)
                continue
            }
            do {
                try threads.start(connection: true) { [self] in
                    relay(client: client, workerPort: workerPort, namespace: namespace)
                    close(client)
                    state.withLock { $0.active -= 1 }
                }
            } catch {
                close(client)
                state.withLock { $0.active -= 1 }
            }
        }
    }

    /// A TCP socket created inside the worker's network namespace; this thread
    /// enters it only for the socket(2) call and returns to its own.
    static func workerSocket(namespace: Int32) -> Int32 {
        let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard home >= 0 else { return -1 }
        defer { close(home) }
        guard stk_setns_net(namespace) == 0 else { return -1 }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        // If returning fails, the thread stays in the worker's namespace, which
        // is harmless: relay threads are never reused and make no other socket.
        _ = stk_setns_net(home)
        return fd
    }

    private func relay(client: Int32, workerPort: UInt16, namespace: Int32) {
        let upstream = PortForwarder.workerSocket(namespace: namespace)
        guard upstream >= 0 else { return }
        defer { close(upstream) }
        // Non-blocking from the start: a worker whose listen backlog is full
        // would otherwise hold this thread in connect(2), and stop() with it.
        _ = fcntl(upstream, F_SETFL, fcntl(upstream, F_GETFL) | O_NONBLOCK)
        guard connect(upstream, workerPort: workerPort) else { return }
        var toWorker = RelayDirection(from: client, to: upstream)
        var toClient = RelayDirection(from: upstream, to: client)
        while !(toWorker.done && toClient.done) {
            var fds = [
                RelayDirection.watch(client, toWorker.readInterest | toClient.writeInterest),
                RelayDirection.watch(upstream, toClient.readInterest | toWorker.writeInterest),
                pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0),
            ]
            let n = poll(&fds, 3, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[2].revents != 0 { return }
            if (fds[0].revents | fds[1].revents) & Int16(POLLERR | POLLNVAL) != 0 { return }
            // Published ports have no byte budget: only a failed socket ends the relay.
            guard case .moved = toWorker.step({ _ in true }), case .moved = toClient.step({ _ in true }) else { return }
        }
    }

    /// Connects the non-blocking `fd` to the worker's 127.0.0.1:`workerPort`,
    /// waiting until it completes, fails, or the forwarder stops.
    private func connect(_ fd: Int32, workerPort: UInt16) -> Bool {
        var address = PortForwarder.loopbackAddress(port: workerPort)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc == 0 { return true }
        guard errno == EINPROGRESS else { return false }
        var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { return false }
            if fds[0].revents != 0 { break }
        }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0
    }
}
