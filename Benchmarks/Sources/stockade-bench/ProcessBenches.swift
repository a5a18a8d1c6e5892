import Glibc

/// A child process with its standard output on a pipe.
struct Child {
    let pid: pid_t
    let stdout: Int32
}

/// Starts `argv` with stdin from /dev/null, stdout on a pipe and stderr appended to `stderrPath`.
func spawn(_ argv: [String], stderrPath: String) -> Child {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { fail("pipe: \(String(cString: strerror(errno)))") }
    _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    var pid: pid_t = 0
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
    close(fds[1])
    guard rc == 0 else { fail("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
    return Child(pid: pid, stdout: fds[0])
}

func waitExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        if errno != EINTR { return -1 }
    }
    return status
}

/// Reads lines from `fd` until EOF, calling `body` with each line and the time it arrived, and `tick`
/// at least every `tickMillis` while waiting.
func readLines(_ fd: Int32, tickMillis: Int32 = 1000, tick: () -> Void = {}, _ body: ([UInt8], UInt64) -> Void) {
    var pending: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    var lastTick = nowNanos()
    while true {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pfd, 1, tickMillis)
        if nowNanos() - lastTick >= UInt64(tickMillis) * 1_000_000 {
            tick()
            lastTick = nowNanos()
        }
        if ready < 0 && errno == EINTR { continue }
        if ready == 0 { continue }
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        let at = nowNanos()
        pending += buffer[0..<n]
        while let newline = pending.firstIndex(of: 0x0A) {
            body(Array(pending[..<newline]), at)
            pending.removeSubrange(...newline)
        }
    }
    if !pending.isEmpty { body(pending, nowNanos()) }
    close(fd)
}

/// The integer after `"key":` in a report line, or nil.
func jsonInt(_ line: [UInt8], _ key: String) -> Int? {
    let needle = Array("\"\(key)\":".utf8)
    guard line.count >= needle.count else { return nil }
    for i in 0...(line.count - needle.count) where line[i..<(i + needle.count)].elementsEqual(needle) {
        var j = i + needle.count
        while j < line.count, line[j] == 0x20 { j += 1 }
        var value = 0
        var digits = 0
        while j < line.count, line[j] >= 0x30, line[j] <= 0x39 {
            value = value * 10 + Int(line[j] - 0x30)
            j += 1
            digits += 1
        }
        return digits > 0 ? value : nil
    }
    return nil
}

func contains(_ line: [UInt8], _ text: String) -> Bool {
    let needle = Array(text.utf8)
    guard line.count >= needle.count else { return false }
    for i in 0...(line.count - needle.count) where line[i..<(i + needle.count)].elementsEqual(needle) { return true }
    return false
}

func writeRequests(_ path: String, count: Int, command: [String]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { fail("cannot create \(path): \(String(cString: strerror(errno)))") }
    let argv = command.map { "\"\($0)\"" }.joined(separator: ",")
    var text = ""
    for i in 0..<count { text += "{\"id\":\"r\(i)\",\"command\":[\(argv)]}\n" }
    let bytes = Array(text.utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { fail("cannot write \(path)") }
        off += n
    }
    close(fd)
}

struct BatchResult {
    let runs: Int
    let failed: Int
    let wallSeconds: Double
    /// Time between consecutive report lines (steady state, supervisor start excluded).
    let interArrivalMs: Summary
    /// The reports' own durationMs (spawn to worker exit).
    let durationMs: Summary
    /// Supervisor start to the first report.
    let firstReportMs: Double
}

/// Runs `stockade batch --parallel P` over `runs` requests of `command` in `stateDir` and times each report line.
func runBatch(stockade: String, stateDir: String, runs: Int, parallel: Int, command: [String], workDir: String,
              stallSeconds: Int = 30) -> BatchResult {
    let requests = workDir + "/requests-\(parallel)-\(runs).jsonl"
    writeRequests(requests, count: runs, command: command)
    let start = nowNanos()
    let child = spawn([stockade, "batch", "--parallel", String(parallel), "--state-dir", stateDir, requests],
                      stderrPath: workDir + "/batch-stderr.log")
    var arrivals: [UInt64] = []
    var durations: [Double] = []
    var failed = 0
    // A batch that stops reporting is killed (its workers die with it: parent-death signal), not waited on forever.
    var killed = false
    readLines(child.stdout, tickMillis: 500, tick: {
        let last = arrivals.last ?? start
        if !killed, nowNanos() - last > UInt64(stallSeconds) * 1_000_000_000 {
            writeError("stockade-bench: no report for \(stallSeconds) s after \(arrivals.count) of \(runs) runs: killing stockade batch (pid \(child.pid))")
            kill(child.pid, SIGKILL)
            killed = true
        }
    }) { line, at in
        arrivals.append(at)
        if let d = jsonInt(line, "durationMs") { durations.append(Double(d)) }
        if !(contains(line, "\"outcome\":\"exited\"") && jsonInt(line, "exitCode") == 0) { failed += 1 }
    }
    let status = waitExit(child.pid)
    let end = nowNanos()
    unlink(requests)
    if status != 0 { writeError("stockade-bench: stockade batch exited with status \(status)\(killed ? " (killed: stalled)" : "")") }
    var gaps: [Double] = []
    for i in 1..<max(arrivals.count, 1) { gaps.append(Double(arrivals[i] - arrivals[i - 1]) / 1e6) }
    return BatchResult(runs: arrivals.count, failed: failed + max(0, runs - arrivals.count),
                       wallSeconds: Double(end - start) / 1e9, interArrivalMs: Summary(gaps), durationMs: Summary(durations),
                       firstReportMs: arrivals.first.map { Double($0 - start) / 1e6 } ?? .nan)
}

