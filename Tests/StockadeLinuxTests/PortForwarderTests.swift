import Foundation
import Glibc
@testable import StockadeLinux
import StockadePolicy
import StockadeTestSupport
import Testing

@Suite("the port forwarder", .enabled(if: getuid() == 0, "needs root: it enters a network namespace with setns(2)"), .serialized,
       .timeLimit(.minutes(3)))
struct PortForwarderTests {
    /// Relays within the test's own namespace: the mechanics are the same as into a worker's.
    @Test("it relays both ways, bounds concurrent connections at 64, and closes everything on stop")
    func relay() throws {
        let server = try hostListener()
        defer { close(server.fd) }
        let free = try hostListener()
        close(free.fd)
        let forwarder = try PortForwarder.start(mappings: [Profile.PortMapping(hostPort: free.port, workerPort: server.port)], workerPid: getpid())
        defer { forwarder.stop() }  // idempotent; stops it also when an expectation below ends the test early
        // Echo one line per connection on a thread: accept, read, answer.
        let echo = Thread {
            let c = accept(server.fd, nil, nil)
            guard c >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            let reply = Array("echo: ".utf8) + buffer[0..<max(n, 0)]
            _ = reply.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(c)
        }
        echo.start()
        #expect(exchange(port: free.port, send: "hello\n") == "echo: hello\n")
        // That relay's thread ends just after the reply arrives: wait for it, or it would still hold
        // one of the 64 places when the connections below come in (bounded, as below).
        var drained = 0
        while forwarder.activeConnections > 0 && drained < 2_000 {
            usleep(10_000)
            drained += 1
        }

        // 64 connections are held open (the server never answers them); the 65th is closed at once.
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<PortForwarder.maxConnections {
            let fd = try #require(connectedSocket(port: free.port))
            held.append(fd)
        }
        // Once all 64 are being relayed, one more is turned away. (Bounded: a synchronous loop is not
        // stopped by the time limit, and a hang would stall the whole run.)
        var waited = 0
        while forwarder.activeConnections < PortForwarder.maxConnections && waited < 2_000 {
            usleep(10_000)
            waited += 1
        }
        try #require(forwarder.activeConnections == PortForwarder.maxConnections,
                     "only \(forwarder.activeConnections) connections are being relayed after 20 s")
        let extra = try #require(connectedSocket(port: free.port))
        held.append(extra)
        #expect(readAll(extra) == "")

        forwarder.stop()
        // Every relayed connection is closed by stop.
        #expect(readAll(held[0]) == "")
        #expect(connectedSocket(port: free.port) == nil)
    }

    @Test("a host port in use fails, naming the port")
    func taken() throws {
        let busy = try hostListener()
        defer { close(busy.fd) }
        #expect(throws: LinuxError.self) { try PortForwarder.listen(mappings: [Profile.PortMapping(hostPort: busy.port, workerPort: 80)]) }
        do {
            _ = try PortForwarder.listen(mappings: [Profile.PortMapping(hostPort: busy.port, workerPort: 80)])
        } catch {
            #expect(error.stage == .publish)
            #expect(error.message.contains("127.0.0.1:\(busy.port)") && error.message.contains("already in use"))
        }
    }
}
