import Foundation
import Testing

/// Review that tells the truth: a diff that does not apply is `conflict` (file and hunk named, nothing written),
/// can be retried or rejected; the run's summary names its diff; `git apply` takes every diff.patch Stockade writes.
@Suite("review conflicts and git-compatible diffs, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ReviewConflictTests {
    func diffId(_ r: Harness.Result) throws -> Int {
        try #require(((r.report()["review"] as? [String: Any])?["id"] as? NSNumber)?.intValue, "\(r.stdout) \(r.stderr)")
    }

    func diffState(_ h: Harness, _ id: Int) throws -> [String: Any] {
        let list = try h.stockade(["review", "list", "--json"])
        for line in list.stdout.split(separator: "\n") {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            if (object["id"] as? NSNumber)?.intValue == id { return object }
        }
        Issue.record("diff \(id) is not listed: \(list.stdout)")
        return [:]
    }

    @Test("accept on a workspace that changed is `conflict` naming the file and hunk, writes nothing; fixed, accept again applies it")
    func conflictThenRetry() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let id = try diffId(try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c",
                                            "sed -i s/two/TWO/ src/a.txt && echo created > src/c.txt"]))
        // Someone edits the line the diff changes before review.
        try "one\n2\nthree\n".write(toFile: ws + "/src/a.txt", atomically: true, encoding: .utf8)
        let changed = try treeDigest(ws)
        let accept = try h.stockade(["review", "accept", "\(id)", "--actor", "alice"])
        #expect(accept.status == 1)
        #expect(accept.stderr.contains("src/a.txt") && accept.stderr.contains("hunk 1") && accept.stderr.contains("conflict"), "\(accept.stderr)")
        #expect(accept.stderr.contains("review accept \(id)"), "the message says how to retry: \(accept.stderr)")
        #expect(try treeDigest(ws) == changed, "nothing was written")
        let record = try diffState(h, id)
        #expect(record["state"] as? String == "conflict" && record["appliedAt"] is NSNull)
        let conflict = try #require(record["conflict"] as? [String: Any])
        #expect(conflict["file"] as? String == "src/a.txt")
        #expect((conflict["hunk"] as? String)?.hasPrefix("hunk 1 (@@ -1,3 +1,3 @@)") == true, "\(conflict)")
        let listed = try h.stockade(["review", "list", "--state", "conflict"])
        #expect(listed.status == 0 && listed.stdout.hasPrefix("\(id)\t") && listed.stdout.contains("conflict in src/a.txt at hunk 1"), "\(listed.stdout)")
        #expect(try h.stockade(["review", "show", "\(id)"]).stderr.contains("conflict in src/a.txt"))
        let events = try h.stockade(["audit", "events", "--kind", "diff.conflict", "--json"])
        #expect(events.stdout.contains("src/a.txt") && events.stdout.contains("\"diffId\":\(id)"), "\(events.stdout)")
        #expect(try h.stockade(["audit", "events", "--kind", "diff.applied"]).stdout.isEmpty)

        // The workspace is put back; the same diff is accepted again and applies.
        try "one\ntwo\nthree\n".write(toFile: ws + "/src/a.txt", atomically: true, encoding: .utf8)
        let retry = try h.stockade(["review", "accept", "\(id)", "--actor", "bob"])
        #expect(retry.status == 0, "\(retry.stderr)")
        #expect(try String(contentsOfFile: ws + "/src/a.txt", encoding: .utf8) == "one\nTWO\nthree\n")
        #expect(try String(contentsOfFile: ws + "/src/c.txt", encoding: .utf8) == "created\n")
        let applied = try diffState(h, id)
        #expect(applied["state"] as? String == "accepted" && applied["appliedAt"] is String && applied["conflict"] is NSNull)
        let decisions = try h.stockade(["audit", "events", "--kind", "review.decided", "--json"]).stdout
        #expect(decisions.contains("\"from\":\"pending\"") && decisions.contains("\"from\":\"conflict\""), "\(decisions)")
        #expect(try h.stockade(["review", "accept", "\(id)", "--actor", "carol"]).status == 1, "an applied diff is final")
    }

    @Test("a diff in conflict can be rejected, and then neither applies nor is retried")
    func rejectFromConflict() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let id = try diffId(try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "echo made > src/c.txt"]))
        // The file the diff creates appeared meanwhile: no hunk, the whole file conflicts.
        try "someone else\n".write(toFile: ws + "/src/c.txt", atomically: true, encoding: .utf8)
        #expect(try h.stockade(["review", "accept", "\(id)", "--actor", "alice"]).status == 1)
        let record = try diffState(h, id)
        #expect(record["state"] as? String == "conflict")
        #expect((record["conflict"] as? [String: Any])?["file"] as? String == "src/c.txt")
        let reject = try h.stockade(["review", "reject", "\(id)", "--actor", "alice", "--note", "superseded"])
        #expect(reject.status == 0, "\(reject.stderr)")
        #expect(try diffState(h, id)["state"] as? String == "rejected")
        try FileManager.default.removeItem(atPath: ws + "/src/c.txt")
        #expect(try h.stockade(["review", "accept", "\(id)", "--actor", "alice"]).status == 1)
        #expect(!FileManager.default.fileExists(atPath: ws + "/src/c.txt"))
    }

    @Test("the run's summary line names its pending diff")
    func summaryNamesDiff() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let r = try h.stockade(["run", "--workspace", ws, "--", "/bin/sh", "-c", "echo x > new.txt"])
        #expect(r.status == 0)
        let id = try #require(try diffState(h, 1)["id"] as? NSNumber).intValue
        #expect(r.stderr.contains("; diff \(id) pending review: stockade review show \(id)"), "\(r.stderr)")
    }

    @Test("git apply --check and git apply --index take a run's diff.patch with binary and text changes in a checkout of the original workspace")
    func gitAppliesDiff() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        try Data([0, 1, 2, 3, 0xFF, 0xFE, 10, 0]).write(to: URL(fileURLWithPath: ws + "/blob.bin"))
        try Data([0x89, 0x50, 0x4E, 0x47, 0, 0]).write(to: URL(fileURLWithPath: ws + "/gone.bin"))
        // A git checkout of the workspace as it was.
        let checkout = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-git-\(UUID().uuidString)").path
        try FileManager.default.copyItem(atPath: ws, toPath: checkout)
        let git = { (args: [String]) throws -> Harness.Result in
            try Harness.exec("/usr/bin/git", ["-C", checkout, "-c", "user.name=t", "-c", "user.email=t@t"] + args)
        }
        #expect(try git(["init", "-q"]).status == 0)
        #expect(try git(["add", "-A"]).status == 0)
        #expect(try git(["commit", "-q", "-m", "original"]).status == 0)

        let r = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", """
            printf '\\000\\001\\002changed\\377' > blob.bin && printf '\\000new\\000binary' > made.bin && rm gone.bin && \
            sed -i s/two/TWO/ src/a.txt && echo text > src/new.txt && chmod +x src/b.txt
            """])
        #expect(try r.report().string("outcome") == "exited", "\(r.stdout) \(r.stderr)")
        let runId = try #require(try r.report().string("runId"))
        let patch = h.stateDirectory + "/runs/\(runId)/diff.patch"
        let text = try String(decoding: Data(contentsOf: URL(fileURLWithPath: patch)), as: UTF8.self)
        #expect(text.contains("GIT binary patch"))
        #expect(text.range(of: #"index [0-9a-f]{40}\.\.[0-9a-f]{40}"#, options: .regularExpression) != nil, "\(text)")

        let check = try git(["apply", "--check", patch])
        #expect(check.status == 0, "git apply --check: \(check.stderr)")
        let apply = try git(["apply", "--index", patch])
        #expect(apply.status == 0, "git apply --index: \(apply.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: checkout + "/blob.bin")) == Data([0, 1, 2] + Array("changed".utf8) + [0xFF]))
        #expect(try Data(contentsOf: URL(fileURLWithPath: checkout + "/made.bin")) == Data([0] + Array("new".utf8) + [0] + Array("binary".utf8)))
        #expect(!FileManager.default.fileExists(atPath: checkout + "/gone.bin"))
        #expect(try String(contentsOfFile: checkout + "/src/a.txt", encoding: .utf8) == "one\nTWO\nthree\n")
        #expect(FileManager.default.isExecutableFile(atPath: checkout + "/src/b.txt"))
        // Stockade's own applier takes the same file.
        let id = try diffId(r)
        #expect(try h.stockade(["review", "accept", "\(id)", "--actor", "alice"]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: ws + "/blob.bin")) == Data(contentsOf: URL(fileURLWithPath: checkout + "/blob.bin")))
    }
}
