import Foundation
import Glibc
import Testing
@testable import StockadeLinux

@Suite("the root split made once per profile", .serialized)
struct RootPlanCacheTests {
    /// A host tree as the layout looks at it: /usr, /lib64 a link, /etc/ld.so.cache a file.
    func makeHost() throws -> String {
        let host = FileManager.default.temporaryDirectory.appendingPathComponent("plan-host-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: host + "/usr/lib", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: host + "/etc", withIntermediateDirectories: true)
        #expect(symlink("usr/lib", host + "/lib64") == 0)
        try Data("one".utf8).write(to: URL(fileURLWithPath: host + "/etc/ld.so.cache"))
        return host
    }

    func layout(_ host: String, result: Int32, workspace: Int32? = nil) -> RootLayout {
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "plan-\(host.suffix(8))", tmpBytes: 64 << 20,
                           workspace: workspace.map { .mount(fd: $0) } ?? .empty(sizeBytes: 1 << 20),
                           resultMount: result, resultBytes: 1 << 20)
        l.hostRoot = host
        return l
    }

    func attached(_ split: RootSkeleton.Split) -> [String: Int32] {
        var found: [String: Int32] = [:]
        for step in split.steps { if case let .attach(fd, target) = step { found[target] = fd } }
        return found
    }

    @Test("a second run of the same layout reuses the split, with its own descriptors, and gets what a fresh split gives")
    func reusedWithOwnDescriptors() throws {
        let host = try makeHost()
        defer { try? FileManager.default.removeItem(atPath: host) }
        let first = RootPlanCache.split(layout(host, result: 11, workspace: 12))
        #expect(!first.reused)
        let again = RootPlanCache.split(layout(host, result: 21, workspace: 22))
        #expect(again.reused)
        #expect(attached(again.split) == ["/sandbox/result": 21, "/workspace": 22])
        let fresh = RootPlanCache.make(layout(host, result: 21, workspace: 22))
        #expect(again.split.entries == fresh.entries && again.split.fresh == fresh.fresh)
        #expect("\(again.split.steps)" == "\(fresh.steps)")
    }

    @Test("a host file replaced since (ld.so.cache, a link made a directory) makes the split again")
    func hostChangeMakesItAgain() throws {
        let host = try makeHost()
        defer { try? FileManager.default.removeItem(atPath: host) }
        _ = RootPlanCache.split(layout(host, result: 11))
        #expect(RootPlanCache.split(layout(host, result: 11)).reused)
        // A new ld.so.cache (a new inode, as ldconfig writes it): the skeleton must bind the new one.
        try Data("two".utf8).write(to: URL(fileURLWithPath: host + "/etc/ld.so.cache.new"))
        #expect(rename(host + "/etc/ld.so.cache.new", host + "/etc/ld.so.cache") == 0)
        let replaced = RootPlanCache.split(layout(host, result: 11))
        #expect(!replaced.reused)
        var st = stat()
        #expect(stat(host + "/etc/ld.so.cache", &st) == 0)
        #expect(replaced.split.entries.contains { entry in
            if case let .bind(_, _, _, _, _, _, inode) = entry.kind { return entry.path == "/etc/ld.so.cache" && inode == UInt64(st.st_ino) }
            return false
        })
        // /lib64 a directory instead of a link.
        #expect(unlink(host + "/lib64") == 0 && mkdir(host + "/lib64", 0o755) == 0)
        let relaid = RootPlanCache.split(layout(host, result: 11))
        #expect(!relaid.reused)
        #expect(!relaid.split.entries.contains { if case .symlink = $0.kind { return $0.path == "/lib64" } else { return false } })
        #expect(relaid.split.entries == RootPlanCache.make(layout(host, result: 11)).entries)
    }

    @Test("a layout with per-run values (a request directory, a writable volume's owner) is never kept")
    func perRunValuesNotKept() throws {
        let host = try makeHost()
        defer { try? FileManager.default.removeItem(atPath: host) }
        var request = layout(host, result: 11)
        request.requestDirectory = host + "/runs/a/request"
        #expect(RootPlanCache.key(request) == nil)
        var owned = layout(host, result: 11)
        owned.volumes = [.init(source: host + "/usr", target: "/data", readOnly: false)]
        owned.workerHostIds = (1_000_001_000, 1_000_001_000)
        #expect(RootPlanCache.key(owned) == nil)
        _ = RootPlanCache.split(owned)
        #expect(!RootPlanCache.split(owned).reused)
        owned.volumes = [.init(source: host + "/usr", target: "/data", readOnly: true)]
        #expect(RootPlanCache.key(owned) != nil)
    }
}
