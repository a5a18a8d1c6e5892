import Foundation
import Testing

@Suite("audit tables show worker-chosen strings escaped", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct AuditTableEscapingTests {
    static let forged = "a\nfake-row\tx"

    @Test("a command holding a newline and a tab prints one escaped row in audit runs and escaped events in audit events; --json stays exact")
    func escapedRows() throws {
        let h = try Harness()
        let runId = try #require(try h.run([], ["/bin/echo", Self.forged]).report().string("runId"))
        let runs = try h.stockade(["audit", "runs"])
        #expect(runs.status == 0)
        let rows = runs.stdout.split(separator: "\n")
        #expect(rows.count == 2, "a header and one run: \(runs.stdout)")
        #expect(rows.first?.hasPrefix("RUN\tCREATED") == true, "\(runs.stdout)")
        #expect(rows.last?.hasSuffix("/bin/echo a\\x0Afake-row\\x09x") == true, "\(runs.stdout)")
        #expect(rows.last?.split(separator: "\t", omittingEmptySubsequences: false).count == 9)

        // Positive control: the stored command really holds the newline and the tab.
        let json = try h.stockade(["audit", "runs", "--json"])
        let record = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect((record["command"] as? [String]) == ["/bin/echo", Self.forged])
        let events = try auditEvents(h, ["--run", runId])
        #expect(((events.first?["detail"] as? [String: Any])?["command"] as? [String])?.last == Self.forged)

        let text = try h.stockade(["audit", "events", "--run", runId])
        let lines = text.stdout.split(separator: "\n")
        #expect(lines.count == events.count, "\(text.stdout)")
        for line in lines {
            #expect(line.split(separator: "\t", omittingEmptySubsequences: false).count == 5, "\(line)")
            #expect(!line.hasPrefix("fake-row"))
        }
    }

    @Test("on a terminal too, the command stays one row", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script"), "needs script(1) for a terminal"))
    func terminal() throws {
        let h = try Harness()
        let runId = try #require(try h.run([], ["/bin/echo", Self.forged]).report().string("runId"))
        let r = try Harness.exec("/usr/bin/script", ["-qec", Harness.stockade + " audit runs", "/dev/null"],
                                 environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
        #expect(r.status == 0)
        let rows = r.stdout.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
        #expect(rows.count == 2 && rows.last?.hasPrefix(runId) == true, "\(r.stdout)")
        #expect(r.stdout.contains("a\\x0Afake-row\\x09x"))
    }
}
