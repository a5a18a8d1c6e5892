import Foundation
import Testing

/// What a supervisor that runs many workers makes ahead of them (network namespaces in the spawn
/// helpers, run cgroups in the pool) must be each run's alone.
@Suite("made ahead, used once", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct RunsAheadTests {
    /// Eight workers alive at once from a batch whose four spawn helpers each keep a network namespace
    /// made ahead, and serve two spawns each: a namespace handed out twice would show in two live
    /// workers at once (a namespace's inode number is recycled only once it is freed, so live workers
    /// that differ are different namespaces).
    @Test("with namespaces made ahead, every live worker has a network namespace of its own, none the host's")
    func networkNamespacesNeverShared() throws {
        let h = try Harness()
        let hostNamespace = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        // The positive control: the same reading twice in one namespace is equal, so equality is visible.
        #expect(hostNamespace == (try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")))
        let lines = (0..<8).map { i in
            "{\"id\": \"w\(i)\", \"network\": \"\(i % 2 == 0 ? "none" : "loopback")\", \"command\": [\"/bin/sh\", \"-c\", \"readlink /proc/self/ns/net; cat /sys/class/net/lo/operstate 2>/dev/null || true; sleep 3\"]}"
        }
        let r = try h.stockade(["batch", "--parallel", "8", "-"], stdin: lines.joined(separator: "\n") + "\n")
        #expect(r.status == 0, "\(r.stderr)")
        let reports = try r.stdout.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(reports.count == 8)
        var namespaces: [String: String] = [:]
        for report in reports {
            let id = report.string("id") ?? "?"
            #expect(report.string("outcome") == "exited", "\(report)")
            let namespace = (report.string("stdout") ?? "").split(separator: "\n").first.map(String.init) ?? ""
            #expect(namespace.hasPrefix("net:["), "\(id): \(report)")
            #expect(namespace != hostNamespace, "\(id) ran in the host's network namespace")
            if let other = namespaces[namespace] { Issue.record("\(id) and \(other) shared \(namespace) while both were alive") }
            namespaces[namespace] = id
        }
        #expect(namespaces.count == 8)
    }

    @Test("a namespace made ahead is set up for its run: lo down for network none, up with every port bindable for loopback; the host's own setting untouched")
    func namespaceSetUpPerRun() throws {
        let h = try Harness()
        let hostPorts = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding: .utf8)
        // The port sysctl; whether 127.0.0.1 is a local address (lo up); how many interfaces there are.
        let script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; grep -c 127.0.0.1 /proc/net/fib_trie; grep -c : /proc/net/dev"
        let lines = ["none", "loopback", "none"].enumerated().map { i, mode in
            "{\"id\": \"\(i)-\(mode)\", \"network\": \"\(mode)\", \"command\": [\"/bin/sh\", \"-c\", \"\(script)\"]}"
        }
        let r = try h.stockade(["batch", "--parallel", "1", "-"], stdin: lines.joined(separator: "\n") + "\n")
        var byId: [String: [String]] = [:]
        for line in r.stdout.split(separator: "\n") {
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            byId[report.string("id") ?? "?"] = (report.string("stdout") ?? "").split(separator: "\n").map(String.init)
        }
        // grep -c prints 0 (and exits 1) when lo is down: the run's exit code is not the point here.
        #expect(byId["0-none"] == ["1024", "0", "1"], "\(byId) \(r.stderr)")
        #expect(byId["1-loopback"]?.first == "0" && (Int(byId["1-loopback"]?[1] ?? "") ?? 0) > 0 && byId["1-loopback"]?.last == "1", "\(byId)")
        #expect(byId["2-none"] == ["1024", "0", "1"], "the loopback run's set-up must not reach the next run: \(byId)")
        #expect(try String(contentsOfFile: "/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding: .utf8) == hostPorts,
                "the helper set the port sysctl in the host's namespace")
    }

    @Test("with cgroups made ahead, each run has a cgroup of its own, and none is left once the batch has exited")
    func cgroupsUsedOnce() throws {
        let h = try Harness()
        // Limits that alternate, with the pool warm for both: a 90 MiB buffer is out of memory under
        // 64m and fits under 160m, so a cgroup handed to a run with the other limits, or a worker
        // outside its cgroup, shows.
        let lines = (0..<6).map { i in
            "{\"id\": \"c\(i)\", \"memory\": \"\(i % 2 == 0 ? 64 : 160)m\", \"command\": [\"/bin/dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=90M\", \"count=1\"]}"
        }
        let r = try h.stockade(["batch", "--parallel", "1", "-"], stdin: lines.joined(separator: "\n") + "\n")
        var seen = Set<String>()
        for line in r.stdout.split(separator: "\n") {
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let index = Int(report.string("id")?.dropFirst() ?? "") ?? -1
            #expect(report.string("outcome") == (index % 2 == 0 ? "oom" : "exited"), "\(report)")
            let paths = try runCgroupPaths(h, try #require(report.string("runId")))
            for path in paths {
                #expect(seen.insert(path).inserted, "\(path) served two runs")
                #expect(!FileManager.default.fileExists(atPath: path), "\(path) is still there after the batch")
            }
        }
        #expect(seen.count >= 6)
        // Neither the runs' cgroups nor the ones made ahead for a next run are left.
        // The batch's pool prefix (p-<pid namespace>-<pid>-<start>), read from the paths.
        let prefixes = Set(seen.map { ($0 as NSString).lastPathComponent.split(separator: "-").prefix(4).joined(separator: "-") })
        #expect(prefixes.count == 1, "\(prefixes)")
        for root in Set(seen.map { ($0 as NSString).deletingLastPathComponent }) {
            let left = try FileManager.default.contentsOfDirectory(atPath: root).filter { name in prefixes.contains { name.hasPrefix($0 + "-") } }
            #expect(left.isEmpty, "\(root): \(left) left behind")
        }
    }

    @Test("a one-shot run's cgroup, made while its store opens, is the run's, limits it, and is gone once stockade run has exited")
    func oneShotCgroupMadeAhead() throws {
        let h = try Harness()
        // A 90 MiB buffer is out of memory under 64m: the cgroup made ahead carries the run's limits.
        let r = try h.stockade(["--log-format", "json", "run", "--json", "--memory", "64m", "--", "/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=90M", "count=1"],
                               environment: ["STOCKADE_LOG": "debug"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout) \(r.stderr)")
        #expect(report.string("outcome") == "oom", "\(report)")
        // What the supervisor made ahead, from its debug log; the run's cgroup, from the trail.
        let logged = r.stderr.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let ahead = try #require(logged.first { $0.string("message") == "run.prepared-ahead" }, "no run.prepared-ahead line: \(r.stderr)")
        let made = try #require(ahead.string("cgroup"))
        #expect(made.hasPrefix("p-"), "\(ahead)")
        let paths = try runCgroupPaths(h, try #require(report.string("runId")))
        for path in paths {
            #expect((path as NSString).lastPathComponent == made, "the run's cgroup \(path) is not the one made ahead (\(made))")
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) is still there after stockade run exited")
        }
        // Nothing else of this process's pool is left either.
        let prefix = made.split(separator: "-").prefix(4).joined(separator: "-") + "-"
        for root in Set(paths.map { ($0 as NSString).deletingLastPathComponent }) {
            let left = try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.hasPrefix(prefix) }
            #expect(left.isEmpty, "\(root): \(left) left behind")
        }
    }

    @Test("a supervisor removes the cgroups of a dead supervisor (killing what is in them), keeps a live one's and, for another pid namespace's, waits until empty and old")
    func deadPoolsRemoved() throws {
        let h = try Harness()
        let hierarchies = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer", "/sys/fs/cgroup"]
            .filter { FileManager.default.fileExists(atPath: $0 + "/stockade") && FileManager.default.fileExists(atPath: $0 + "/cgroup.procs") }
        try #require(!hierarchies.isEmpty, "no cgroup hierarchy with a stockade parent")
        // Field 22 of /proc/self/stat: this process's start time, as the pool names carry it; and our pid namespace.
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
        let start = try #require(UInt64(fields[19]))
        let pidns = try #require(Self.inode("/proc/self/ns/pid"))
        let names = [
            "dead": "p-\(pidns)-\(Int32.max)-1-1",            // no such pid
            "reused": "p-\(pidns)-\(getpid())-\(start + 1)-1", // our pid, another start time: a reused pid
            "populated": "p-\(pidns)-\(Int32.max)-1-2",       // dead maker, a process still inside
            "live": "p-\(pidns)-\(getpid())-\(start)-1",       // this process: alive
            "foreign": "p-\(pidns + 1)-1-1-1",                 // another pid namespace's: empty but young
        ]
        for root in hierarchies { for name in names.values { #expect(mkdir(root + "/stockade/" + name, 0o755) == 0) } }
        defer { for root in hierarchies { for name in names.values { rmdir(root + "/stockade/" + name) } } }
        // The positive control for "populated": a process of ours, placed in that cgroup, alive before the run.
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        defer { if sleeper.isRunning { sleeper.terminate() } }
        for root in hierarchies {
            try "\(sleeper.processIdentifier)".write(toFile: root + "/stockade/" + names["populated"]! + "/cgroup.procs", atomically: false, encoding: .utf8)
        }
        #expect(sleeper.isRunning)
        let r = try h.run([], ["/bin/true"])
        #expect(r.status == 0)
        sleeper.waitUntilExit()
        #expect(sleeper.terminationReason == .uncaughtSignal && sleeper.terminationStatus == SIGKILL, "the process in a dead pool's cgroup was not killed")
        for root in hierarchies {
            for key in ["dead", "reused", "populated"] {
                #expect(!FileManager.default.fileExists(atPath: root + "/stockade/" + names[key]!), "\(root): the \(key) cgroup stayed")
            }
            for key in ["live", "foreign"] {
                #expect(FileManager.default.fileExists(atPath: root + "/stockade/" + names[key]!), "\(root): the \(key) cgroup was removed")
            }
        }
    }

    /// The inode number `path` resolves to (a namespace's, for /proc/self/ns/*).
    static func inode(_ path: String) -> UInt64? {
        var buffer = stat()
        return stat(path, &buffer) == 0 ? UInt64(buffer.st_ino) : nil
    }
}
