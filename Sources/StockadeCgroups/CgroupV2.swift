import Glibc

/// cgroup v2: one unified hierarchy. A run cgroup is `<root>/<parent>/<name>` with the memory, pids and
/// cpu controllers enabled down to it; the spawner creates the worker directly inside it with
/// `clone3(CLONE_INTO_CGROUP)` on `directoryDescriptor`.
public struct CgroupV2: CgroupDriver {
    public static let requiredControllers = ["memory", "pids", "cpu"]

    /// The cgroup under which `parent` is made: the cgroup2 mount point, or a delegated subtree.
    public let root: String
    public let parent: String
    let emulation: InterfaceFileEmulation?

    public var version: CgroupVersion { .v2 }

    public var description: String {
        "cgroup v2 at \(root) (memory, pids, cpu; runs under \(parent)/)"
    }

    public init(root: String, parent: String = "stockade") throws(CgroupError) {
        try self.init(root: root, parent: parent, emulation: nil)
    }

    /// A driver over a fake cgroupfs tree: see `InterfaceFileEmulation`.
    package init(root: String, parent: String = "stockade", emulation: InterfaceFileEmulation?) throws(CgroupError) {
        guard Self.isValidRunName(parent) else {
            throw CgroupError(.invalidName, "the parent cgroup name '\(parent)' is not one plain path component")
        }
        self.root = root
        self.parent = parent
        self.emulation = emulation
    }

    static func missingError(_ missing: [String], at directory: String) -> CgroupError {
        let list = missing.joined(separator: ", ")
        return CgroupError(.missingController, path: directory + "/cgroup.controllers",
                           "the cgroup v2 controller(s) \(list) are not available here, so a run's limits cannot be enforced: enable them in the parent's cgroup.subtree_control (`echo '+\(missing.first ?? "memory")' > <parent>/cgroup.subtree_control`); if the root lacks them they are bound to a cgroup v1 hierarchy or disabled: unmount that hierarchy, drop cgroup_disable= from the kernel command line, or boot with systemd.unified_cgroup_hierarchy=1")
    }

