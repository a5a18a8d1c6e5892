/// Finds the cgroup hierarchy this host offers and returns the driver for it.
public enum Cgroups {
    /// The driver for this host's cgroups, read from `/proc/self/mountinfo`.
    ///
    /// cgroup v1 is used when every controller it needs is mounted as a v1 hierarchy (hybrid hosts mount
    /// v1 controllers next to a controller-less cgroup2); otherwise the cgroup2 mount whose
    /// `cgroup.controllers` offers memory, pids and cpu. Fails closed: when neither is complete, the error
    /// names the missing controllers and how to enable them.
    ///
    /// - Parameters:
    ///   - mountinfo: mountinfo text to use instead of `/proc/self/mountinfo`.
    ///   - fileSystemRoot: prefixed to every mount point, so a synthetic mountinfo can point into a fake tree.
    ///   - parent: the directory that holds the run cgroups.
    public static func detect(mountinfo: String? = nil, fileSystemRoot: String = "", parent: String = "stockade") throws(CgroupError) -> any CgroupDriver {
        guard let text = mountinfo ?? CgroupFiles.read("/proc/self/mountinfo", limit: 4 << 20) else {
            throw CgroupError(.noCgroupFilesystem, path: "/proc/self/mountinfo", "cannot read the mount table: mount /proc")
        }
        let mounts = MountInfo.parse(text)

        var v1: [String: String] = [:]
        var readOnly: [String] = []
        for mount in mounts where mount.fileSystemType == "cgroup" {
            for controller in mount.superOptions where CgroupV1.requiredControllers.contains(controller) && v1[controller] == nil {
                if mount.isReadOnly { readOnly.append(controller); continue }
                v1[controller] = fileSystemRoot + mount.mountPoint
            }
        }
        if v1.count == CgroupV1.requiredControllers.count {
            return try CgroupV1(mounts: v1, parent: parent)
        }

        let unified = mounts.filter { $0.fileSystemType == "cgroup2" && !$0.isReadOnly }
        var best: (root: String, missing: [String])?
        for mount in unified {
            let root = fileSystemRoot + mount.mountPoint
            let available = Set((CgroupFiles.read(root + "/cgroup.controllers") ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
            let missing = CgroupV2.requiredControllers.filter { !available.contains($0) }
            if missing.isEmpty { return try CgroupV2(root: root, parent: parent) }
            if best == nil || missing.count < best?.missing.count ?? 0 { best = (root, missing) }
        }

        if !v1.isEmpty || !readOnly.isEmpty {
            let missing = CgroupV1.requiredControllers.filter { v1[$0] == nil }
            if !readOnly.isEmpty {
                throw CgroupError(.missingController, path: "/proc/self/mountinfo",
                                  "the cgroup v1 controller(s) \(readOnly.joined(separator: ", ")) are mounted read-only, so run cgroups cannot be made: remount them read-write (`mount -o remount,rw <mount point>`)")
            }
            throw CgroupV1.missingError(missing)
        }
        if let best { throw CgroupV2.missingError(best.missing, at: best.root) }
        throw CgroupError(.noCgroupFilesystem, path: "/proc/self/mountinfo",
                          "no cgroup filesystem is mounted, so a run's limits cannot be enforced: mount cgroup v2 (`mount -t cgroup2 none /sys/fs/cgroup`) or the v1 controllers memory, cpu, cpuacct, pids and freezer")
    }
}

/// One line of `/proc/<pid>/mountinfo`, the fields the detection needs.
struct MountInfo: Equatable {
    var mountPoint: String
    var mountOptions: [String]
    var fileSystemType: String
    var superOptions: [String]

    var isReadOnly: Bool { mountOptions.contains("ro") }

    /// Parses the mount table: `id parent major:minor root mountpoint options [optional...] - type source superoptions`.
    /// Malformed lines are skipped.
    static func parse(_ text: String) -> [MountInfo] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash >= 6, fields.count > dash + 3 else { return nil }
            return MountInfo(mountPoint: unescape(fields[4]),
                             mountOptions: fields[5].split(separator: ",").map(String.init),
                             fileSystemType: String(fields[dash + 1]),
                             superOptions: fields[dash + 3].split(separator: ",").map(String.init))
        }
    }

    /// Undoes the kernel's octal escapes of space, tab, newline and backslash (`\040`).
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
