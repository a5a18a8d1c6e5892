import Glibc
import Testing
@testable import StockadeCgroups

/// This host's cgroup2 mount without controllers: enough for v2's cgroup.kill, cgroup.freeze and
/// cgroup.events, which are core files, though not for limits.
let unifiedRoot: String? = {
    guard getuid() == 0 else { return nil }
    let mounts = MountInfo.parse(readText("/proc/self/mountinfo") ?? "")
    return mounts.first { $0.fileSystemType == "cgroup2" && !$0.isReadOnly }?.mountPoint
}()

@Suite("cgroup v2 killAll on this host's real cgroup2 hierarchy", .serialized,
       .enabled(if: unifiedRoot != nil, "needs root and a cgroup2 mount"))
struct CgroupV2UnifiedKillTests {
    @Test("killAll empties the cgroup with cgroup.kill, and with freeze and SIGKILL where it is not used",
          .timeLimit(.minutes(3)), arguments: [true, false])
    func killAll(useKillFile: Bool) throws {
        let root = try #require(unifiedRoot)
        let parent = root + "/stockade-test-\(getpid())"
        let path = parent + "/kill-\(useKillFile)"
        _ = mkdir(parent, 0o755)
        defer { rmdir(parent) }
        #expect(mkdir(path, 0o755) == 0)
        let run = RunCgroup(name: "kill-\(useKillFile)", layout: .v2(directory: path, useKillFile: useKillFile), paths: [path])
        defer { try? run.remove() }
        let procs = open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        defer { close(procs) }
        let worker = try HeldProcess("setsid sh -c 'trap \"\" TERM; exec sleep 100' & exec sleep 100")
        let stopped = try HeldProcess("trap '' TERM; exec sleep 100")
        for child in [worker, stopped] {
            try join(child.pid, through: [procs])
            child.start()
        }
        kill(stopped.pid, SIGSTOP)
        #expect(eventually { run.processes().count >= 3 })
        #expect(!run.isEmpty())

        #expect(try run.killAll() >= 3)
        #expect(run.isEmpty())
        #expect(worker.reap() == SIGKILL)
        #expect(stopped.reap() == SIGKILL)
        if !useKillFile { #expect(trimmed(path + "/cgroup.freeze") == "0") }
        try run.remove()
        #expect(access(path, F_OK) != 0)
    }
}