    /// Enables the required controllers for the children of `directory`, naming any it lacks.
    private func enableControllers(in directory: String) throws(CgroupError) {
        let enable = Self.requiredControllers.map { "+" + $0 }.joined(separator: " ")
        do throws(CgroupError) {
            try CgroupFiles.write(enable, to: directory + "/cgroup.subtree_control")
        } catch {
            let available = Set((CgroupFiles.read(directory + "/cgroup.controllers") ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
            let missing = Self.requiredControllers.filter { !available.contains($0) }
            if !missing.isEmpty { throw Self.missingError(missing, at: directory) }
            throw error
        }
    }

    /// Name of the leaf that holds the processes of a cgroup namespace's root (see `enableControllersAtRoot`).
    public static let supervisorLeaf = "stockade-supervisor"

    /// Enables the controllers at `root`. Inside a container (a private cgroup namespace, cgroup2
    /// mounted at the container's own cgroup) the supervisor and its companions sit in `root`
    /// itself, and cgroup v2's no-internal-processes rule refuses controllers for children of a
    /// non-root cgroup that holds processes (EBUSY). Then every process of `root` is moved into
    /// the leaf `root/stockade-supervisor` first, as container init systems do, and the write retried.
    private func enableControllersAtRoot() throws(CgroupError) {
        do throws(CgroupError) {
            try enableControllers(in: root)
        } catch where error.errno == EBUSY {
            try moveProcessesToLeaf()
            do throws(CgroupError) {
                try enableControllers(in: root)
            } catch {
                let left = (CgroupFiles.read(root + "/cgroup.procs") ?? "").split(whereSeparator: \.isWhitespace).joined(separator: " ")
                throw CgroupError(.fileSystem, path: root + "/cgroup.subtree_control", errno: error.errno,
                                  "cgroup v2 refuses controllers for the children of a cgroup that holds processes, and \(root) still holds [\(left)] after they were moved to \(Self.supervisorLeaf)/: move them into a leaf cgroup yourself, or run the supervisor in a delegated subtree whose own cgroup holds no processes")
            }
        }
    }

    private func moveProcessesToLeaf() throws(CgroupError) {
        let leaf = root + "/" + Self.supervisorLeaf
        if try CgroupFiles.makeDirectory(leaf) { emulation?.populate(leaf) }
        // A process may exit between the read and the write (ESRCH): one pass per listed process, a few passes.
        for _ in 0..<4 {
            let pids = (CgroupFiles.read(root + "/cgroup.procs") ?? "").split(whereSeparator: \.isWhitespace)
            if pids.isEmpty { return }
            for pid in pids {
                do throws(CgroupError) {
                    try CgroupFiles.write(String(pid), to: leaf + "/cgroup.procs")
                } catch where error.errno == ESRCH {
                    continue
                }
            }
        }
    }

    public func create(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        try Self.checkRunName(name)
        try limits.validate()
        // After the first run the parent exists with the controllers enabled: one mkdir, then the
        // limits. Only when either is missing (the mkdir's ENOENT, or a limit file's) is the parent
        // prepared (each write under the kernel's global cgroup lock) and the run cgroup made again.
        do throws(CgroupError) {
            return try make(name: name, limits: limits)
        } catch where error.errno == ENOENT {
            try prepareParent()
            return try make(name: name, limits: limits)
        }
    }

    /// The parent of the run cgroups, with memory, pids and cpu enabled from the root down to its children.
    private func prepareParent() throws(CgroupError) {
        let parentPath = root + "/" + parent
        try enableControllersAtRoot()
        if try CgroupFiles.makeDirectory(parentPath) { emulation?.populate(parentPath) }
        try enableControllers(in: parentPath)
    }

    private func make(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        let path = root + "/" + parent + "/" + name
        guard try CgroupFiles.makeDirectory(path) else {
            throw CgroupError(.exists, path: path, "a run cgroup of this name already exists: use a fresh run id, or run removeStale first")
        }
        emulation?.populate(path)
        do throws(CgroupError) {
            try CgroupFiles.write(String(limits.memoryBytes), to: path + "/memory.max")
            // v2 limits swap separately; 0 keeps memory plus swap within the memory limit, as v1's memsw does.
            // Absent without swap accounting: the open's ENOENT says so (no separate look first).
            do throws(CgroupError) {
                try CgroupFiles.write("0", to: path + "/memory.swap.max")
            } catch where error.errno == ENOENT {}
            try CgroupFiles.write("\(limits.cpuQuotaMicros) \(CgroupLimits.cpuPeriodMicros)", to: path + "/cpu.max")
            try CgroupFiles.write(String(limits.pids), to: path + "/pids.max")
            let fd = try CgroupFiles.openDescriptor(path, flags: O_RDONLY | O_DIRECTORY, what: "the run cgroup directory for CLONE_INTO_CGROUP")
            return RunCgroup(name: name, layout: .v2(directory: path, useKillFile: true), paths: [path],
                             directoryDescriptor: fd, emulation: emulation)
        } catch {
            emulation?.depopulate(path)
            do throws(CgroupError) {
                try RunCgroup.removeDirectory(path)
            } catch let removal {
                // Left in place: say so, with the removal's errno (never ENOENT), so create does not
                // try again and then report a name that "already exists".
                throw CgroupError(error.code, path: path, errno: removal.errno,
                                  "\(error.message); and the half-made run cgroup could not be removed: \(removal.message)")
            }
            throw error
        }
    }

    public func isAbandoned(name: String, olderThan seconds: Int) -> Bool {
        guard Self.isValidRunName(name) else { return false }
        let path = root + "/" + parent + "/" + name
        let run = RunCgroup(name: name, layout: .v2(directory: path, useKillFile: true), paths: [path], emulation: emulation)
        return Self.isAbandoned(run, olderThan: seconds)
    }

    public func removeStale(isActive: (String) -> Bool) -> [String] {
        var removed: [String] = []
        for name in CgroupFiles.subdirectories(root + "/" + parent) where Self.isValidRunName(name) && !isActive(name) {
            let path = root + "/" + parent + "/" + name
            let run = RunCgroup(name: name, layout: .v2(directory: path, useKillFile: true), paths: [path], emulation: emulation)
            if (try? run.remove()) != nil { removed.append(name) }
        }
        return removed
    }
}
