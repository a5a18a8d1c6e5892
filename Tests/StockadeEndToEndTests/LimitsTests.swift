import Foundation
import Testing

func hostProcessCount() -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { Int($0) != nil }.count
}

@Suite("resource limits, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct LimitsTests {
    @Test("a memory bomb over --memory 64m is an oom: exit 137, counted by the kernel, audited")
    func memoryBomb() throws {
        let h = try Harness()
        let r = try h.run(["--memory", "64m"], ["/bin/sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"])
        #expect(r.status == 137)
        let report = try r.report()
        #expect(report.string("outcome") == "oom")
        #expect(((report["violations"] as? [[String: Any]]) ?? []).contains { $0["kind"] as? String == "memory" })
        let peak = report.int("memoryPeakBytes") ?? 0
        #expect(peak > 32 << 20 && peak <= 80 << 20, "peak \(peak)")
        let runId = try #require(report.string("runId"))
        let kinds = try auditEvents(h, ["--run", runId]).compactMap { $0["kind"] as? String }
        #expect(kinds.contains("limit.hit") && kinds.contains("kill"))
    }

    @Test("a tmpfs memory bomb is held by the same limit")
    func tmpfsBomb() throws {
        let h = try Harness()
        let r = try h.run(["--memory", "64m"], ["/bin/sh", "-c", "head -c 120000000 /dev/zero > /dev/shm/fill; echo survived $?"])
        let report = try r.report()
        // Either the write is refused (the shm tmpfs is also bounded) or the kernel OOM-kills: never 120 MB held.
        let peak = report.int("memoryPeakBytes") ?? 0
        #expect(peak <= 80 << 20, "peak \(peak)")
    }

    @Test("a fork bomb is held at the pids limit, recorded as a pids violation, and the host's process count barely moves")
    func forkBomb() throws {
        let h = try Harness()
        let before = hostProcessCount()
        let r = try h.run(["--pids", "32", "--timeout", "5"], ["/bin/sh", "-c", "i=0; while [ $i -lt 200 ]; do sleep 3 & i=$((i+1)); done 2>/dev/null; echo spawned"])
        let report = try r.report()
        #expect(((report["violations"] as? [[String: Any]]) ?? []).contains { $0["kind"] as? String == "pids" }, "\(report)")
        #expect(hostProcessCount() < before + 40)
        #expect((report.int("orphansKilled") ?? 0) <= 32)
    }

    @Test("a spinner with --cpus 0.5 gets about half a core")
    func cpuQuota() throws {
        let h = try Harness()
        let r = try h.run(["--cpus", "0.5", "--timeout", "3"], ["/bin/sh", "-c", "while :; do :; done"])
        let report = try r.report()
        #expect(report.string("outcome") == "timeout")
        let cpu = Double(report.int("cpuTimeMs") ?? 0), wall = Double(report.int("durationMs") ?? 1)
        #expect(cpu / wall > 0.3 && cpu / wall < 0.7, "cpu \(cpu) ms over \(wall) ms")
    }

    @Test("the run's cgroup is gone after the run")
    func cgroupRemoved() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "cat /proc/self/cgroup"])
        let runId = try #require(try r.report().string("runId"))
        // Every hierarchy's directory, as recorded when the worker started: gone once the command has exited.
        let paths = try runCgroupPaths(h, runId)
        for path in paths {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) is still there")
            #expect(FileManager.default.fileExists(atPath: (path as NSString).deletingLastPathComponent))
        }
    }

    @Test("a supervisor removes an empty, old run cgroup that no state directory owns, and keeps a young one")
    func abandonedCgroupRemoved() throws {
        let h = try Harness()
        // What a supervisor killed together with its (since removed) state directory leaves behind.
        let hierarchies = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer"]
            .filter { FileManager.default.fileExists(atPath: $0 + "/stockade") }
        try #require(!hierarchies.isEmpty, "no cgroup v1 hierarchies with a stockade parent")
        let suffix = String(getpid())
        let old = "01ABANDONEDOLD" + suffix, young = "01ABANDONEDYOUNG" + suffix
        var aged = [timespec](repeating: timespec(tv_sec: time(nil) - 600, tv_nsec: 0), count: 2)
        for root in hierarchies {
            #expect(mkdir(root + "/stockade/" + old, 0o755) == 0)
            #expect(utimensat(AT_FDCWD, root + "/stockade/" + old, &aged, 0) == 0)
            #expect(mkdir(root + "/stockade/" + young, 0o755) == 0)
        }
        defer { for root in hierarchies { rmdir(root + "/stockade/" + old); rmdir(root + "/stockade/" + young) } }
        let r = try h.run([], ["/bin/true"])
        #expect(r.status == 0)
        for root in hierarchies {
            #expect(!FileManager.default.fileExists(atPath: root + "/stockade/" + old), "\(root): the abandoned cgroup stayed")
            #expect(FileManager.default.fileExists(atPath: root + "/stockade/" + young), "\(root): a young cgroup was removed")
        }
    }
}
