import Foundation
import Testing

/// Findings of the adversarial review (see the review report): each test states what must hold.
/// Those marked "fails today" document an open finding and pass once it is fixed.
@Suite("adversarial review findings, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ReviewFindingsTests {
    @Test("syscall numbers no table names are counted in one bucket, so a worker walking through them cannot grow the report or the audit")
    func unknownSyscallFlood() throws {
        let h = try Harness()
        // 3000 distinct numbers past the end of the x86_64 table, each denied by notification.
        let r = try h.run(["--memory", "64m", "--pids", "64"], ["/usr/bin/perl", "-e", "syscall(1000 + $_) for 0 .. 2999; print qq(done\\n)"])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.string("stdout") == "done\n")
        let violations = (report["violations"] as? [[String: Any]]) ?? []
        #expect(violations.count == 1, "one bucket, not one entry per number: \(violations.count) entries")
        #expect((violations.first?["count"] as? NSNumber)?.intValue == 3000)
        #expect(violations.first?["syscall"] as? String == "unknown")
    }

    @Test("the workspace's changes are bounded by the profile's workspaceSize (fails today: upper/ is on the host disk, unbounded)")
    func workspaceChangesAreBounded() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let profile = h.stateDirectory + "/small.json"
        try #"{"extends": "default", "limits": {"workspaceSize": "8m"}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--profile", profile, "--memory", "64m", "--pids", "64", "--workspace", ws, "--",
                                "/bin/sh", "-c", "head -c 16777216 /dev/zero > big && echo wrote-all || echo refused"])
        let report = try r.report()
        #expect(report.string("stdout") == "refused\n", "16 MiB went into an 8 MiB workspace: \(report.string("stdout") ?? "")")
    }

    @Test("a file name the worker chose cannot add a line to `review list`")
    func reviewListLineInjection() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let name = "evil\n99\tFAKE\tpending\tpassed\t0 bytes\tX"
        _ = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "ln -s /etc/passwd \"$(printf '\(name.replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "\t", with: "\\t"))')\""])
        let list = try h.stockade(["review", "list"])
        let lines = list.stdout.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "one diff, one line: \(list.stdout)")
    }
}
