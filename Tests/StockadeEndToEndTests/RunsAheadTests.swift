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

    @Test("a namespace made ahead is set up for its run: lo down for network none, up with every port bindable for loopback")
    func namespaceSetUpPerRun() throws {
        let h = try Harness()
        let script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; grep -c . /proc/net/dev"
        let lines = [
            "{\"id\": \"none\", \"network\": \"none\", \"command\": [\"/bin/sh\", \"-c\", \"\(script); cat /sys/class/net/lo/flags 2>/dev/null || echo -\"]}",
            "{\"id\": \"loopback\", \"network\": \"loopback\", \"command\": [\"/bin/sh\", \"-c\", \"\(script)\"]}",
            "{\"id\": \"none-again\", \"network\": \"none\", \"command\": [\"/bin/sh\", \"-c\", \"\(script)\"]}",
        ]
        let r = try h.stockade(["batch", "--parallel", "1", "-"], stdin: lines.joined(separator: "\n") + "\n")
        #expect(r.status == 0, "\(r.stderr)")
        var byId: [String: [String]] = [:]
        for line in r.stdout.split(separator: "\n") {
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            byId[report.string("id") ?? "?"] = (report.string("stdout") ?? "").split(separator: "\n").map(String.init)
        }
        // Only `lo` in /proc/net/dev (two header lines and one interface), whatever the run before did.
        #expect(byId["none"]?.prefix(2) == ["1024", "3"], "\(byId)")
        #expect(byId["loopback"] == ["0", "3"], "\(byId)")
        #expect(byId["none-again"] == ["1024", "3"], "the loopback run's set-up must not reach the next run: \(byId)")
    }

    @Test("with cgroups made ahead, each run has a cgroup of its own, and none is left once the batch has exited")
    func cgroupsUsedOnce() throws {
        let h = try Harness()
        let lines = (0..<4).map { "{\"id\": \"c\($0)\", \"memory\": \"\($0 < 2 ? 64 : 96)m\", \"command\": [\"/bin/true\"]}" }
        let r = try h.stockade(["batch", "--parallel", "1", "-"], stdin: lines.joined(separator: "\n") + "\n")
        #expect(r.status == 0, "\(r.stderr)")
        var seen = Set<String>()
        for line in r.stdout.split(separator: "\n") {
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let paths = try runCgroupPaths(h, try #require(report.string("runId")))
            for path in paths {
                #expect(seen.insert(path).inserted, "\(path) served two runs")
                #expect(!FileManager.default.fileExists(atPath: path), "\(path) is still there after the batch")
            }
        }
        #expect(seen.count >= 4)
        // Neither the runs' cgroups nor the ones made ahead for a next run are left.
        // The batch's pool prefix (p-<pid>-<start>), read from the paths.
        let prefixes = Set(seen.map { ($0 as NSString).lastPathComponent.split(separator: "-").prefix(3).joined(separator: "-") })
        #expect(prefixes.count == 1, "\(prefixes)")
        for root in Set(seen.map { ($0 as NSString).deletingLastPathComponent }) {
            let left = try FileManager.default.contentsOfDirectory(atPath: root).filter { name in prefixes.contains { name.hasPrefix($0 + "-") } }
            #expect(left.isEmpty, "\(root): \(left) left behind")
        }
    }

    @Test("a supervisor removes the cgroups a dead supervisor made ahead, and keeps a live one's")
    func deadPoolsRemoved() throws {
        let h = try Harness()
        let hierarchies = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer", "/sys/fs/cgroup"]
            .filter { FileManager.default.fileExists(atPath: $0 + "/stockade") && FileManager.default.fileExists(atPath: $0 + "/cgroup.procs") }
        try #require(!hierarchies.isEmpty, "no cgroup hierarchy with a stockade parent")
        // Field 22 of /proc/self/stat: this process's start time, as the pool names carry it.
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
        let start = try #require(UInt64(fields[19]))
        let dead = "p-\(Int32.max)-1-1", live = "p-\(getpid())-\(start)-1"
        for root in hierarchies {
            #expect(mkdir(root + "/stockade/" + dead, 0o755) == 0)
            #expect(mkdir(root + "/stockade/" + live, 0o755) == 0)
        }
        defer { for root in hierarchies { rmdir(root + "/stockade/" + dead); rmdir(root + "/stockade/" + live) } }
        let r = try h.run([], ["/bin/true"])
        #expect(r.status == 0)
        for root in hierarchies {
            #expect(!FileManager.default.fileExists(atPath: root + "/stockade/" + dead), "\(root): the dead supervisor's cgroup stayed")
            #expect(FileManager.default.fileExists(atPath: root + "/stockade/" + live), "\(root): a live supervisor's cgroup was removed")
        }
    }
}
