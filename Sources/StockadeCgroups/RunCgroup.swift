import Glibc
import Synchronization

/// One run's cgroup, in every hierarchy it spans: the descriptors that place the worker in it, its
/// counters, and the kill that empties it.
///
/// Thread-safe: the descriptors are guarded, and everything else reads or writes cgroupfs files.
public final class RunCgroup: Sendable, CustomStringConvertible {
    /// The v1 directories of one run cgroup, one per controller; co-mounted controllers share a directory.
    struct V1Directories: Sendable, Equatable {
        var memory: String
        var cpu: String
        var cpuacct: String
        var pids: String
        var freezer: String
    }

    enum Layout: Sendable, Equatable {
        case v1(V1Directories)
        /// `useKillFile` false forces the freeze-and-signal path even where `cgroup.kill` exists, so that
        /// path can be tested on kernels that have both.
        case v2(directory: String, useKillFile: Bool)
    }

    private struct Descriptors {
        var join: [Int32]
        var directory: Int32?
    }

    public let name: String
    public let version: CgroupVersion
    /// Every directory of the run cgroup (v1: one per hierarchy; v2: one).
    public let paths: [String]
    let layout: Layout
    private let descriptors: Mutex<Descriptors>
    private let emulation: InterfaceFileEmulation?

    /// Kill rounds before `killAll` gives up: one round empties a cgroup whose freeze succeeded; the rest
    /// cover processes that were still exiting or could not be frozen in time.
    static let killRounds = 8
    /// How long one round waits for the freeze, and for signalled processes to leave.
    static let roundWaitMicros: useconds_t = 1_000_000

    init(name: String, layout: Layout, paths: [String], joinDescriptors: [Int32] = [], directoryDescriptor: Int32? = nil,
         emulation: InterfaceFileEmulation? = nil) {
        self.name = name
        self.emulation = emulation
        self.layout = layout
        self.paths = paths
        switch layout {
        case .v1: version = .v1
        case .v2: version = .v2
        }
        descriptors = Mutex(Descriptors(join: joinDescriptors, directory: directoryDescriptor))
    }

    deinit {
        closeDescriptors()
    }

    public var description: String {
        "cgroup \(version.rawValue) run \(name) at \(paths.joined(separator: ", "))"
    }

    /// v1: a write-only descriptor of `tasks` per hierarchy; the worker's init `pwrite`s `0` (itself)
    /// into each as its first step. Empty on v2, and after `remove()`.
    public var joinDescriptors: [Int32] {
        descriptors.withLock { $0.join }
    }

    /// Whether the descriptors that place a worker are open: one per v1 hierarchy, or the v2 directory.
    /// Without them a worker would run in the spawn helper's cgroup, unlimited.
    public var canPlaceWorker: Bool {
        descriptors.withLock { d in
            switch layout {
            case .v1: !paths.isEmpty && d.join.count == paths.count
            case .v2: d.directory != nil
            }
        }
    }

    /// v2: a descriptor of the cgroup directory for `clone3(CLONE_INTO_CGROUP)`. Nil on v1, and after `remove()`.
    public var directoryDescriptor: Int32? {
        descriptors.withLock { $0.directory }
    }

    // MARK: Counters

    /// The kernel's counters for this run; a counter that cannot be read is 0.
    public func usage() -> CgroupUsage {
        switch layout {
        case .v1(let d):
            return CgroupUsage(
                cpuNanos: CgroupFiles.readNumber(d.cpuacct + "/cpuacct.usage") ?? 0,
                memoryPeakBytes: CgroupFiles.readNumber(d.memory + "/memory.max_usage_in_bytes") ?? 0,
                oomKills: CgroupFiles.readKeyed(d.memory + "/memory.oom_control", key: "oom_kill") ?? 0,
                pidsLimitHits: CgroupFiles.readKeyed(d.pids + "/pids.events", key: "max") ?? 0)
        case .v2(let dir, _):
            let (micros, overflow) = (CgroupFiles.readKeyed(dir + "/cpu.stat", key: "usage_usec") ?? 0).multipliedReportingOverflow(by: 1000)
            return CgroupUsage(
                cpuNanos: overflow ? UInt64.max : micros,
                memoryPeakBytes: CgroupFiles.readNumber(dir + "/memory.peak") ?? 0,
                oomKills: CgroupFiles.readKeyed(dir + "/memory.events", key: "oom_kill") ?? 0,
                pidsLimitHits: CgroupFiles.readKeyed(dir + "/pids.events", key: "max") ?? 0)
        }
    }

    // MARK: Processes

    /// The pids in the run cgroup (v1: in any of its hierarchies), sorted.
    public func processes() -> [Int32] {
        Array(Set(paths.flatMap { CgroupFiles.readPids($0 + "/cgroup.procs") })).sorted()
    }

    /// Whether no process is left in the run cgroup (v2: nor in any cgroup below it).
    public func isEmpty() -> Bool {
        switch layout {
        case .v2(let dir, _):
            if let populated = CgroupFiles.readKeyed(dir + "/cgroup.events", key: "populated") { return populated == 0 }
        case .v1(let d):
            // Every process of a run is in its pids cgroup: init joins every hierarchy before it forks,
            // and nothing in the run can move a process. The pids counter falls only when a task is
            // released, after it has left the listings, so a 0 answers for every hierarchy in one read
            // (five listings otherwise); anything else is checked by listing.
            if CgroupFiles.readNumber(d.pids + "/pids.current") == 0 { return true }
        }
        return processes().isEmpty
    }

