import Glibc
import Testing
@testable import StockadeCgroups

@Suite("cgroup v2 driver on a fake cgroupfs tree")
struct CgroupV2FakeTreeTests {
    let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 0.5, pids: 16)

    @Test("create enables memory, pids and cpu down to the run cgroup and writes every limit")
    func createWritesLimits() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "run-1", limits: limits)
        #expect(tree.read("cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(tree.read("stockade/cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(tree.read("stockade/run-1/memory.max") == "67108864")
        #expect(tree.read("stockade/run-1/memory.swap.max") == "0")
        #expect(tree.read("stockade/run-1/cpu.max") == "50000 100000")
        #expect(tree.read("stockade/run-1/pids.max") == "16")
        #expect(run.version == .v2)
        #expect(run.paths == [tree.root + "/stockade/run-1"])
        #expect(run.joinDescriptors.isEmpty)
        try run.remove()
    }

    @Test("the parent is prepared when it is missing, not at every run; a limit file gone sends create back to prepare it")
    func parentPreparedOnce() throws {
        let tree = try FakeCgroupTree()
        let driver = try tree.driver()
        try driver.create(name: "first", limits: limits).remove()
        #expect(tree.read("cgroup.subtree_control") == "+memory +pids +cpu")
        // Written at every run, these would read the controllers again.
        try tree.write("untouched", "cgroup.subtree_control")
        try tree.write("untouched", "stockade/cgroup.subtree_control")
        try driver.create(name: "second", limits: limits).remove()
        #expect(tree.read("cgroup.subtree_control") == "untouched")
        #expect(tree.read("stockade/cgroup.subtree_control") == "untouched")
        // The parent gone (as after a reboot): made again, controllers enabled again.
        #expect(rmdir(tree.root + "/stockade") != 0)
        FakeCgroupTree.emulation().depopulate(tree.root + "/stockade")
        #expect(rmdir(tree.root + "/stockade") == 0)
        try driver.create(name: "third", limits: limits).remove()
        #expect(tree.read("cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(tree.read("stockade/cgroup.subtree_control") == "+memory +pids +cpu")
        // A controller's file missing from a new run cgroup (the parent lost it): prepared again, then
        // refused with the file named if it is still missing.
        try tree.write("untouched", "cgroup.subtree_control")
        let lacking = try tree.driver(files: FakeCgroupTree.kernelFiles.filter { $0.0 != "cpu.max" })
        do throws(CgroupError) {
            _ = try lacking.create(name: "fourth", limits: limits)
            Issue.record("create succeeded without cpu.max")
        } catch {
            #expect(error.path?.hasSuffix("cpu.max") == true)
        }
        #expect(tree.read("cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(!tree.exists("stockade/fourth"))
    }

    @Test("the directory descriptor is the run cgroup's directory, and remove closes it")
    func directoryDescriptor() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "run-fd", limits: limits)
        let fd = try #require(run.directoryDescriptor)
        var byFd = stat(), byPath = stat()
        #expect(fstat(fd, &byFd) == 0 && stat(tree.root + "/stockade/run-fd", &byPath) == 0)
        #expect(byFd.st_ino == byPath.st_ino && byFd.st_dev == byPath.st_dev)
        #expect(byFd.st_mode & S_IFMT == S_IFDIR)
        try run.remove()
        #expect(run.directoryDescriptor == nil)
    }

    @Test("a swap limit is written only where the kernel accounts swap")
    func noSwapAccounting() throws {
        let tree = try FakeCgroupTree()
        let files = FakeCgroupTree.kernelFiles.filter { $0.0 != "memory.swap.max" }
        let run = try tree.driver(files: files).create(name: "noswap", limits: limits)
        #expect(!tree.exists("stockade/noswap/memory.swap.max"))
        #expect(tree.read("stockade/noswap/memory.max") == "67108864")
        try run.remove()
    }

    @Test("CPU limits become a CFS quota over a 100 ms period", arguments: [
        (0.5, "50000 100000"), (1.0, "100000 100000"), (2.0, "200000 100000"), (1.25, "125000 100000"), (0.001, "1000 100000"),
    ])
    func cpuQuota(cpus: Double, expected: String) throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "cpu", limits: CgroupLimits(memoryBytes: 1 << 20, cpus: cpus, pids: 1))
        #expect(tree.read("stockade/cpu/cpu.max") == expected)
        try run.remove()
    }

    @Test("usage reads usage_usec as nanoseconds, memory.peak, oom_kill of memory.events and max of pids.events")
    func usageCounters() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "count", limits: limits)
        try tree.write("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 4\n", "stockade/count/cpu.stat")
        try tree.write("52428800\n", "stockade/count/memory.peak")
        try tree.write("low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\noom_group_kill 0\n", "stockade/count/memory.events")
        try tree.write("max 7\n", "stockade/count/pids.events")
        #expect(run.usage() == CgroupUsage(cpuNanos: 1_234_567_000, memoryPeakBytes: 52_428_800, oomKills: 2, pidsLimitHits: 7))
        try run.remove()
    }

    @Test("counters the kernel does not offer read as zero")
    func missingCounters() throws {
        let tree = try FakeCgroupTree()
        let files = FakeCgroupTree.kernelFiles.filter { !["memory.peak", "memory.events", "cpu.stat", "pids.events"].contains($0.0) }
        let run = try tree.driver(files: files).create(name: "old", limits: limits)
        #expect(run.usage() == CgroupUsage())
        try run.remove()
    }

    @Test("processes lists cgroup.procs and isEmpty follows populated in cgroup.events")
    func processesAndPopulated() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "procs", limits: limits)
        #expect(run.isEmpty() && run.processes().isEmpty)
        try tree.write("42\n7\n", "stockade/procs/cgroup.procs")
        try tree.write("populated 1\nfrozen 0\n", "stockade/procs/cgroup.events")
        #expect(run.processes() == [7, 42])
        #expect(!run.isEmpty())
        try tree.write("", "stockade/procs/cgroup.procs")
        try tree.write("populated 0\nfrozen 0\n", "stockade/procs/cgroup.events")
        try run.remove()
    }

    @Test("killAll writes 1 to cgroup.kill")
    func killWritesKillFile() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "kill", limits: limits)
        #expect(tree.read("stockade/kill/cgroup.kill") == "")
        #expect(try run.killAll() == 0)
        #expect(tree.read("stockade/kill/cgroup.kill") == "1")
        try run.remove()
    }

    @Test("remove deletes the run directory, keeps the parent, and can be called again")
    func removeIsIdempotent() throws {
        let tree = try FakeCgroupTree()
        let run = try tree.driver().create(name: "gone", limits: limits)
        try run.remove()
        #expect(!tree.exists("stockade/gone"))
        #expect(tree.exists("stockade"))
        try run.remove()
    }

    @Test("removeStale removes the run cgroups that are not active and leaves the active ones")
    func removeStale() throws {
        let tree = try FakeCgroupTree()
        let driver = try tree.driver()
        let live = try driver.create(name: "live", limits: limits)
        _ = try driver.create(name: "crashed-1", limits: limits)
        _ = try driver.create(name: "crashed-2", limits: limits)
        let removed = driver.removeStale { $0 == "live" }
        #expect(removed == ["crashed-1", "crashed-2"])
        #expect(!tree.exists("stockade/crashed-1") && !tree.exists("stockade/crashed-2"))
        #expect(tree.exists("stockade/live/memory.max"))
        #expect(tree.read("stockade/crashed-1/cgroup.kill") == nil)
        try live.remove()
    }

    @Test("an empty run cgroup is abandoned only once it is old enough; a populated one never")
    func abandoned() throws {
        let tree = try FakeCgroupTree()
        let driver = try tree.driver()
        let run = try driver.create(name: "orphan", limits: limits)
        #expect(!driver.isAbandoned(name: "orphan", olderThan: 60), "a cgroup made just now may be waiting for its clone")
        let path = tree.root + "/stockade/orphan"
        var old = [timespec](repeating: timespec(tv_sec: time(nil) - 120, tv_nsec: 0), count: 2)
        #expect(utimensat(AT_FDCWD, path, &old, 0) == 0)
        #expect(driver.isAbandoned(name: "orphan", olderThan: 60))
        try tree.write("4242\n", "stockade/orphan/cgroup.procs")
        try tree.write("populated 1\nfrozen 0\n", "stockade/orphan/cgroup.events")
        #expect(utimensat(AT_FDCWD, path, &old, 0) == 0)
        #expect(!driver.isAbandoned(name: "orphan", olderThan: 60), "a populated cgroup is somebody's live run")
        #expect(!driver.isAbandoned(name: "missing", olderThan: 60))
        #expect(!driver.isAbandoned(name: "..", olderThan: 0))
        try tree.write("", "stockade/orphan/cgroup.procs")
        try tree.write("populated 0\nfrozen 0\n", "stockade/orphan/cgroup.events")
        try run.remove()
    }

    @Test("a second run cgroup of the same name is refused")
    func duplicateName() throws {
        let tree = try FakeCgroupTree()
        let driver = try tree.driver()
        let run = try driver.create(name: "twice", limits: limits)
        do throws(CgroupError) {
            _ = try driver.create(name: "twice", limits: limits)
            Issue.record("a second run cgroup named twice was made")
        } catch {
            #expect(error.code == .exists)
        }
        try run.remove()
    }

    @Test("a limit the kernel does not offer fails the create and leaves no run directory behind")
    func failedCreateCleansUp() throws {
        let tree = try FakeCgroupTree()
        let files = FakeCgroupTree.kernelFiles.filter { $0.0 != "pids.max" }
        do throws(CgroupError) {
            _ = try tree.driver(files: files).create(name: "half", limits: limits)
            Issue.record("create succeeded without pids.max")
        } catch {
            #expect(error.code == .fileSystem)
            #expect(error.path?.hasSuffix("pids.max") == true)
        }
        #expect(!tree.exists("stockade/half"))
    }

    @Test("a root that cannot enable pids fails closed with an error naming pids")
    func missingRootController() throws {
        let tree = try FakeCgroupTree(rootControllers: "cpu memory io\n", rootFiles: false)
        do throws(CgroupError) {
            _ = try tree.driver().create(name: "r", limits: limits)
            Issue.record("create succeeded without the pids controller")
        } catch {
            #expect(error.code == .missingController)
            #expect(error.message.contains("controller(s) pids are"))
            #expect(error.message.contains("subtree_control"))
        }
        #expect(!tree.exists("stockade"))
    }

    @Test("run names that are not one plain path component are refused", arguments: [
        "", ".", "..", "a/b", "../escape", "with space", "nul\u{0}", "tab\t", String(repeating: "x", count: 129),
    ])
    func invalidNames(name: String) throws {
        let tree = try FakeCgroupTree()
        do throws(CgroupError) {
            _ = try tree.driver().create(name: name, limits: limits)
            Issue.record("accepted \(name.debugDescription)")
        } catch {
            #expect(error.code == .invalidName)
        }
        #expect(!tree.exists("stockade"))
    }

    @Test("limits that cannot be expressed are refused before anything is made", arguments: [
        CgroupLimits(memoryBytes: 0, cpus: 1, pids: 1), CgroupLimits(memoryBytes: -1, cpus: 1, pids: 1),
        CgroupLimits(memoryBytes: 1 << 20, cpus: 0, pids: 1), CgroupLimits(memoryBytes: 1 << 20, cpus: -1, pids: 1),
        CgroupLimits(memoryBytes: 1 << 20, cpus: .nan, pids: 1), CgroupLimits(memoryBytes: 1 << 20, cpus: .infinity, pids: 1),
        CgroupLimits(memoryBytes: 1 << 20, cpus: 1, pids: 0),
    ])
    func invalidLimits(limits: CgroupLimits) throws {
        let tree = try FakeCgroupTree()
        do throws(CgroupError) {
            _ = try tree.driver().create(name: "bad", limits: limits)
            Issue.record("accepted \(limits)")
        } catch {
            #expect(error.code == .invalidLimits)
        }
        #expect(!tree.exists("stockade"))
    }
}
