import Glibc

/// Which process the kernel's OOM killer chose, from what the kernel itself logs.
///
/// A cgroup's OOM counter says that *some* process of the run was OOM-killed, not which: a worker
/// that lets a child be OOM-killed and then sends itself SIGKILL would look OOM-killed by the
/// counter and its wait status alone. The kernel names every victim in its log, with its host pid
/// and memory cgroup (`oom-kill:constraint=...,task_memcg=/stockade/<run>,task=sh,pid=123,uid=...`),
/// and only the kernel writes that line.
public enum OOMEvidence {
    /// The worker's main process (init's only child right after the spawn), in host pid terms.
    public static func mainProcess(ofInit initPid: Int32) -> Int32? {
        let fd = open("/proc/\(initPid)/task/\(initPid)/children", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let digits = buffer[0..<n].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        return Int32(String(decoding: digits, as: UTF8.self))
    }

    /// Keeps the OOM killer off the worker's init (`oom_score_adj` -1000, written as host root):
    /// init holds a copy of the spawn helper's pages, so a small fork bomb's OOM could otherwise
    /// pick init, whose death ends the namespace and hides which process used the memory. Called
    /// after the worker is forked, so nothing inherits the value. Best effort: false if refused.
    @discardableResult
    public static func exempt(initPid: Int32) -> Bool {
        let fd = open("/proc/\(initPid)/oom_score_adj", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, "-1000", 5) == 5
    }

    /// The times a run's OOM evidence is read over, in microseconds of CLOCK_MONOTONIC (the log's
    /// clock), from the run's spawn and the end of its main process (nanoseconds of the same clock).
    public struct Window: Equatable, Sendable {
        /// Lines count from two seconds before the spawn: the log's clock and this one may differ by a little.
        public var sinceMicros: UInt64
        /// For a "no" the log must hold every record of the run's last ten seconds, or of the whole run
        /// if shorter: the OOM killer logs its victim just before the victim dies.
        public var completeFromMicros: UInt64

        public static let slackMicros: UInt64 = 2_000_000
        public static let lastMicros: UInt64 = 10_000_000

        public init(spawnedAtNanos: UInt64, endedAtNanos: UInt64) {
            let start = spawnedAtNanos / 1000, ended = max(endedAtNanos / 1000, start)
            sinceMicros = start - min(start, Self.slackMicros)
            completeFromMicros = max(start, ended - min(ended, Self.lastMicros))
        }

        public init(sinceMicros: UInt64, completeFromMicros: UInt64) {
            self.sinceMicros = sinceMicros
            self.completeFromMicros = completeFromMicros
        }
    }

    /// Whether the kernel's log names one of `pids` (the main process, and the init whose death
    /// ends the namespace) as an OOM victim of the run's memory cgroup: true or false, or nil when
    /// the log cannot tell.
    ///
    /// Two lines name a victim: the summary `oom-kill:...,task_memcg=/stockade/<run>,task=...,pid=N,`
    /// (part of the OOM report, which the kernel rate-limits) and `Memory cgroup out of memory:
    /// Killed process N (comm)` (never rate-limited). The first must name this run's cgroup; the
    /// second names a host pid, which only the run's main process holds since the run started, so
    /// only lines from `window.sinceMicros` on count.
    ///
    /// The log is a ring (128 KiB on Debian's kernels): an OOM report lists every task of its
    /// memory cgroup, so a fork bomb's report, in this run or a concurrent one, can overwrite the
    /// victim's line before it is read. "No" is only said while the log still holds every record
    /// since `window.completeFromMicros` (the run's last seconds: a victim's line comes just before
    /// its death); where records of that
    /// time are gone, or the log cannot be read at all (no `/dev/kmsg`, or no permission), the
    /// answer is nil.
    ///
    /// Read again for up to `settleMicros` while the answer is no: the kernel sends the victim its
    /// SIGKILL before it logs "Killed process", so a supervisor quick to see the death of a victim
    /// that was not the allocating task can read the log before the line is there. Only a run whose
    /// cgroup counted an OOM kill and whose main process died by SIGKILL gets here: the honest case
    /// answers at the first read, a spoof waits the whole window.
    public static func killedByOOM(pids: [Int32], cgroupName: String, window: Window, settleMicros: UInt32) -> Bool? {
        var answer = killedByOOM(pids: pids, cgroupName: cgroupName, window: window)
        var waited: UInt32 = 0
        while answer == false && waited < settleMicros {
            usleep(20_000)
            waited += 20_000
            answer = killedByOOM(pids: pids, cgroupName: cgroupName, window: window)
        }
        return answer
    }

    /// One reading of the whole log (see above).
    public static func killedByOOM(pids: [Int32], cgroupName: String, window: Window) -> Bool? {
        KernelLog.read { next in scan(pids: pids, cgroupName: cgroupName, window: window, next: next) } ?? nil
    }

    /// The decision over the log's records, as `next` gives them (oldest first).
    static func scan(pids: [Int32], cgroupName: String, window: Window, next: () -> KernelLog.Read) -> Bool? {
        let memcg = Array(("/" + cgroupName).utf8)
        let killed = pids.map { Array("Memory cgroup out of memory: Killed process \($0) (".utf8) }
        var readAny = false
        // The first record after a gap (the start, or records overwritten while reading) must be
        // from before `window.completeFromMicros`, or some of the records that matter may be gone.
        var afterGap = true
        var complete = true
        for _ in 0..<1_000_000 {
            let line: ArraySlice<UInt8>
            switch next() {
            case .record(let r): line = r
            case .lost: afterGap = true; continue
            case .end: return complete && readAny ? false : nil
            case .failed: return nil
            }
            readAny = true
            guard let (at, message) = KernelLog.parse(line) else { continue }
            if afterGap {
                afterGap = false
                if at > window.completeFromMicros { complete = false }
            }
            guard at >= window.sinceMicros else { continue }
            // Both forms are matched where the kernel writes them, never anywhere in the line: a line
            // also carries the victim's name, which the worker chooses.
            if let (path, pid) = Self.summaryVictim(message) {
                if Self.hasSuffix(path, memcg), pids.contains(pid) { return true }
            } else if killed.contains(where: { message.starts(with: $0) }) {
                return true
            }
        }
        return complete ? false : nil
    }
}

/// The kernel's log as `/dev/kmsg` gives it: one record per read, oldest first.
public enum KernelLog {
    /// What one read gave.
    enum Read {
        case record(ArraySlice<UInt8>)
        /// Records were overwritten under the reader, which goes on at the oldest one kept (EPIPE).
        case lost
        case end
        case failed
    }