/// Reads `VmRSS` and `VmHWM` (kB) of `pid` from /proc.
func memoryOf(_ pid: pid_t) -> (rss: Int, hwm: Int)? {
    let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 8192)
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return nil }
    var rss: Int?
    var hwm: Int?
    for line in buffer[0..<n].split(separator: 0x0A) {
        let l = Array(line)
        if l.starts(with: Array("VmRSS:".utf8)) { rss = jsonIntAfterColon(l) }
        if l.starts(with: Array("VmHWM:".utf8)) { hwm = jsonIntAfterColon(l) }
    }
    guard let rss, let hwm else { return nil }
    return (rss, hwm)
}

private func jsonIntAfterColon(_ line: [UInt8]) -> Int? {
    var value = 0
    var digits = 0
    for b in line where b >= 0x30 && b <= 0x39 {
        value = value * 10 + Int(b - 0x30)
        digits += 1
    }
    return digits > 0 ? value : nil
}

/// Threads of `pid`, and the processes those threads have as children (the workers' init processes).
func threadsAndChildren(_ pid: pid_t) -> (threads: Int, children: Int) {
    guard let dir = opendir("/proc/\(pid)/task") else { return (0, 0) }
    defer { closedir(dir) }
    var threads = 0
    var children = 0
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        if name.hasPrefix(".") { continue }
        threads += 1
        let fd = open("/proc/\(pid)/task/\(name)/children", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { continue }
        var buffer = [UInt8](repeating: 0, count: 16384)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        close(fd)
        if n > 0 { children += buffer[0..<n].split(separator: 0x20).count }
    }
    return (threads, children)
}

struct RSSResult {
    let peakRSSkB: Int
    let hwmkB: Int
    let threads: Int
    let samples: Int
    let wallSeconds: Double
    let failed: Int
    let concurrentMax: Int
}

/// `stockade batch --parallel workers` over `workers` requests of `sleep seconds`, sampling the supervisor's
/// VmRSS and VmHWM (and its threads and child processes) every 20 ms from /proc while its workers sleep.
func runRSS(stockade: String, stateDir: String, workers: Int, sleepSeconds: Int, workDir: String) -> RSSResult {
    let requests = workDir + "/requests-rss-\(workers).jsonl"
    writeRequests(requests, count: workers, command: ["/bin/sleep", String(sleepSeconds)])
    let start = nowNanos()
    let child = spawn([stockade, "batch", "--parallel", String(workers), "--state-dir", stateDir, requests],
                      stderrPath: workDir + "/rss-stderr.log")
    var peak = 0, hwm = 0, threads = 0, samples = 0, concurrent = 0
    var failed = 0
    var lines = 0
    readLines(child.stdout, tickMillis: 20, tick: {
        guard let m = memoryOf(child.pid) else { return }
        samples += 1
        peak = max(peak, m.rss)
        hwm = max(hwm, m.hwm)
        let tc = threadsAndChildren(child.pid)
        threads = max(threads, tc.threads)
        concurrent = max(concurrent, tc.children)
    }) { line, _ in
        lines += 1
        if !(contains(line, "\"outcome\":\"exited\"") && jsonInt(line, "exitCode") == 0) { failed += 1 }
    }
    _ = waitExit(child.pid)
    let end = nowNanos()
    unlink(requests)
    return RSSResult(peakRSSkB: peak, hwmkB: hwm, threads: threads, samples: samples, wallSeconds: Double(end - start) / 1e9,
                     failed: failed + max(0, workers - lines), concurrentMax: concurrent)
}
