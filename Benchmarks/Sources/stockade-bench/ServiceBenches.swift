import Glibc

// The service's figures (issue 17): `stockade-server` on a Unix socket in a fresh state directory,
// driven over raw HTTP/1.1 by this process's threads (one request a connection, as a simple engine
// would, and one kept connection a client, as `stockade run --host` does): sustained runs per second from 8 clients, submit → first byte of output and submit →
// report (p50/p99), and the daemon's RSS with 100 runs queued and 50 running.

/// One HTTP/1.1 exchange over a Unix socket: the status, the body, and when the first byte of the
/// body arrived (monotonic ns), or nil when the connection failed.
struct Exchange {
    var status: Int
    var body: [UInt8]
    var firstBodyByteAt: UInt64?
}

func httpUnix(_ socketPath: String, _ method: String, _ path: String, token: String?, body: String? = nil) -> Exchange? {
    let fd = connectUnix(socketPath)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var head = "\(method) \(path) HTTP/1.1\r\nHost: stockade\r\nConnection: close\r\n"
    if let token { head += "Authorization: Bearer \(token)\r\n" }
    let payload = Array((body ?? "").utf8)
    if method == "POST" { head += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
    guard sendAll(fd, Array((head + "\r\n").utf8) + payload) else { return nil }
    var raw: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    var headEnd: Int?
    var firstBody: UInt64?
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        raw += buffer[0..<n]
        if headEnd == nil, let end = findHeadEnd(raw) { headEnd = end }
        // The first byte of a chunked body is the first data byte after the first chunk-size line.
        if firstBody == nil, let end = headEnd, raw.count > end + 4, bodyHasData(raw[(end + 4)...]) { firstBody = nowNanos() }
    }
    guard let end = headEnd, let statusLine = String(decoding: raw[0..<end], as: UTF8.self).split(separator: "\r\n").first,
          let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else { return nil }
    let headers = String(decoding: raw[0..<end], as: UTF8.self).lowercased()
    var payloadOut = Array(raw[(end + 4)...])
    if headers.contains("transfer-encoding: chunked") { payloadOut = dechunk(payloadOut) }
    return Exchange(status: status, body: payloadOut, firstBodyByteAt: firstBody)
}

/// One kept HTTP/1.1 connection over a Unix socket (keep-alive, as `stockade run --host` and an engine
/// use the service): requests one after another, each answer framed by Content-Length or chunked
/// encoding. Reconnects when the service closed it (or said `Connection: close`).
final class KeptConnection {
    let socketPath: String
    private var fd: Int32 = -1
    private(set) var connects = 0

    init(_ socketPath: String) { self.socketPath = socketPath }
    deinit { if fd >= 0 { close(fd) } }

    func exchange(_ method: String, _ path: String, token: String?, body: String? = nil) -> Exchange? {
        if fd < 0 {
            fd = connectUnix(socketPath)
            guard fd >= 0 else { return nil }
            connects += 1
        }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: stockade\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        let payload = Array((body ?? "").utf8)
        if method == "POST" { head += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
        guard sendAll(fd, Array((head + "\r\n").utf8) + payload), let answer = readFramed() else {
            close(fd); fd = -1
            return nil
        }
        if !answer.keep { close(fd); fd = -1 }
        return answer.exchange
    }

    /// One framed answer; `keep` false when the connection cannot carry another request.
    private func readFramed() -> (exchange: Exchange, keep: Bool)? {
        var raw: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        func more() -> Bool {
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                raw += buffer[0..<n]
                return true
            }
        }
        var end: Int? = nil
        while end == nil {
            guard more() else { return nil }
            end = findHeadEnd(raw)
        }
        let headText = String(decoding: raw[0..<end!], as: UTF8.self)
        let lines = headText.split(separator: "\r\n")
        guard let status = lines.first.flatMap({ Int($0.split(separator: " ").dropFirst().first ?? "") }) else { return nil }
        var length: Int?, chunked = false, keep = true
        for line in lines.dropFirst() {
            let lower = line.lowercased()
            if lower.hasPrefix("content-length:") { length = Int(String(lower.dropFirst("content-length:".count)).trimmingCharacters(in: " ")) }
            if lower.hasPrefix("transfer-encoding:") && lower.contains("chunked") { chunked = true }
            if lower.hasPrefix("connection:") && lower.contains("close") { keep = false }
        }
        let bodyStart = end! + 4
        if let length, !chunked {
            while raw.count < bodyStart + length { guard more() else { return nil } }
            return (Exchange(status: status, body: Array(raw[bodyStart..<(bodyStart + length)]), firstBodyByteAt: nil), keep)
        }
        if chunked {
            // Complete when a zero-size chunk and its final CRLF have arrived.
            while true {
                if let body = completeChunked(raw[bodyStart...]) { return (Exchange(status: status, body: body, firstBodyByteAt: nil), keep) }
                guard more() else { return nil }
            }
        }
        while more() {}
        return (Exchange(status: status, body: Array(raw[bodyStart...]), firstBodyByteAt: nil), false)
    }
}

