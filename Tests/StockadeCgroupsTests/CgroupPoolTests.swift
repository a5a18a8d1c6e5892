import Foundation
import Testing
@testable import StockadeCgroups

@Suite("the run cgroup pool on a fake cgroupfs tree")
struct CgroupPoolTests {
    let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 0.5, pids: 16)
    let other = CgroupLimits(memoryBytes: 128 << 20, cpus: 1, pids: 32)

    /// The pool's cgroups under the tree's stockade parent.
    func made(_ tree: FakeCgroupTree, _ prefix: String) -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: tree.root + "/stockade")) ?? []).filter { $0.hasPrefix(prefix) })
    }

    @Test("a cgroup made ahead by a pool that keeps none is handed to the next take with its limits, once; other limits get their own")
    func madeAheadTakenOnce() throws {
        let tree = try FakeCgroupTree()
        let pool = CgroupPool(driver: try tree.driver(), prefix: "ahead-", depth: 0)
        let name = try #require(pool.makeAhead(limits: limits))
        #expect(made(tree, "ahead-") == [name])
        #expect(tree.read("stockade/\(name)/memory.max") == "67108864")
        let first = try pool.take(limits: limits)
        #expect(first.name == name, "take made another instead of handing out the one made ahead")
        let second = try pool.take(limits: limits)
        #expect(second.name != name, "the cgroup made ahead was handed out twice")
        let third = try pool.take(limits: other)
        #expect(third.name != name && third.name != second.name)
        #expect(tree.read("stockade/\(third.name)/memory.max") == "134217728")
        // A pool that keeps none made nothing more behind the runs' backs.
        #expect(made(tree, "ahead-") == [name, second.name, third.name])
        for cgroup in [first, second, third] { pool.retire(cgroup) }
        pool.close()
        #expect(made(tree, "ahead-").isEmpty)
    }

    @Test("a cgroup made ahead that no run takes is removed when the pool closes; a closed pool makes none")
    func unusedRemovedAtClose() throws {
        let tree = try FakeCgroupTree()
        let pool = CgroupPool(driver: try tree.driver(), prefix: "unused-", depth: 0)
        let name = try #require(pool.makeAhead(limits: limits))
        #expect(made(tree, "unused-") == [name])
        pool.close()
        #expect(made(tree, "unused-").isEmpty, "the unused cgroup made ahead was left behind")
        #expect(pool.makeAhead(limits: limits) == nil)
        #expect(made(tree, "unused-").isEmpty, "a closed pool made a cgroup")
        // Limits that cannot be expressed are not made ahead either.
        let open = CgroupPool(driver: try tree.driver(), prefix: "bad-", depth: 0)
        #expect(open.makeAhead(limits: CgroupLimits(memoryBytes: 0, cpus: 0.5, pids: 16)) == nil)
        #expect(made(tree, "bad-").isEmpty)
        open.close()
    }
}
