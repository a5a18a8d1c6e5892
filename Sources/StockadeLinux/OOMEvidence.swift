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

    /// Whether the kernel log names `pid` as an OOM victim of a memory cgroup since `sinceMicros`
    /// (CLOCK_MONOTONIC, the clock of the log's timestamps): true or false, or nil when the log
    /// cannot be read here (no `/dev/kmsg`, or no permission to read it).
    ///
    /// Two lines name a victim: the summary `oom-kill:...,task_memcg=/stockade/<run>,task=...,pid=N,`
    /// (part of the OOM report, which the kernel rate-limits) and `Memory cgroup out of memory:
    /// Killed process N (comm)` (never rate-limited). The first must name this run's cgroup; the
    /// second names a host pid, which only the run's main process holds since the run started.
    public static func killedByOOM(pid: Int32, cgroupName: String, sinceMicros: UInt64) -> Bool? {
        killedByOOM(pids: [pid], cgroupName: cgroupName, sinceMicros: sinceMicros)
    }

    /// As `killedByOOM(pids:cgroupName:sinceMicros:)`, read again for up to `settleMicros` while
    /// the answer is no. The kernel sends the victim its SIGKILL before it logs "Killed process"
    /// (and the summary line before it is rate-limited when OOM kills come close together), so a
    /// supervisor quick to see the death can read the log before the line is there. Only a run whose
    /// cgroup counted an OOM kill and whose main process died by SIGKILL gets here: the honest case
    /// answers at the first or second read, a spoof waits the whole window.
    public static func killedByOOM(pids: [Int32], cgroupName: String, sinceMicros: UInt64, settleMicros: UInt32) -> Bool? {
        var answer = killedByOOM(pids: pids, cgroupName: cgroupName, sinceMicros: sinceMicros)
        var waited: UInt32 = 0
        while answer == false && waited < settleMicros {
            usleep(20_000)
            waited += 20_000
            answer = killedByOOM(pids: pids, cgroupName: cgroupName, sinceMicros: sinceMicros)
        }
        return answer
    }

    /// As above, for any of `pids` (the main process and the init whose death ends the namespace).
    public static func killedByOOM(pids: [Int32], cgroupName: String, sinceMicros: UInt64) -> Bool? {
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let summary = Array("task_memcg=".utf8)
        let memcg = Array(("/" + cgroupName + ",").utf8)
        let victims = pids.map { Array(",pid=\($0),".utf8) }
        let killed = pids.map { Array("Memory cgroup out of memory: Killed process \($0) (".utf8) }
        var record = [UInt8](repeating: 0, count: 8192)
        var readAny = false
        // One record per read, oldest first; EPIPE means records were overwritten meanwhile (go on).
        for _ in 0..<1_000_000 {
            let n = record.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EPIPE || errno == EINTR { continue }
                return readAny ? false : nil
            }
            if n == 0 { break }
            readAny = true
            let line = record[0..<n]
            // "priority,sequence,microseconds,flags[,...];message"
            guard let semicolon = line.firstIndex(of: UInt8(ascii: ";")) else { continue }
            let header = line[..<semicolon].split(separator: UInt8(ascii: ","))
            guard header.count >= 3, let at = UInt64(String(decoding: header[2], as: UTF8.self)), at >= sinceMicros else { continue }
            let message = line[(semicolon + 1)...]
            if let i = Self.find(summary, in: message) {
                let rest = message[(i + summary.count)...]
                if Self.find(memcg, in: rest) != nil && victims.contains(where: { Self.find($0, in: rest) != nil }) { return true }
            } else if killed.contains(where: { Self.find($0, in: message) != nil }) {
                return true
            }
        }
        return false
    }
}

extension OOMEvidence {
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
