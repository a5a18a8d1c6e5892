import Foundation
import Glibc
import StockadeTestSupport
import Testing

/// A raw HTTP/1.1 client over a Unix socket (or loopback TCP): one request a connection.
struct HTTPClient {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]

        var text: String { String(decoding: body, as: UTF8.self) }

        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any], "a JSON object: \(status) \(text)")
        }

        /// The error code and field of an error answer.
        func error() throws -> (code: String, field: String?) {
            let error = try #require(try json()["error"] as? [String: Any], "an error object: \(text)")
            return (error["code"] as? String ?? "", error["field"] as? String)
        }
    }

    enum Address {
        case unix(String)
        case tcp(port: UInt16)
    }

    let address: Address

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    func connect(timeoutSeconds: Int = 60) throws -> Int32 {
        switch address {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var sa = unixSocketAddress(path)
            let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            guard rc == 0 else {
                let err = errno
                close(fd)
                throw Failure(description: "connect \(path): \(String(cString: strerror(err)))")
            }
            setTimeout(fd, timeoutSeconds)
            return fd
        case .tcp(let port):
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard rc == 0 else {
                let err = errno
                close(fd)
                throw Failure(description: "connect 127.0.0.1:\(port): \(String(cString: strerror(err)))")
            }
            setTimeout(fd, timeoutSeconds)
            return fd
        }
    }

    private func setTimeout(_ fd: Int32, _ seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // A server that answers (413) without reading the whole body: stop sending, read the answer.
        var send = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send, socklen_t(MemoryLayout<timeval>.size))
    }

    static func head(_ method: String, _ path: String, token: String?, headers: [String: String], bodyCount: Int?) -> [UInt8] {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: stockade\r\nConnection: close\r\n"
        if let token { text += "Authorization: Bearer \(token)\r\n" }
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        if let bodyCount { text += "Content-Length: \(bodyCount)\r\nContent-Type: application/json\r\n" }
        return Array((text + "\r\n").utf8)
    }

    func request(_ method: String, _ path: String, token: String? = nil, headers: [String: String] = [:], body: [UInt8]? = nil) throws -> Response {
        let fd = try connect()
        defer { close(fd) }
        try Self.send(fd, Self.head(method, path, token: token, headers: headers, bodyCount: body?.count ?? (method == "POST" ? 0 : nil)) + (body ?? []))
        var raw: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Failure(description: "read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            raw += chunk[0..<n]
        }
        let response = try Self.parse(raw)
        // Every answer a test receives is held to docs/openapi.json.
        OpenAPIDocument.check(method: method, path: path, response)
        return response
    }

    func request(_ method: String, _ path: String, token: String? = nil, headers: [String: String] = [:], json: String) throws -> Response {
        try request(method, path, token: token, headers: headers, body: Array(json.utf8))
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            // MSG_NOSIGNAL: a closed connection is EPIPE, not a SIGPIPE that ends the test process.
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            // The server may answer (413) and close before it has read a large body.
            if n < 0 && (errno == EPIPE || errno == ECONNRESET || errno == EAGAIN) { return }
            guard n > 0 else { throw Failure(description: "write: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    static func splitHead(_ raw: [UInt8]) -> (status: Int, headers: [String: String], rest: [UInt8])? {
        guard let end = (0..<max(0, raw.count - 3)).first(where: { raw[$0] == 13 && raw[$0 + 1] == 10 && raw[$0 + 2] == 13 && raw[$0 + 3] == 10 }) else { return nil }
        let lines = String(decoding: raw[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1]) ?? 0
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers, Array(raw[(end + 4)...]))
    }

    static func parse(_ raw: [UInt8]) throws -> Response {
        guard let (status, headers, rest) = splitHead(raw) else { throw Failure(description: "no HTTP head in \(String(decoding: raw, as: UTF8.self))") }
        var body = rest
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var decoder = ChunkDecoder()
            body = decoder.feed(rest)
        } else if let length = headers["content-length"].flatMap(Int.init) {
            body = Array(rest.prefix(length))
        }
        return Response(status: status, headers: headers, body: body)
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
struct ChunkDecoder {
    private var pending: [UInt8] = []
    private var remaining = 0
    private(set) var finished = false

    mutating func feed(_ bytes: [UInt8]) -> [UInt8] {
        pending += bytes
        var out: [UInt8] = []
        while !finished {
            if remaining > 0 {
                let take = min(remaining, pending.count)
                if take == 0 { break }
                out += pending[0..<take]
                pending.removeFirst(take)
                remaining -= take
                if remaining == 0 { remaining = -2 } // the CRLF after the data
                continue
            }
            if remaining == -2 {
                guard pending.count >= 2 else { break }
                pending.removeFirst(2)
                remaining = 0
                continue
            }
            guard let lf = pending.firstIndex(of: 10) else { break }
            let line = String(decoding: pending[0..<lf], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            pending.removeFirst(lf + 1)
            let size = Int(line.split(separator: ";").first.map(String.init) ?? "", radix: 16) ?? 0
            if size == 0 { finished = true } else { remaining = size }
        }
        return out
    }
}

/// One Server-Sent Event.
struct SSEEvent: Equatable {
    var id: String?
    var event: String?
    var data: String
}

/// A live event stream: read events as they come, then cut the connection.
final class EventStreamReader {
    let fd: Int32
    private var decoder = ChunkDecoder()
    private var text = ""
    private var headParsed = false
    private var raw: [UInt8] = []
    private(set) var status = 0

    init(client: HTTPClient, path: String, token: String, headers: [String: String] = [:]) throws {
        fd = try client.connect(timeoutSeconds: 20)
        try HTTPClient.send(fd, HTTPClient.head("GET", path, token: token, headers: headers, bodyCount: nil))
    }

    deinit { close(fd) }

    /// Reads and counts everything until the server closes the connection (or `seconds` pass
    /// with nothing read): true when the server closed it.
    func drainUntilClosed(seconds: Int) -> (closed: Bool, events: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var count = 0
        while true {
            do {
                guard try next() != nil else { break }
                count += 1
            } catch {
                break
            }
        }
        // next() returns nil at EOF (read 0) and at the timeout (read -1, EAGAIN).
        var probe: UInt8 = 0
        let n = recv(fd, &probe, 1, Int32(MSG_DONTWAIT))
        return (n == 0, count)
    }

    /// The next event (comments skipped), or nil when the stream ended or timed out.
    func next() throws -> SSEEvent? {
        while true {
            if let range = text.range(of: "\n\n") {
                let block = String(text[..<range.lowerBound])
                text.removeSubrange(..<range.upperBound)
                var event = SSEEvent(id: nil, event: nil, data: "")
                var any = false
                for line in block.split(separator: "\n", omittingEmptySubsequences: false) where !line.hasPrefix(":") {
                    let field = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                    let value = field.count > 1 ? String(field[1].drop(while: { $0 == " " })) : ""
                    switch field[0] {
                    case "id": event.id = value; any = true
                    case "event": event.event = value; any = true
                    case "data": event.data += value; any = true
                    default: break
                    }
                }
                if any { return event }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            var bytes = Array(chunk[0..<n])
            if !headParsed {
                raw += bytes
                guard let (status, _, rest) = HTTPClient.splitHead(raw) else { continue }
                self.status = status
                headParsed = true
                bytes = rest
            }
            text += String(decoding: decoder.feed(bytes), as: UTF8.self)
        }
    }
}

/// A running `stockade serve` on a Unix socket in a fresh temporary directory.
final class ServerHarness {
    let directory: String
    let stateDirectory: String
    let socketPath: String
    let process = Process()
    let logPath: String

    static let binDirectory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while url.path != "/" {
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("stockade-server").path) { return url.path }
            url = url.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    static var stockade: String { binDirectory + "/stockade" }

    /// Runs need root (ids, cgroups) and user namespaces.
    static let canSandbox: Bool = {
        guard getuid() == 0 else { return false }
        let max = (try? String(contentsOfFile: "/proc/sys/user/max_user_namespaces", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        return max > 0 && FileManager.default.fileExists(atPath: "/proc/self/ns/user")
    }()

    var client: HTTPClient { HTTPClient(address: .unix(socketPath)) }

    /// Removes the directory at the end unless it is another harness's (`sharing`).
    private let ownsDirectory: Bool

    init(arguments: [String] = [], start: Bool = true, sharing other: ServerHarness? = nil, environment: [String: String] = [:]) throws {
        directory = other?.directory ?? "/tmp/stk-serve-" + UUID().uuidString.prefix(8)
        ownsDirectory = other == nil
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        stateDirectory = directory + "/state"
        socketPath = directory + "/api.sock"
        logPath = directory + (other == nil ? "/server.log" : "/server-\(UUID().uuidString.prefix(4)).log")
        if start { try self.start(arguments, environment: environment) }
    }

    /// The environment the daemon got beyond this process's (`$STOCKADE_STORE`…): `stockade(_:)` passes
    /// it on, so `token create` writes where the daemon reads.
    private(set) var environment: [String: String] = [:]

    func start(_ arguments: [String], listen: String? = nil, environment: [String: String] = [:]) throws {
        self.environment = environment
        process.executableURL = URL(fileURLWithPath: Self.stockade)
        process.arguments = ["serve", "--listen", listen ?? "unix://\(socketPath)", "--state-dir", stateDirectory] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try waitUntilServing(listen.map { _ in nil } ?? client)
    }

    func waitUntilServing(_ client: HTTPClient?) throws {
        for _ in 0..<300 {
            guard process.isRunning else { throw HTTPClient.Failure(description: "stockade serve exited \(process.terminationStatus): \(log)") }
            if let client, let response = try? client.request("GET", "/v1/health"), response.status == 200 { return }
            if client == nil, log.contains("service.listening") { return }
            usleep(50_000)
        }
        throw HTTPClient.Failure(description: "stockade serve did not answer within 15 s: \(log)")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// `stockade ARGS --state-dir STATE`.
    func stockade(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try Self.exec(Self.stockade, arguments + ["--state-dir", stateDirectory], environment: environment)
    }

    func token(_ name: String, scopes: String, ttl: String = "1h") throws -> String {
        let result = try stockade(["token", "create", "--name", name, "--scope", scopes, "--ttl", ttl])
        #expect(result.status == 0, "token create: \(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// SIGTERM, then the exit status (nil if it did not exit within `seconds`).
    func terminate(within seconds: Double = 20) -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    static func exec(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("stk-out-\(UUID().uuidString)")
        let err = FileManager.default.temporaryDirectory.appendingPathComponent("stk-err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return (process.terminationStatus, (try? String(contentsOf: out, encoding: .utf8)) ?? "", (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }
}