    /// Kills every process in the run cgroup and waits until it is empty; returns how many distinct
    /// processes it signalled.
    ///
    /// v2 with `cgroup.kill` lets the kernel do it atomically. Otherwise each round freezes the cgroup (so
    /// nothing can fork or exit while it is listed), sends SIGKILL to every listed pid, and thaws it so the
    /// signals are delivered. This reaches daemons that called `setsid` and ignore SIGTERM, and stopped
    /// processes, which SIGKILL ends regardless. Because the listed processes are frozen, none of them can
    /// exit and have its pid reused between the listing and the signal.
    @discardableResult
    public func killAll() throws(CgroupError) -> Int {
        var signalled = Set<Int32>()
        if case .v2(let dir, true) = layout, CgroupFiles.exists(dir + "/cgroup.kill") {
            signalled.formUnion(processes())
            try CgroupFiles.write("1", to: dir + "/cgroup.kill")
            if waitUntil({ isEmpty() }) { return signalled.count }
        }
        for _ in 0..<Self.killRounds {
            if isEmpty() { return signalled.count }
            try setFrozen(true)
            // A task that cannot be frozen in time (uninterruptible sleep) is signalled anyway.
            _ = waitUntil({ isFrozen() })
            for pid in processes() where kill(pid, SIGKILL) == 0 {
                signalled.insert(pid)
            }
            try setFrozen(false)
            _ = waitUntil({ isEmpty() })
        }
        if isEmpty() { return signalled.count }
        let left = processes()
        throw CgroupError(.killFailed, path: paths.first,
                          "\(left.count) processes (\(left.prefix(8).map(String.init).joined(separator: ", "))) are still in the run cgroup after \(Self.killRounds) rounds of freeze and SIGKILL; they are probably in uninterruptible sleep: inspect /proc/<pid>/stack and remove the cgroup once they exit")
    }

    private func setFrozen(_ frozen: Bool) throws(CgroupError) {
        switch layout {
        case .v1(let d): try CgroupFiles.write(frozen ? "FROZEN" : "THAWED", to: d.freezer + "/freezer.state")
        case .v2(let dir, _): try CgroupFiles.write(frozen ? "1" : "0", to: dir + "/cgroup.freeze")
        }
    }

    private func isFrozen() -> Bool {
        switch layout {
        case .v1(let d): CgroupFiles.read(d.freezer + "/freezer.state")?.trimmingWhitespace == "FROZEN"
        case .v2(let dir, _): CgroupFiles.readKeyed(dir + "/cgroup.events", key: "frozen") == 1
        }
    }

    /// Polls `condition` with a growing pause, for at most `roundWaitMicros`; returns whether it held.
    private func waitUntil(_ condition: () -> Bool) -> Bool {
        var waited: useconds_t = 0
        var pause: useconds_t = 100
        while true {
            if condition() { return true }
            if waited >= Self.roundWaitMicros { return false }
            usleep(pause)
            waited += pause
            pause = min(pause * 2, 20_000)
        }
    }

    // MARK: Removal

    /// Kills what is left, closes the descriptors and removes every directory. Safe to call again: a
    /// directory already gone is not an error.
    public func remove() throws(CgroupError) {
        // The kernel removes only an empty cgroup (EBUSY otherwise): a run's cgroup, emptied when its
        // report was made, goes with one `rmdir` per directory and nothing read first. At the first
        // refusal (processes left) the kill below takes over: it lists the processes of every
        // directory still there (the freezer's among them) and empties them before they are removed.
        if emulation == nil {
            closeDescriptors()
            var refused = false
            for path in paths where rmdir(path) != 0 && errno != ENOENT {
                refused = true
                break
            }
            if !refused { return }
        }
        var failure: CgroupError?
        if paths.contains(where: { CgroupFiles.exists($0) }) {
            do throws(CgroupError) {
                _ = try killAll()
            } catch {
                failure = error
            }
        }
        closeDescriptors()
        for path in paths {
            do throws(CgroupError) {
                if CgroupFiles.exists(path) { emulation?.depopulate(path) }
                try Self.removeDirectory(path)
            } catch {
                if failure == nil { failure = error }
            }
        }
        if let failure { throw failure }
    }

    private func closeDescriptors() {
        let fds = descriptors.withLock { d in
            let fds = d.join + (d.directory.map { [$0] } ?? [])
            d = Descriptors(join: [], directory: nil)
            return fds
        }
        for fd in fds { close(fd) }
    }

    /// rmdir, retried briefly while the kernel still counts exiting processes (EBUSY).
    static func removeDirectory(_ path: String) throws(CgroupError) {
        var attempts = 0
        while rmdir(path) != 0 {
            let err = errno
            if err == ENOENT { return }
            attempts += 1
            guard err == EBUSY, attempts < 200 else {
                throw CgroupError(.fileSystem, path: path, errno: err, "cannot remove the run cgroup directory: \(String(cString: strerror(err)))")
            }
            usleep(5_000)
        }
    }
}
