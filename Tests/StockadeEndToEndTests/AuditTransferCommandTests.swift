import Foundation
import Testing

/// `stockade audit backup|export|import` as an operator runs them: the real binary on a real state
/// directory (whose events here come from `token create|revoke`, which need no sandbox).
@Suite("audit backup, export and import from the command line", .serialized, .timeLimit(.minutes(3)))
struct AuditTransferCommandTests {
    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "one JSON object: \(text)")
    }

    static func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    /// A state directory whose trail holds 4 events and 3 tokens.
    static func populated() throws -> Harness {
        let h = try Harness()
        for name in ["ci", "ops", "viewer"] {
            let r = try h.stockade(["token", "create", "--name", name, "--scope", "run:read"])
            #expect(r.status == 0, "\(r.stderr)")
        }
        #expect(try h.stockade(["token", "revoke", "ci"]).status == 0)
        return h
    }

    @Test("a backup verifies, refuses to replace a file, and restored as audit.sqlite verifies with its tokens")
    func backupAndRestore() throws {
        let h = try Self.populated()
        let backup = h.stateDirectory + "/backup.sqlite"
        let result = try h.stockade(["audit", "backup", backup, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let summary = try Self.json(result.stdout)
        #expect(summary["events"] as? Int == 4)
        #expect(summary["runs"] as? Int == 0)
        #expect(summary["headSeq"] as? Int == 4)
        #expect(summary["bytes"] as? Int == (try FileManager.default.attributesOfItem(atPath: backup)[.size] as? Int))

        let again = try h.stockade(["audit", "backup", backup])
        #expect(again.status == 1)
        #expect(again.stderr.contains(backup) && again.stderr.contains("already exists"), "\(again.stderr)")

        let restored = h.stateDirectory + "/restored"
        try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: backup, toPath: restored + "/audit.sqlite")
        let verify = try Harness.exec(Harness.stockade, ["audit", "verify", "--state-dir", restored])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdout.contains("audit chain intact: 4 events"), "\(verify.stdout)")
        let tokens = try Harness.exec(Harness.stockade, ["token", "list", "--state-dir", restored])
        #expect(tokens.stdout.contains("ops") && tokens.stdout.contains("viewer"), "the backup holds the tokens: \(tokens.stdout)")
    }

    @Test("export to a file, import into a new store (a file and stdin): the imports export the same lines and verify")
    func exportAndImport() throws {
        let h = try Self.populated()
        let export = h.stateDirectory + "/trail.jsonl"
        let exported = try h.stockade(["audit", "export", "--output", export])
        #expect(exported.status == 0, "\(exported.stderr)")
        #expect(exported.stdout.contains("4 events"), "\(exported.stdout)")
        let lines = try Self.lines(export)
        #expect(lines.count == 6, "header, 4 events, end: \(lines)")
        #expect(lines.first?.contains("\"format\":\"stockade-audit\"") == true)
        #expect(lines.last?.contains("\"type\":\"end\"") == true)
        #expect(try h.stockade(["audit", "export", "--output", export]).stderr.contains("already exists"))

        let target = h.stateDirectory + "/target"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        let store = "sqlite://" + target + "/audit.sqlite"
        let imported = try h.stockade(["audit", "import", export, "--store", store, "--json"])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(try Self.json(imported.stdout)["events"] as? Int == 4)
        let reexported = try h.stockade(["audit", "export", "--store", store])
        #expect(reexported.status == 0, "\(reexported.stderr)")
        #expect(Array(reexported.stdout.split(separator: "\n").map(String.init).dropFirst()) == Array(lines.dropFirst()))
        let verify = try Harness.exec(Harness.stockade, ["audit", "verify", "--state-dir", target])
        #expect(verify.status == 0 && verify.stdout.contains("4 events"), "\(verify.stdout) \(verify.stderr)")

        // From stdin, into a state directory that does not exist yet.
        let fresh = h.stateDirectory + "/fresh/state"
        let piped = try Harness.exec(Harness.stockade, ["audit", "import", "-", "--state-dir", fresh],
                                     stdin: lines.joined(separator: "\n") + "\n")
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(FileManager.default.fileExists(atPath: fresh + "/audit.sqlite"))

        // A store with events is refused, unchanged.
        let twice = try h.stockade(["audit", "import", export, "--store", store])
        #expect(twice.status == 1)
        #expect(twice.stderr.contains("already holds 4 events"), "\(twice.stderr)")
    }

    @Test("a tampered export is refused naming its line, and leaves no store behind; bad usage exits 2")
    func refusals() throws {
        let h = try Self.populated()
        let export = h.stateDirectory + "/trail.jsonl"
        #expect(try h.stockade(["audit", "export", "--output", export]).status == 0)
        var lines = try Self.lines(export)
        lines[2] = lines[2].replacingOccurrences(of: "\"name\\\":\\\"ops", with: "\"name\\\":\\\"root")
        #expect(lines[2].contains("root"), "the test changed the event's detail: \(lines[2])")
        let tampered = h.stateDirectory + "/tampered.jsonl"
        try (lines.joined(separator: "\n") + "\n").write(toFile: tampered, atomically: false, encoding: .utf8)
        let target = h.stateDirectory + "/new.sqlite"
        let refused = try h.stockade(["audit", "import", tampered, "--store", "sqlite://" + target])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("line 3") && refused.stderr.contains("nothing was imported"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: target), "a failed import into a new file leaves no file")

        let both = try h.stockade(["audit", "export", "--store", "sqlite:///tmp/x.sqlite", "--state-dir", h.stateDirectory])
        #expect(both.status == 2)
        #expect(both.stderr.contains("--store"), "\(both.stderr)")
        let badURL = try h.stockade(["audit", "export", "--store", "mysql://db"])
        #expect(badURL.status == 2)
        #expect(badURL.stderr.contains("unknown scheme mysql"), "\(badURL.stderr)")

        // PostgreSQL is backed up with pg_dump: the command says exactly how, and writes nothing.
        let pg = try h.stockade(["audit", "backup", h.stateDirectory + "/pg.dump", "--store", "postgres://audit@127.0.0.1:5433/stockade"])
        #expect(pg.status == 1)
        #expect(pg.stderr.contains("pg_dump --format=custom --no-owner --file='\(h.stateDirectory)/pg.dump' --dbname='host=127.0.0.1 port=5433 sslmode=prefer user=audit dbname=stockade'"),
                "\(pg.stderr)")
        #expect(pg.stderr.contains("pg_restore --single-transaction"), "\(pg.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.stateDirectory + "/pg.dump"))
    }
}
