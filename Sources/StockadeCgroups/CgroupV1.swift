import Glibc
import Synchronization

/// cgroup v1: one hierarchy per mounted controller (co-mounted controllers share one). A run cgroup is a
/// directory `<parent>/<name>` in the memory, cpu, cpuacct, pids and freezer hierarchies; the spawner
/// hands the worker's init a write-only descriptor of each hierarchy's `tasks` file, and init writes
/// `0` into each, moving itself, before it does anything else.
public struct CgroupV1: CgroupDriver {
    /// The controllers a run needs: limits (memory, cpu, pids), CPU accounting (cpuacct), and a freezer
    /// so `killAll` can stop forks while it signals.
    public static let requiredControllers = ["memory", "cpu", "cpuacct", "pids", "freezer"]

    /// Mount point of each controller's hierarchy.
    public let mounts: [String: String]
    /// The directory, in every hierarchy, that holds the run cgroups.
    public let parent: String

    public var version: CgroupVersion { .v1 }

    public var description: String {
        "cgroup v1 (" + Self.requiredControllers.compactMap { c in mounts[c].map { "\(c) at \($0)" } }.joined(separator: ", ") + "; runs under \(parent)/)"
    }

    /// A driver over the given hierarchies. Throws `missingController` if any of `requiredControllers` has no mount.
    public init(mounts: [String: String], parent: String = "stockade") throws(CgroupError) {
        let missing = Self.requiredControllers.filter { mounts[$0] == nil }
        guard missing.isEmpty else { throw Self.missingError(missing) }
        guard Self.isValidRunName(parent) else {
            throw CgroupError(.invalidName, "the parent cgroup name '\(parent)' is not one plain path component")
        }
        self.mounts = mounts
        self.parent = parent
    }

    static func missingError(_ missing: [String]) -> CgroupError {
        let list = missing.joined(separator: ", ")
        let first = missing.first ?? "memory"
        return CgroupError(.missingController, path: "/proc/self/mountinfo",
                           "the cgroup v1 controller(s) \(list) are not mounted, so a run's limits cannot be enforced: mount each (for example `mkdir -p /sys/fs/cgroup/\(first) && mount -t cgroup -o \(first) cgroup /sys/fs/cgroup/\(first)`), or boot with systemd.unified_cgroup_hierarchy=1 to use cgroup v2")
    }

    /// The distinct hierarchy mount points, in `requiredControllers` order.
    var hierarchies: [String] {
        var seen = Set<String>()
        return Self.requiredControllers.compactMap { mounts[$0] }.filter { seen.insert($0).inserted }
    }

    func directories(for name: String) -> RunCgroup.V1Directories {
        func dir(_ controller: String) -> String { (mounts[controller] ?? "") + "/" + parent + "/" + name }
        return .init(memory: dir("memory"), cpu: dir("cpu"), cpuacct: dir("cpuacct"), pids: dir("pids"), freezer: dir("freezer"))
    }

    public func create(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        try Self.checkRunName(name)
        try limits.validate()
        let dirs = directories(for: name)
        var made: [String] = []
        var joins: [Int32] = []
        do throws(CgroupError) {
            for hierarchy in hierarchies {
                let path = hierarchy + "/" + parent + "/" + name
                // The parent is made when it is missing (the first run), not looked for at every run.
                guard try CgroupFiles.makeDirectory(path, parent: hierarchy + "/" + parent) else {
                    throw CgroupError(.exists, path: path, "a run cgroup of this name already exists: use a fresh run id, or run removeStale first")
                }
                made.append(path)
            }
            try CgroupFiles.write(String(limits.memoryBytes), to: dirs.memory + "/memory.limit_in_bytes")
            // Present only with swap accounting; the limit above must be set first (memsw ≥ memory).
            // Written without a look first: the file's absence is the open's ENOENT (a lookup in a
            // cgroup just made is a slow one, each run).
            do throws(CgroupError) {
                try CgroupFiles.write(String(limits.memoryBytes), to: dirs.memory + "/memory.memsw.limit_in_bytes")
            } catch where error.errno == ENOENT {}
            // Written before any socket exists in the cgroup: sockets made earlier would go uncharged.
            let tcp = dirs.memory + "/memory.kmem.tcp.limit_in_bytes"
            do throws(CgroupError) {
                try CgroupFiles.write(String(limits.tcpBufferBytes), to: tcp)
            } catch where error.errno == ENOENT {
                throw CgroupError(.missingController, path: tcp,
                                  "this kernel's cgroup v1 memory controller has no TCP buffer accounting, so a worker's socket buffers would be bounded only by the host-wide tcp_mem: boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1), where socket memory is charged to memory.max")
            }
            if Self.periodNeedsWriting(dirs.cpu + "/cpu.cfs_period_us") {
                try CgroupFiles.write(String(CgroupLimits.cpuPeriodMicros), to: dirs.cpu + "/cpu.cfs_period_us")
            }
            try CgroupFiles.write(String(limits.cpuQuotaMicros), to: dirs.cpu + "/cpu.cfs_quota_us")
            try CgroupFiles.write(String(limits.pids), to: dirs.pids + "/pids.max")
            for path in made {
                // `tasks`, not `cgroup.procs`: init moves itself (its only thread), which the kernel
                // does without write-locking its global cgroup_threadgroup_rwsem (stk_spawn.h).
                joins.append(try CgroupFiles.openDescriptor(path + "/tasks", flags: O_WRONLY, what: "tasks to place the worker"))
            }
        } catch {
            for fd in joins { close(fd) }
            for path in made.reversed() { try? RunCgroup.removeDirectory(path) }
            throw error
        }
        return RunCgroup(name: name, layout: .v1(dirs), paths: made, joinDescriptors: joins)
    }

    /// Whether `cpu.cfs_period_us` must be written for the quota to mean `cpus`: the kernel gives a
    /// new cgroup its default period (100 ms, `default_cfs_period`), which is the period the quota is
    /// computed against, so the write is needed only where a kernel did otherwise. The first cgroup
    /// this process makes is read to find out (0 not yet known, 1 the default, 2 write it).
    static func periodNeedsWriting(_ path: String) -> Bool {
        switch defaultPeriod.load(ordering: .relaxed) {
        case 1: return false
        case 2: return true
        default:
            let isDefault = CgroupFiles.readNumber(path) == UInt64(CgroupLimits.cpuPeriodMicros)
            defaultPeriod.store(isDefault ? 1 : 2, ordering: .relaxed)
            return !isDefault
        }
    }
    private static let defaultPeriod = Atomic<Int>(0)

    public func isAbandoned(name: String, olderThan seconds: Int) -> Bool {
        guard Self.isValidRunName(name) else { return false }
        let run = RunCgroup(name: name, layout: .v1(directories(for: name)), paths: hierarchies.map { $0 + "/" + parent + "/" + name })
        return Self.isAbandoned(run, olderThan: seconds)
    }

    public func removeStale(isActive: (String) -> Bool) -> [String] {
        var names = Set<String>()
        for hierarchy in hierarchies {
            names.formUnion(CgroupFiles.subdirectories(hierarchy + "/" + parent).filter(Self.isValidRunName))
        }
        var removed: [String] = []
        for name in names.sorted() where !isActive(name) {
            let run = RunCgroup(name: name, layout: .v1(directories(for: name)), paths: hierarchies.map { $0 + "/" + parent + "/" + name })
            if (try? run.remove()) != nil { removed.append(name) }
        }
        return removed
    }
}