/// The data of a chunked body once its last chunk has arrived; nil while it has not.
private func completeChunked(_ body: ArraySlice<UInt8>) -> [UInt8]? {
    var out: [UInt8] = []
    var i = body.startIndex
    while let lf = body[i...].firstIndex(of: 10) {
        guard let size = Int(String(decoding: body[i..<lf], as: UTF8.self).trimmingCharacters(in: " \r"), radix: 16) else { return nil }
        let start = lf + 1
        if size == 0 { return body.endIndex >= start + 2 ? out : nil }
        guard body.endIndex >= start + size + 2 else { return nil }
        out += body[start..<(start + size)]
        i = start + size + 2
    }
    return nil
}

private func connectUnix(_ socketPath: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var sa = sockaddr_un()
    sa.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &sa.sun_path) { raw in
        let bytes = Array(socketPath.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    if rc != 0 { close(fd); return -1 }
    return fd
}

private func sendAll(_ fd: Int32, _ request: [UInt8]) -> Bool {
    var offset = 0
    while offset < request.count {
        let n = request[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        offset += n
    }
    return true
}

private func findHeadEnd(_ raw: [UInt8]) -> Int? {
    guard raw.count >= 4 else { return nil }
    for i in 0...(raw.count - 4) where raw[i] == 13 && raw[i + 1] == 10 && raw[i + 2] == 13 && raw[i + 3] == 10 { return i }
    return nil
}

/// True when a (chunked or plain) body has at least one data byte: for chunked, a size line of a
/// non-zero chunk followed by a byte.
private func bodyHasData(_ body: ArraySlice<UInt8>) -> Bool {
    guard let lf = body.firstIndex(of: 10) else { return false }
    let sizeText = String(decoding: body[body.startIndex..<lf], as: UTF8.self).trimmingCharacters(in: " \r")
    if let size = Int(sizeText, radix: 16) { return size > 0 && body.endIndex > lf + 1 }
    return true // not chunked: any byte
}

private extension String {
    func trimmingCharacters(in set: String) -> String {
        let drop = Set(set.utf8)
        let bytes = Array(utf8)
        var start = 0, end = bytes.count
        while start < end, drop.contains(bytes[start]) { start += 1 }
        while end > start, drop.contains(bytes[end - 1]) { end -= 1 }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }
}

private func dechunk(_ body: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    while i < body.count, let lf = body[i...].firstIndex(of: 10) {
        let size = Int(String(decoding: body[i..<lf], as: UTF8.self).trimmingCharacters(in: " \r"), radix: 16) ?? 0
        if size == 0 { break }
        let start = lf + 1
        out += body[start..<min(start + size, body.count)]
        i = start + size + 2
    }
    return out
}

/// The string value of `"key":"…"` in a JSON body (ids only: no escapes in them).
func jsonString(_ body: [UInt8], _ key: String) -> String? {
    let text = String(decoding: body, as: UTF8.self)
    guard let range = text.range(of: "\"\(key)\":\"") else { return nil }
    let rest = text[range.upperBound...]
    guard let close = rest.firstIndex(of: "\"") else { return nil }
    return String(rest[..<close])
}

/// A thread running `body`, joined by `join()`.
final class Worker: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void

    init(_ body: @escaping () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self).toOpaque()
        guard pthread_create(&thread, nil, { raw in
            let worker = Unmanaged<Worker>.fromOpaque(raw!).takeRetainedValue()
            worker.body()
            return nil
        }, box) == 0 else { fail("pthread_create failed") }
    }

    func join() { pthread_join(thread, nil) }
}

