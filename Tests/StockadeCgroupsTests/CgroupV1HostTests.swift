import Glibc
import Testing
@testable import StockadeCgroups

/// The v1 hierarchies of this host, when they are all mounted and the tests run as root.
let hostV1: CgroupV1? = {
    guard getuid() == 0, let driver = try? Cgroups.detect() as? CgroupV1 else { return nil }
    removeTestParentsOfDeadRuns(driver)
    // A parent of its own, so these tests never touch (or removeStale) another supervisor's runs.
    return try? CgroupV1(mounts: driver.mounts, parent: "stockade-test-\(getpid())")
}()

@Suite("cgroup v1 driver on this host's hierarchies", .serialized,
       .enabled(if: hostV1 != nil, "needs root and the v1 controllers memory, cpu, cpuacct, pids and freezer mounted"))
struct CgroupV1HostTests {
    let driver: CgroupV1
    let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 0.5, pids: 16)

    init() throws {
        driver = try #require(hostV1)
    }

    func cleanUp() {
        for hierarchy in driver.hierarchies { rmdir(hierarchy + "/" + driver.parent) }
    }

    @Test("create writes 64 MiB, 0.5 CPU and 16 pids into the kernel's files, and remove deletes every directory")
    func limitsInKernelFiles() throws {
        defer { cleanUp() }
        let run = try driver.create(name: "limits", limits: limits)
        let d = driver.directories(for: "limits")
        #expect(trimmed(d.memory + "/memory.limit_in_bytes") == "67108864")
        if access(d.memory + "/memory.memsw.limit_in_bytes", F_OK) == 0 {
            #expect(trimmed(d.memory + "/memory.memsw.limit_in_bytes") == "67108864")
        }
        #expect(trimmed(d.memory + "/memory.kmem.tcp.limit_in_bytes") == "16777216")
        #expect(trimmed(d.cpu + "/cpu.cfs_period_us") == "100000")
        #expect(trimmed(d.cpu + "/cpu.cfs_quota_us") == "50000")
        #expect(trimmed(d.pids + "/pids.max") == "16")
        #expect(Set(run.paths) == Set(driver.hierarchies.map { $0 + "/" + driver.parent + "/limits" }))
        #expect(run.joinDescriptors.count == run.paths.count)
        #expect(run.directoryDescriptor == nil)
        try run.remove()
        for path in run.paths { #expect(access(path, F_OK) != 0, "\(path) left behind") }
        #expect(run.joinDescriptors.isEmpty)
        try run.remove()
    }

    @Test("killAll kills a worker, a setsid daemon ignoring SIGTERM, and a stopped process; the cgroup ends empty",
          .timeLimit(.minutes(3)))
    func killAllReachesEveryProcess() throws {
        defer { cleanUp() }
        let run = try driver.create(name: "kill", limits: limits)
        defer { try? run.remove() }
        let worker = try HeldProcess("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; setsid sh -c 'trap \"\" TERM; exec sleep 100' & exec sleep 100")
        let stopped = try HeldProcess("trap '' TERM; exec sleep 100")
        for child in [worker, stopped] {
            try join(child.pid, through: run.joinDescriptors)
            child.start()
        }
        kill(stopped.pid, SIGSTOP)
        #expect(eventually { run.processes().count >= 3 }, "expected the worker, its daemon and the stopped process, saw \(run.processes())")
        let seen = run.processes()
        #expect(seen.contains(worker.pid) && seen.contains(stopped.pid))
        #expect(!run.isEmpty())
        // SIGTERM is ignored by the daemon and the stopped process: only the cgroup kill ends them.
        kill(stopped.pid, SIGTERM)

        let signalled = try run.killAll()
        #expect(signalled >= 3)
        #expect(run.isEmpty())
        #expect(run.processes().isEmpty)
        #expect(worker.reap() == SIGKILL)
        #expect(stopped.reap() == SIGKILL)
        #expect(trimmed(driver.directories(for: "kill").freezer + "/freezer.state") == "THAWED")

        let usage = run.usage()
        #expect(usage.cpuNanos > 1_000_000, "the shell's loop took more than 1 ms of CPU: \(usage)")
        #expect(usage.memoryPeakBytes > 0 && usage.memoryPeakBytes <= 64 << 20)
        #expect(usage.oomKills == 0 && usage.pidsLimitHits == 0)
        try run.remove()
        for path in run.paths { #expect(access(path, F_OK) != 0) }
    }

    @Test("the pids limit holds and its hits are counted", .timeLimit(.minutes(3)))
    func pidsLimitHits() throws {
        defer { cleanUp() }
        let run = try driver.create(name: "pids", limits: CgroupLimits(memoryBytes: 64 << 20, cpus: 1, pids: 4))
        defer { try? run.remove() }
        let bomb = try HeldProcess("for i in 1 2 3 4 5 6 7 8; do sleep 100 & done; exec sleep 100")
        try join(bomb.pid, through: run.joinDescriptors)
        bomb.start()
        #expect(eventually { run.usage().pidsLimitHits > 0 })
        #expect(run.processes().count <= 4)
        #expect(try run.killAll() >= 1)
        _ = bomb.reap()
        try run.remove()
    }

    @Test("killAll empties a fork bomb that keeps refilling its pids limit", .timeLimit(.minutes(3)))
    func killAllForkBomb() throws {
        defer { cleanUp() }
        let run = try driver.create(name: "bomb", limits: CgroupLimits(memoryBytes: 64 << 20, cpus: 0.5, pids: 16))
        defer { try? run.remove() }
        // bash, unlike dash, retries a refused fork instead of exiting, so the bomb stays at its limit.
        let bomb = try HeldProcess("exec 2>/dev/null; f() { f & f & wait; }; f", shell: "/bin/bash")
        try join(bomb.pid, through: run.joinDescriptors)
        bomb.start()
        #expect(eventually { run.processes().count >= 12 && run.usage().pidsLimitHits > 0 })
        #expect(try run.killAll() >= 12)
        #expect(run.isEmpty())
        #expect(bomb.reap() == SIGKILL)
        try run.remove()
    }

    @Test("a run cgroup is abandoned when it is empty and old, not while a process is in it", .timeLimit(.minutes(3)))
    func abandoned() throws {
        defer { cleanUp() }
        let run = try driver.create(name: "aged", limits: limits)
        defer { try? run.remove() }
        #expect(!driver.isAbandoned(name: "aged", olderThan: 60), "a cgroup made just now may be waiting for its clone")
        var old = [timespec](repeating: timespec(tv_sec: time(nil) - 120, tv_nsec: 0), count: 2)
        for path in run.paths { #expect(utimensat(AT_FDCWD, path, &old, 0) == 0, "\(path)") }
        #expect(driver.isAbandoned(name: "aged", olderThan: 60))
        let member = try HeldProcess("exec sleep 100")
        try join(member.pid, through: run.joinDescriptors)
        member.start()
        #expect(eventually { run.processes() == [member.pid] })
        #expect(!driver.isAbandoned(name: "aged", olderThan: 60), "a populated cgroup is somebody's live run")
        _ = try run.killAll()
        #expect(member.reap() == SIGKILL)
        try run.remove()
    }

    @Test("removeStale kills and removes a leftover run cgroup and leaves the active one", .timeLimit(.minutes(3)))
    func removeStale() throws {
        defer { cleanUp() }
        let live = try driver.create(name: "live", limits: limits)
        let stale = try driver.create(name: "stale", limits: limits)
        let orphan = try HeldProcess("exec sleep 100")
        try join(orphan.pid, through: stale.joinDescriptors)
        orphan.start()
        #expect(eventually { stale.processes() == [orphan.pid] })

        #expect(driver.removeStale { $0 == "live" } == ["stale"])
        #expect(orphan.reap() == SIGKILL)
        for path in stale.paths { #expect(access(path, F_OK) != 0, "\(path) left behind") }
        for path in live.paths { #expect(access(path, F_OK) == 0, "\(path) removed") }
        try live.remove()
        try stale.remove()
    }
}

/// A test process killed mid-run leaves its `stockade-test-<pid>` parent behind: clear those whose process
/// is gone, with the driver's own stale-run removal.
func removeTestParentsOfDeadRuns(_ driver: CgroupV1) {
    for hierarchy in driver.hierarchies {
        for name in CgroupFiles.subdirectories(hierarchy) where name.hasPrefix("stockade-test-") {
            guard let pid = pid_t(name.dropFirst("stockade-test-".count)), kill(pid, 0) != 0, errno == ESRCH,
                  let stale = try? CgroupV1(mounts: driver.mounts, parent: name) else { continue }
            _ = stale.removeStale { _ in false }
            for h in stale.hierarchies { rmdir(h + "/" + name) }
        }
    }
}