    /// `body` over the log's records from the oldest kept; nil when the log cannot be opened.
    static func read<T>(_ body: (() -> Read) -> T) -> T? {
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // CONSOLE_EXT_LOG_MAX: no record is longer.
        var record = [UInt8](repeating: 0, count: 8192)
        return body {
            while true {
                let n = record.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n > 0 { return .record(record[0..<n]) }
                if n == 0 { return .end }
                switch errno {
                case EPIPE: return .lost
                case EINTR: continue
                case EAGAIN: return .end  // nothing newer
                default: return .failed
                }
            }
        }
    }

    /// A record's timestamp (microseconds of CLOCK_MONOTONIC) and message, from
    /// "priority,sequence,microseconds,flags[,...];message".
    static func parse(_ line: ArraySlice<UInt8>) -> (UInt64, ArraySlice<UInt8>)? {
        guard let semicolon = line.firstIndex(of: UInt8(ascii: ";")) else { return nil }
        let header = line[..<semicolon].split(separator: UInt8(ascii: ","), maxSplits: 3)
        guard header.count >= 3, let at = UInt64(String(decoding: header[2], as: UTF8.self)) else { return nil }
        return (at, line[(semicolon + 1)...])
    }

    /// The timestamp of the oldest record the log still holds (microseconds of CLOCK_MONOTONIC);
    /// nil when the log cannot be read. Records older than it have been overwritten.
    public static func oldestRecordMicros() -> UInt64? {
        read { next -> UInt64? in
            for _ in 0..<16 {
                switch next() {
                case .record(let line): if let (at, _) = parse(line) { return at }
                case .lost: continue
                case .end, .failed: return nil
                }
            }
            return nil
        } ?? nil
    }
}

extension OOMEvidence {
    /// The memory cgroup and the victim's pid of a summary line,
    /// `oom-kill:constraint=...,oom_memcg=PATH,task_memcg=PATH,task=COMM,pid=N,uid=U`. COMM is the
    /// victim's own name (up to 15 bytes of the worker's choosing, commas and `=` among them), so
    /// the pid is read back from the line's end, which the kernel writes after it, and the path is
    /// the one before it (the kernel's path of a run's cgroup has no comma).
    static func summaryVictim(_ message: ArraySlice<UInt8>) -> (path: ArraySlice<UInt8>, pid: Int32)? {
        let memcgKey = Array("task_memcg=".utf8), pidKey = Array(",pid=".utf8), uidKey = Array(",uid=".utf8)
        guard message.starts(with: "oom-kill:".utf8), let at = find(memcgKey, in: message) else { return nil }
        var line = message
        while line.last == UInt8(ascii: "\n") { line = line.dropLast() }
        // ",pid=N,uid=U" at the very end.
        guard let uid = findLast(uidKey, in: line), isDigits(line[(uid + uidKey.count)...]),
              let pidAt = findLast(pidKey, in: line[..<uid]), isDigits(line[(pidAt + pidKey.count)..<uid]),
              let pid = Int32(String(decoding: line[(pidAt + pidKey.count)..<uid], as: UTF8.self)) else { return nil }
        let pathStart = at + memcgKey.count
        let pathEnd = line[pathStart..<pidAt].firstIndex(of: UInt8(ascii: ",")) ?? pidAt
        return (line[pathStart..<pathEnd], pid)
    }

    static func isDigits(_ bytes: ArraySlice<UInt8>) -> Bool {
        !bytes.isEmpty && bytes.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    static func hasSuffix(_ bytes: ArraySlice<UInt8>, _ suffix: [UInt8]) -> Bool {
        bytes.count >= suffix.count && bytes.suffix(suffix.count).elementsEqual(suffix)
    }

    static func findLast(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        var i = haystack.endIndex - needle.count
        while i >= haystack.startIndex {
            if haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i -= 1
        }
        return nil
    }

    static func find(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard needle.count <= haystack.count, let first = needle.first else { return nil }
        var i = haystack.startIndex
        while i + needle.count <= haystack.endIndex {
            if haystack[i] == first && haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}
