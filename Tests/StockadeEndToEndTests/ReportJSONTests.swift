import Foundation
import StockadeSupervisor
import Testing

/// The report's hand-written JSON must say exactly what its `Codable` encoding says.
@Suite("the run report's JSON")
struct ReportJSONTests {
    static func reports() -> [RunReport] {
        var bare = RunReport(runId: "01ABC", profile: "default", outcome: .exited)
        bare.exitCode = 0
        var full = RunReport(runId: "01DEF", profile: "strict \"quoted\" / slash", outcome: .seccomp)
        full.signal = 31
        full.durationMs = 1234
        full.cpuTimeMs = 56
        full.memoryPeakBytes = 7_340_032
        full.violations = [RunReport.Violation(kind: "seccomp", syscall: "keyctl", architecture: "x86_64", count: 3, action: "kill"),
                           RunReport.Violation(kind: "pids", count: 1),
                           RunReport.Violation(kind: "egress", count: 2, action: "refused", host: "evil.test", port: 443, reason: "not-allowed")]
        full.egress = RunReport.Egress(connections: 5, allowed: 3, denied: 2, bytesOut: 1200, bytesIn: 65536)
        full.orphansKilled = 2
        full.stdout = "line\n\ttab \u{1} ctl \u{7F} del \u{85} c1 \u{2028} sep é 🦀"
        full.stderr = "back\\slash\u{8}\u{C}"
        full.stdoutTruncated = true
        full.result = RunReport.ResultVerdict(status: "rejected", reason: "traversal: ../x")
        full.review = RunReport.Review(id: 42, state: "pending")
        full.requestId = "t-1"
        var failed = RunReport(runId: "01GHI", profile: "default", outcome: .setupFailed)
        failed.setupError = RunReport.SetupError(stage: .exec, errno: 2, message: "command not found: nope")
        return [bare, full, failed]
    }

    @Test("every report decodes to the same object as its Codable encoding", arguments: reports())
    func sameAsCodable(report: RunReport) throws {
        let written = try JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? NSDictionary
        let encoded = try JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? NSDictionary
        #expect(written != nil && written == encoded, "\(report.json())")
        #expect(!report.json().contains("\n"), "one line")
    }

    @Test("absent values are null, and the keys are the contract's")
    func keys() throws {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(Self.reports()[0].json().utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["runId", "profile", "outcome", "exitCode", "signal", "durationMs", "cpuTimeMs", "memoryPeakBytes",
                                     "violations", "orphansKilled", "stdout", "stderr", "stdoutTruncated", "stderrTruncated",
                                     "result", "review", "setupError", "egress"])
        #expect(object["setupError"] is NSNull && object["signal"] is NSNull && object["egress"] is NSNull)
    }
}
