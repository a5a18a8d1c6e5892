import Foundation
import StockadePolicy
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
        var numbered = RunReport(runId: "01JKL", profile: "default", outcome: .exited)
        numbered.exitCode = 3
        numbered.line = 7
        numbered.stdoutBase64 = "/w=="
        numbered.review = RunReport.Review(id: nil, state: "none")
        return [bare, full, failed, numbered]
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

    @Test("the hand reader reads every report back, and agrees with the Codable decoder", arguments: reports())
    func readBack(report: RunReport) throws {
        try readBack(report)
        var imaged = report
        imaged.image = "sha256:" + String(repeating: "ab", count: 32)
        try readBack(imaged)
    }

    func readBack(_ report: RunReport) throws {
        let parsed = try StrictJSON.parse(Array(report.json().utf8), limits: .init(maxBytes: 1 << 20, maxDepth: 16))
        let read = try RunReport(json: parsed)
        #expect(read == report)
        // `Codable` does not read `image` (not one of its keys); everything else must agree.
        var withoutImage = read
        withoutImage.image = nil
        #expect(try JSONDecoder().decode(RunReport.self, from: Data(report.json().utf8)) == withoutImage)
    }

    /// The first report's JSON with one member changed by `edit`, read by the hand reader.
    static func readEdited(_ edit: (inout [String: JSONValue]) -> Void) throws(JSONMembers.Invalid) -> RunReport {
        guard case .object(var members) = reports()[1].jsonValue else { preconditionFailure("a report is an object") }
        edit(&members)
        return try RunReport(json: .object(members))
    }

    @Test("a member that is missing or of the wrong kind is refused by its path")
    func badMembers() throws {
        func refusal(_ edit: (inout [String: JSONValue]) -> Void) -> String? {
            do {
                _ = try Self.readEdited(edit)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal { _ in } == nil, "the unedited report reads")
        #expect(refusal { $0["runId"] = nil } == "runId: is missing")
        #expect(refusal { $0["durationMs"] = .string("12") } == "durationMs: must be an integer, found string")
        #expect(refusal { $0["exitCode"] = .number("1.5") }?.hasPrefix("exitCode: must be an integer from -2147483648 to 2147483647, found 1.5") == true)
        #expect(refusal { $0["signal"] = .number("4294967296") }?.hasPrefix("signal: must be an integer from") == true)
        #expect(refusal { $0["outcome"] = .string("exploded") }?.hasPrefix("outcome: must be one of exited, signaled") == true)
        #expect(refusal { $0["stdoutTruncated"] = .number("1") } == "stdoutTruncated: must be true or false, found number")
        #expect(refusal { $0["review"] = .array([]) } == "review: must be an object, found array")
        #expect(refusal { $0["result"] = .object(["reason": .null]) } == "result.status: is missing")
        #expect(refusal { m in
            guard case .array(var items)? = m["violations"], case .object(var second) = items[1] else { return }
            second["count"] = .string("one")
            items[1] = .object(second)
            m["violations"] = .array(items)
        } == "violations[1].count: must be an integer, found string")
        #expect(refusal { $0["setupError"] = .object(["stage": .string("nowhere"), "errno": .number("2"), "message": .string("m")]) }?
            .hasPrefix("setupError.stage: must be one of request-line, usage") == true)
        // Optional members may be missing or null; a key the reader does not know is ignored, as Codable ignores it.
        let lenient = try Self.readEdited { m in
            m["signal"] = nil
            m["setupError"] = .null
            m["somethingNew"] = .string("x")
        }
        #expect(lenient.signal == nil && lenient.setupError == nil && lenient.durationMs == 1234)
    }
}