final class Locked<T>: @unchecked Sendable {
    private var value: T
    private var mutex = pthread_mutex_t()
    init(_ value: T) { self.value = value; pthread_mutex_init(&mutex, nil) }
    func with<R>(_ body: (inout T) -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body(&value)
    }
}

struct ServiceDaemon {
    let pid: pid_t
    let socket: String
    let token: String
    let stateDir: String

    /// `store`: `--store URL` for the token and the daemon (nil: the state directory's SQLite file);
    /// `token`: one made already (on that store); `extra`: more daemon flags (`--node …`).
    static func start(server: String, stockade: String, work: String, name: String, maxRunning: Int, maxQueued: Int,
                      store: String? = nil, token given: String? = nil, extra: [String] = []) -> ServiceDaemon {
        let stateDir = work + "/state-\(name)"
        let socketPath = work + "/\(name).sock"
        makeDirectory(stateDir)
        let storeFlags = store.map { ["--store", $0] } ?? []
        // The token first (the CLI creates the database), then the daemon on the same state directory.
        var token = given ?? ""
        if given == nil {
            let tokenChild = spawn([stockade, "token", "create", "--state-dir", stateDir, "--name", "bench-\(name)", "--scope", "run:read,run:write,admin", "--ttl", "2h"] + storeFlags,
                                   stderrPath: work + "/token-stderr.log")
            readLines(tokenChild.stdout) { line, _ in if token.isEmpty { token = String(decoding: line, as: UTF8.self) } }
            guard waitExit(tokenChild.pid) == 0, token.hasPrefix("stk_") else { fail("stockade token create failed (see \(work)/token-stderr.log)") }
        }
        let child = spawn([server, "--listen", "unix://" + socketPath, "--state-dir", stateDir, "--max-running", String(maxRunning),
                           "--max-queued", String(maxQueued), "--grace", "0s"] + storeFlags + extra, stderrPath: work + "/server-\(name).log")
        close(child.stdout)
        for _ in 0..<600 {
            if let health = httpUnix(socketPath, "GET", "/v1/health", token: nil), health.status == 200 {
                return ServiceDaemon(pid: child.pid, socket: socketPath, token: token, stateDir: stateDir)
            }
            usleep(20_000)
        }
        kill(child.pid, SIGKILL)
        fail("stockade-server did not answer /v1/health within 12 s (see \(work)/server-\(name).log)")
    }

    func stop() {
        kill(pid, SIGTERM)
        _ = waitExit(pid)
    }

    /// Submits `command` and returns the run id.
    func submit(_ command: [String]) -> String? {
        let argv = command.map { "\"\($0)\"" }.joined(separator: ",")
        guard let answer = httpUnix(socket, "POST", "/v1/runs", token: token, body: "{\"command\":[\(argv)]}"), answer.status == 202 else { return nil }
        return jsonString(answer.body, "id")
    }
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int((p / 100 * Double(sorted.count - 1)).rounded()))]
}

