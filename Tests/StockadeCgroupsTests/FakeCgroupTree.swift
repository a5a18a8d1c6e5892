import Foundation
@testable import StockadeCgroups

/// A fake cgroup v2 filesystem in a temporary directory: the root with the files the kernel shows at a
/// cgroup2 mount, and an `InterfaceFileEmulation` that fills each directory the driver makes with the
/// interface files (and initial contents) a kernel would create, and empties it before `rmdir`.
final class FakeCgroupTree {
    let base: String
    let root: String

    /// The interface files of a non-root cgroup with memory, pids and cpu enabled by its parent.
    static let kernelFiles: [(String, String)] = [
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cgroup.freeze", "0\n"),
        ("cgroup.kill", ""),
        ("memory.max", "max\n"),
        ("memory.swap.max", "max\n"),
        ("memory.peak", "0\n"),
        ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"),
        ("cpu.max", "max 100000\n"),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ("pids.max", "max\n"),
        ("pids.events", "max 0\n"),
    ]

    init(rootControllers: String = "cpuset cpu io memory hugetlb pids rdma misc\n", rootFiles: Bool = true) throws {
        base = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-fake-cgroup-\(UUID().uuidString)").path
        root = base + "/sys/fs/cgroup"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try write(rootControllers, "cgroup.controllers")
        if rootFiles {
            try write("", "cgroup.subtree_control")
            try write("", "cgroup.procs")
        }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: base)
    }

    func write(_ text: String, _ relative: String) throws {
        try text.write(toFile: root + "/" + relative, atomically: false, encoding: .utf8)
    }

    func read(_ relative: String) -> String? {
        try? String(contentsOfFile: root + "/" + relative, encoding: .utf8)
    }

    func exists(_ relative: String) -> Bool {
        FileManager.default.fileExists(atPath: root + "/" + relative)
    }

    static func emulation(files: [(String, String)] = kernelFiles) -> InterfaceFileEmulation {
        InterfaceFileEmulation(
            populate: { dir in
                for (name, text) in files { _ = FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(text.utf8)) }
            },
            depopulate: { dir in
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                    var isDir: ObjCBool = false
                    if FileManager.default.fileExists(atPath: dir + "/" + name, isDirectory: &isDir), !isDir.boolValue {
                        try? FileManager.default.removeItem(atPath: dir + "/" + name)
                    }
                }
            })
    }

    func driver(files: [(String, String)] = kernelFiles) throws(CgroupError) -> CgroupV2 {
        try CgroupV2(root: root, emulation: Self.emulation(files: files))
    }
}
