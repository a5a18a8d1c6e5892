import Foundation
import Testing
@testable import StockadeCgroups

@Suite("cgroup detection from the mount table")
struct CgroupDetectionTests {
    static let base = "23 1 0:21 / / rw,relatime - overlay overlay rw\n31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"

    /// A hybrid host like this one: every v1 controller mounted, plus a cgroup2 mount without controllers.
    static let hybrid = base + """
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
        34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate

        """

    static let unifiedOnly = base.replacingOccurrences(of: "tmpfs tmpfs rw,mode=755", with: "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot")

    @Test("every v1 controller mounted selects v1, with co-mounted cpu and cpuacct sharing one hierarchy")
    func hybridSelectsV1() throws {
        let driver = try Cgroups.detect(mountinfo: Self.hybrid)
        let v1 = try #require(driver as? CgroupV1)
        #expect(v1.version == .v1)
        #expect(v1.mounts == ["cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                              "memory": "/sys/fs/cgroup/memory", "freezer": "/sys/fs/cgroup/freezer", "pids": "/sys/fs/cgroup/pids"])
        #expect(v1.hierarchies == ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer"])
        #expect(v1.parent == "stockade")
    }

    @Test("only a cgroup2 mount offering memory, pids and cpu selects v2 at that mount")
    func unifiedSelectsV2() throws {
        let tree = try FakeCgroupTree(rootControllers: "cpuset cpu io memory hugetlb pids rdma misc\n")
        let driver = try Cgroups.detect(mountinfo: Self.unifiedOnly, fileSystemRoot: tree.base)
        let v2 = try #require(driver as? CgroupV2)
        #expect(v2.version == .v2)
        #expect(v2.root == tree.root)
    }

    @Test("a missing controller fails closed with an error naming it and how to enable it", arguments: [
        // (mountinfo, controllers of a fake cgroup2 root, missing controller, a hint the message must give)
        (unifiedOnly, "cpu io pids\n", "memory", "systemd.unified_cgroup_hierarchy"),
        (unifiedOnly, "cpu io memory\n", "pids", "subtree_control"),
        (unifiedOnly, "", "memory, pids, cpu", "subtree_control"),
        (hybrid.replacingOccurrences(of: "rw,freezer", with: "rw,blkio"), "", "freezer", "mount -t cgroup -o freezer"),
        (hybrid.replacingOccurrences(of: "rw,memory", with: "rw,devices"), "", "memory", "mount -t cgroup"),
        (hybrid.replacingOccurrences(of: "rw,cpu,cpuacct", with: "rw,cpu"), "", "cpuacct", "mount -t cgroup"),
    ])
    func missingController(mountinfo: String, controllers: String, missing: String, hint: String) throws {
        let tree = try FakeCgroupTree(rootControllers: controllers)
        do throws(CgroupError) {
            let driver = try Cgroups.detect(mountinfo: mountinfo, fileSystemRoot: tree.base)
            Issue.record("detected \(driver.description) without \(missing)")
        } catch {
            #expect(error.code == .missingController)
            #expect(error.message.contains("controller(s) \(missing) are"), "\(error.message)")
            #expect(error.message.contains(hint), "\(error.message)")
        }
    }

    @Test("a read-only v1 controller mount is refused with a remount hint")
    func readOnlyV1() {
        let mountinfo = Self.hybrid.replacingOccurrences(of: "/sys/fs/cgroup/memory rw,relatime", with: "/sys/fs/cgroup/memory ro,relatime")
        do throws(CgroupError) {
            _ = try Cgroups.detect(mountinfo: mountinfo)
            Issue.record("a read-only memory hierarchy was accepted")
        } catch {
            #expect(error.code == .missingController)
            #expect(error.message.contains("memory") && error.message.contains("remount"))
        }
    }

    @Test("no cgroup filesystem at all is its own error")
    func noCgroups() {
        do throws(CgroupError) {
            _ = try Cgroups.detect(mountinfo: Self.base)
            Issue.record("detected a driver without cgroups")
        } catch {
            #expect(error.code == .noCgroupFilesystem)
        }
    }

    @Test("mount points are unescaped and malformed lines skipped")
    func parsing() {
        let text = "40 31 0:37 / /sys/fs/my\\040cgroups rw,relatime shared:1 master:2 - cgroup cgroup rw,pids\ngarbage line\n1 2 3\n"
        #expect(MountInfo.parse(text) == [MountInfo(mountPoint: "/sys/fs/my cgroups", mountOptions: ["rw", "relatime"],
                                                    fileSystemType: "cgroup", superOptions: ["rw", "pids"])])
    }

    @Test("this host is detected as cgroup v1", .enabled(if: access("/sys/fs/cgroup/memory/memory.limit_in_bytes", F_OK) == 0, "this host has no v1 memory hierarchy at /sys/fs/cgroup/memory"))
    func thisHost() throws {
        let driver = try Cgroups.detect()
        #expect(driver.version == .v1)
        #expect(driver.description.contains("memory at /sys/fs/cgroup/memory"))
    }
}
