import Foundation
import Testing

@Suite("query commands change nothing in the state directory", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ReadOnlyCommandTests {
    /// Every file under `root` with its bytes (and every directory), for a before/after comparison.
    static func snapshot(_ root: String) -> [String: Data] {
        var out: [String: Data] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let path = root + "/" + relative
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            out[relative] = isDirectory.boolValue ? Data("<dir>".utf8) : (FileManager.default.contents(atPath: path) ?? Data("<unreadable>".utf8))
        }
        return out
    }

    @Test("audit events/runs/verify and review list/show leave every file byte-identical, and leave a crashed run unmarked")
    func queriesAreSideEffectFree() throws {
        let h = try Harness()
        // A finished run, and a run whose supervisor was killed (its run stays open: only a
        // command that runs workers may mark it abandoned).
        #expect(try h.run([], ["/bin/true"]).status == 0)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--timeout", "60", "--", "/bin/sleep", "991"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var waited = 0
        while workerProcesses().allSatisfy({ !((try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) ?? "").contains("991") }) && waited < 100 {
            usleep(100_000)
            waited += 1
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        usleep(300_000)

        let before = Self.snapshot(h.stateDirectory)
        #expect(before.keys.contains("audit.sqlite"))
        for args in [["audit", "events", "--json"], ["audit", "runs", "--json"], ["audit", "runs"], ["audit", "verify"],
                     ["review", "list"], ["review", "show", "1"]] {
            _ = try h.stockade(args)
        }
        let after = Self.snapshot(h.stateDirectory)
        #expect(Set(after.keys) == Set(before.keys), "files added or removed: \(Set(after.keys).symmetricDifference(before.keys))")
        // SQLite's `-shm` is the WAL's shared-memory index, not stored state: every reader records
        // its read mark there (that is how a reader coexists with writers). Everything else must not move.
        for (path, bytes) in before where after[path] != bytes && !path.hasSuffix("-shm") {
            Issue.record("\(path) changed")
        }
        let runs = try h.stockade(["audit", "runs", "--json"]).stdout
        #expect(!runs.contains("abandoned"), "a query marked the crashed run abandoned: \(runs)")

        // Positive control: a command that runs workers does its start-up housekeeping.
        _ = try h.run([], ["/bin/true"])
        #expect(try h.stockade(["audit", "runs", "--json"]).stdout.contains("abandoned"))
    }

    @Test("a query on a state directory where nothing has run says so, and creates nothing")
    func queryOnEmptyState() throws {
        let h = try Harness()
        let missing = h.stateDirectory + "/never-used"
        let r = try Harness.exec(Harness.stockade, ["audit", "events"], environment: ["STOCKADE_STATE_DIR": missing])
        #expect(r.status == 1)
        #expect(r.stderr.contains("nothing has run with this state directory"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: missing))
    }
}