/// `stockade-bench serve --server BIN --stockade BIN --work DIR [--quick]`
func serve(_ args: [String]) {
    let quick = args.contains("--quick")
    let server = required("--server", in: args)
    let stockade = required("--stockade", in: args)
    let work = required("--work", in: args)
    makeDirectory(work)

    // (a) Sustained throughput: 8 clients, each submitting /bin/true and waiting for its report.
    let clients = 8
    let perClient = quick ? 50 : 250
    // Each client either opens a connection per request (a simple engine) or keeps one (keep-alive, as
    // `stockade run --host` does: the submission and its wait on one connection).
    for (kept, maxRunning) in [(false, 4), (false, 8), (true, 4), (true, 8)] {
        let how = kept ? "a kept connection each" : "a connection per request"
        progress("service throughput: \(clients) clients × \(perClient) runs of /bin/true, \(how), --max-running \(maxRunning)")
        let daemon = ServiceDaemon.start(server: server, stockade: stockade, work: work, name: "tput\(kept ? "k" : "")\(maxRunning)",
                                         maxRunning: maxRunning, maxQueued: 1000)
        // Warm-up: the first runs pay for the spawn helpers and the database's first pages.
        for _ in 0..<20 { if let id = daemon.submit(["/bin/true"]) { _ = httpUnix(daemon.socket, "GET", "/v1/runs/\(id)/wait", token: daemon.token) } }
        let latencies = Locked<[Double]>([])
        let failures = Locked(0)
        let start = nowNanos()
        let connects = Locked(0)
        let workers = (0..<clients).map { _ in
            Worker {
                let connection = KeptConnection(daemon.socket)
                func call(_ method: String, _ path: String, body: String? = nil) -> Exchange? {
                    kept ? connection.exchange(method, path, token: daemon.token, body: body)
                        : httpUnix(daemon.socket, method, path, token: daemon.token, body: body)
                }
                defer { connects.with { $0 += kept ? connection.connects : 2 * perClient } }
                for _ in 0..<perClient {
                    let t0 = nowNanos()
                    guard let submitted = call("POST", "/v1/runs", body: "{\"command\":[\"/bin/true\"]}"), submitted.status == 202,
                          let id = jsonString(submitted.body, "id"),
                          let report = call("GET", "/v1/runs/\(id)/wait"), report.status == 200,
                          contains(report.body, "\"outcome\":\"exited\"") else {
                        failures.with { $0 += 1 }
                        continue
                    }
                    let ms = Double(nowNanos() - t0) / 1e6
                    latencies.with { $0.append(ms) }
                }
            }
        }
        workers.forEach { $0.join() }
        let seconds = Double(nowNanos() - start) / 1e9
        let done = latencies.with { $0 }
        let failed = failures.with { $0 }
        let perSecond = Double(done.count) / seconds
        emit(Row(name: "service: /bin/true runs/s, \(clients) clients, \(how), --max-running \(maxRunning)", median: fmt(perSecond, 0) + " runs/s",
                 spread: "–", target: "≥ 500 runs/s", verdict: perSecond >= 500 ? "met" : "not met",
                 note: "\(done.count) runs in \(fmt(seconds, 1)) s\(failed > 0 ? ", \(failed) failed" : ""), \(connects.with { $0 }) connections; submit → report under load p50 \(fmt(percentile(done, 50), 1)) ms, p99 \(fmt(percentile(done, 99), 1)) ms"))
        daemon.stop()
    }

    // (b) Latency, one client at a time: submit → first byte of output (logs?follow=true) and submit → report.
    do {
        let n = quick ? 50 : 200
        progress("service latency: \(n) runs of echo, one at a time")
        let daemon = ServiceDaemon.start(server: server, stockade: stockade, work: work, name: "latency", maxRunning: 2, maxQueued: 16)
        for _ in 0..<10 { if let id = daemon.submit(["/bin/true"]) { _ = httpUnix(daemon.socket, "GET", "/v1/runs/\(id)/wait", token: daemon.token) } }
        var firstByte: [Double] = []
        var toReport: [Double] = []
        var followUnsupported = false
        for i in 0..<(2 * n) {
            let t0 = nowNanos()
            guard let id = daemon.submit(["/bin/echo", "hello"]) else { continue }
            // Alternately: follow the output (submit → its first byte), or wait for the report.
            if i % 2 == 0 {
                if !followUnsupported, let logs = httpUnix(daemon.socket, "GET", "/v1/runs/\(id)/logs?stream=stdout&follow=true", token: daemon.token) {
                    if logs.status == 200, let at = logs.firstBodyByteAt { firstByte.append(Double(at - t0) / 1e6) } else if logs.status == 400 { followUnsupported = true }
                }
                _ = httpUnix(daemon.socket, "GET", "/v1/runs/\(id)/wait", token: daemon.token)
                continue
            }
            guard let report = httpUnix(daemon.socket, "GET", "/v1/runs/\(id)/wait", token: daemon.token), report.status == 200 else { continue }
            toReport.append(Double(nowNanos() - t0) / 1e6)
        }
        daemon.stop()
        if firstByte.isEmpty {
            emit(Row(name: "service: submit → first byte of output", median: "n/a", spread: "–", target: "p50 ≤ 20 ms", verdict: "–",
                     note: followUnsupported ? "logs?follow=true not supported by this build" : "no run produced a followed byte"))
        } else {
            let p50 = percentile(firstByte, 50)
            emit(Row(name: "service: submit → first byte of output (one client)", median: fmt(p50, 2) + " ms",
                     spread: fmt(percentile(firstByte, 10), 2) + " – " + fmt(percentile(firstByte, 90), 2) + " ms", target: "p50 ≤ 20 ms",
                     verdict: p50 <= 20 ? "met" : "not met", note: "p99 \(fmt(percentile(firstByte, 99), 2)) ms over \(firstByte.count) runs of echo"))
        }
        let p50 = percentile(toReport, 50)
        emit(Row(name: "service: submit → report (one client)", median: fmt(p50, 2) + " ms",
                 spread: fmt(percentile(toReport, 10), 2) + " – " + fmt(percentile(toReport, 90), 2) + " ms", target: "p50 ≤ 20 ms",
                 verdict: p50 <= 20 ? "met" : "not met", note: "p99 \(fmt(percentile(toReport, 99), 2)) ms over \(toReport.count) runs"))
    }

    // (c) The daemon's memory with 50 runs running and 100 queued.
    do {
        progress("service RSS: 50 running, 100 queued (sleep 30)")
        let daemon = ServiceDaemon.start(server: server, stockade: stockade, work: work, name: "rss", maxRunning: 50, maxQueued: 100)
        let idle = memoryOf(daemon.pid)?.rss ?? 0
        var ids: [String] = []
        for _ in 0..<150 { if let id = daemon.submit(["/bin/sleep", "30"]) { ids.append(id) } }
        var peak = 0, running = 0, queued = 0
        for _ in 0..<300 {
            if let health = httpUnix(daemon.socket, "GET", "/v1/health", token: nil) {
                let text = String(decoding: health.body, as: UTF8.self)
                running = jsonInt(Array(text.utf8), "running") ?? 0
                queued = jsonInt(Array(text.utf8), "queued") ?? 0
            }
            peak = max(peak, memoryOf(daemon.pid)?.rss ?? 0)
            if running == 50 && queued == 100 { break }
            usleep(50_000)
        }
        for _ in 0..<20 { peak = max(peak, memoryOf(daemon.pid)?.rss ?? 0); usleep(50_000) }
        for id in ids { _ = httpUnix(daemon.socket, "POST", "/v1/runs/\(id)/cancel", token: daemon.token) }
        daemon.stop()
        emit(Row(name: "service: daemon RSS, \(running) running + \(queued) queued", median: fmt(Double(peak) / 1024, 1) + " MiB", spread: "–",
                 target: "–", verdict: "–", note: "idle \(fmt(Double(idle) / 1024, 1)) MiB; \(ids.count) of 150 submissions accepted"))
    }
}

