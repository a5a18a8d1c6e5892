import Glibc

/// Which cgroup hierarchy a driver manages.
public enum CgroupVersion: String, Sendable {
    case v1, v2
}

/// Creates run cgroups with limits, and clears the ones a crashed supervisor left behind.
///
/// Every run cgroup is `<root>/<parent>/<name>` (parent `stockade` unless a driver is built with another
/// one), in every hierarchy the run needs.
public protocol CgroupDriver: Sendable {
    var version: CgroupVersion { get }
    /// What the driver manages and where, for logs and the audit trail.
    var description: String { get }

    /// Makes the run cgroup `name` in every needed hierarchy, writes `limits`, and opens the descriptors
    /// the spawner uses to place the worker in it. Throws, leaving nothing behind, if any of that fails.
    func create(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup

    /// Kills the processes of, and removes, every run cgroup under the parent whose name `isActive` says
    /// is not a live run. Returns the names it removed.
    func removeStale(isActive: (String) -> Bool) -> [String]

    /// Whether the run cgroup `name` holds no process and was created at least `seconds` ago: the
    /// leftover of a supervisor that died and whose state directory is gone. A live run's cgroup holds
    /// its init from the clone on, and the clone follows the cgroup's creation within the spawn
    /// timeout, so an empty cgroup that old is nobody's.
    func isAbandoned(name: String, olderThan seconds: Int) -> Bool
}

extension CgroupDriver {
    /// Whether the run cgroup exists in some hierarchy, holds no process, and every directory of it that
    /// exists was made at least `seconds` ago (cgroupfs directories keep their creation time as mtime). A
    /// hierarchy without the directory is skipped: a removal cut short leaves only some of them.
    static func isAbandoned(_ run: RunCgroup, olderThan seconds: Int) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var found = false
        for path in run.paths {
            var st = stat()
            if lstat(path, &st) != 0 {
                if errno == ENOENT { continue }
                return false
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR, now.tv_sec - st.st_mtim.tv_sec >= seconds else { return false }
            found = true
        }
        return found && run.isEmpty()
    }

    /// Whether `name` can be a run cgroup: one plain path component of letters, digits, `.`, `_` and `-`,
    /// at most 128 bytes, and not `.` or `..`.
    static func isValidRunName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 128, name != ".", name != ".." else { return false }
        return name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }

    static func checkRunName(_ name: String) throws(CgroupError) {
        guard isValidRunName(name) else {
            throw CgroupError(.invalidName, "the run cgroup name '\(name)' is not one path component of letters, digits, '.', '_' and '-' (at most 128 bytes): use the run id")
        }
    }
}
