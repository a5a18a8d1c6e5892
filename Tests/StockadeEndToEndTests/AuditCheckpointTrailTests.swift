import Foundation
import Testing
import StockadeAudit

/// The state directory's trail after three `/bin/true` runs, and its last seq.
private func threeRuns() throws -> (Harness, Int64) {
    let h = try Harness()
    for _ in 0..<3 { #expect(try h.run([], ["/bin/true"]).status == 0) }
    let last = try #require((try auditEvents(h).last?["seq"] as? NSNumber)?.int64Value)
    return (h, last)
}

/// SQL through the sqlite3 CLI: the tamperer's tool.
private func sqlite(_ h: Harness, _ sql: String) throws -> Harness.Result {
    let r = try Harness.exec("/usr/bin/sqlite3", ["-ascii", h.stateDirectory + "/audit.sqlite", sql])
    #expect(r.status == 0, "\(sql): \(r.stderr)")
    return r
}

/// Cuts every event after `seq` and points the chain head at `seq`, as the store would have left it.
private func truncate(_ h: Harness, after seq: Int64) throws {
    _ = try sqlite(h, "DELETE FROM events WHERE seq > \(seq); UPDATE chain_head SET seq = \(seq), hash = (SELECT hash FROM events WHERE seq = \(seq));")
}

/// A path beside the state directory (checkpoints are kept away from the database).
private func outside(_ h: Harness, _ name: String) -> String {
    h.stateDirectory + "-" + name
}

@Suite("signed checkpoints of the audit trail, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct AuditCheckpointTrailTests {
    @Test("a truncated, re-headed trail passes audit verify alone and fails it with a checkpoint, naming the first missing seq")
    func truncatedTail() throws {
        let (h, last) = try threeRuns()
        let cp = outside(h, "cp.json")
        let made = try h.stockade(["audit", "checkpoint", "--out", cp])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(made.stderr.contains("created checkpoint key"), "\(made.stderr)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: cp))) as? [String: Any])
        #expect((document["seq"] as? NSNumber)?.int64Value == last)
        var st = stat()
        #expect(stat(h.stateDirectory + "/keys/audit-checkpoint.ed25519", &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(h.stateDirectory + "/keys", &st) == 0 && st.st_mode & 0o777 == 0o700)

        // Positive controls: the untouched trail holds the checkpoint, with the default key and the published one.
        let intact = try h.stockade(["audit", "verify", "--checkpoint", cp])
        #expect(intact.status == 0 && intact.stdout.contains("through seq \(last)"), "\(intact.stdout)\(intact.stderr)")
        let pub = h.stateDirectory + "/keys/audit-checkpoint.ed25519.pub"
        #expect(try h.stockade(["audit", "verify", "--checkpoint", cp, "--public-key", pub]).status == 0)

        try truncate(h, after: last - 2)
        #expect(try h.stockade(["audit", "verify"]).status == 0, "a hash chain alone cannot show a cut tail")
        let cut = try h.stockade(["audit", "verify", "--checkpoint", cp])
        #expect(cut.status == 1)
        #expect(cut.stderr.contains("broken at seq \(last - 1)") && cut.stderr.contains("signed seq \(last)"), "\(cut.stderr)")
        let cutJSON = try h.stockade(["audit", "verify", "--checkpoint", cp, "--json"])
        #expect(cutJSON.status == 1)
        let result = try cutJSON.report()
        #expect(result["valid"] as? Bool == false && result.int("firstBrokenSeq") == Int(last - 1), "\(result)")

        // New runs fill the cut seqs again with other events: the checkpoint's seq now has another hash.
        #expect(try h.run([], ["/bin/true"]).status == 0)
        #expect(try h.stockade(["audit", "verify"]).status == 0)
        let refilled = try h.stockade(["audit", "verify", "--checkpoint", cp])
        #expect(refilled.status == 1 && refilled.stderr.contains("seq \(last)"), "\(refilled.stderr)")
    }

    @Test("an event changed and the chain recomputed after it fails against a checkpoint, not without one")
    func rewrittenChain() throws {
        let (h, last) = try threeRuns()
        let cp = outside(h, "cp.json")
        #expect(try h.stockade(["audit", "checkpoint", "--out", cp]).status == 0)
        _ = try sqlite(h, "UPDATE events SET detail = replace(detail, '\"exited\"', '\"signaled\"') WHERE seq = 3")
        #expect(try h.stockade(["audit", "verify"]).status == 1, "an edited row alone breaks the chain")
        // The tamperer recomputes every hash from the edited row on, exactly as the store does.
        let rows = try sqlite(h, "SELECT seq, ifnull(runId, ''), runSeq, kind, at, detail, hash FROM events WHERE seq >= 2 ORDER BY seq")
            .stdout.split(separator: "\u{1E}", omittingEmptySubsequences: true)
            .map { $0.split(separator: "\u{1F}", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == Int(last) - 1 && rows.allSatisfy { $0.count == 7 })
        var prev = try #require(rows.first?[6])
        var updates = ""
        for row in rows.dropFirst() {
            let seq = try #require(Int64(row[0]))
            let hash = AuditChain.hash(prevHash: prev, seq: seq, runId: row[1].isEmpty ? nil : row[1], runSeq: try #require(Int64(row[2])),
                                       kind: row[3], at: row[4], detail: row[5])
            updates += "UPDATE events SET prevHash = '\(prev)', hash = '\(hash)' WHERE seq = \(seq);"
            prev = hash
        }
        _ = try sqlite(h, updates + "UPDATE chain_head SET hash = '\(prev)' WHERE id = 1;")
        #expect(try h.stockade(["audit", "verify"]).status == 0, "the rewritten chain is consistent in itself")
        let checked = try h.stockade(["audit", "verify", "--checkpoint", cp])
        #expect(checked.status == 1 && checked.stderr.contains("seq \(last)") && checked.stderr.contains("a checkpoint signed"), "\(checked.stderr)")
    }

    @Test("a forged checkpoint fails: its signature altered, or signed with another key over a truncated trail")
    func forged() throws {
        let (h, last) = try threeRuns()
        let cp = outside(h, "cp.json")
        #expect(try h.stockade(["audit", "checkpoint", "--out", cp]).status == 0)
        let good = try String(contentsOfFile: cp, encoding: .utf8)
        let signature = try #require(good.range(of: #""signature":""#))
        var altered = good
        let at = altered.index(signature.upperBound, offsetBy: 5)
        altered.replaceSubrange(at...at, with: altered[at] == "0" ? "1" : "0")
        let alteredPath = outside(h, "altered.json")
        try altered.write(toFile: alteredPath, atomically: true, encoding: .utf8)
        let r = try h.stockade(["audit", "verify", "--checkpoint", alteredPath])
        #expect(r.status == 1 && r.stderr.contains("does not verify") && r.stderr.contains("seq \(last)"), "\(r.stderr)")

        // Someone who can edit the database cuts the tail and signs the shorter trail with a key of their own.
        try truncate(h, after: last - 4)
        let attackerKey = outside(h, "attacker/key")
        _ = mkdir(outside(h, "attacker"), 0o700)
        let forgedPath = outside(h, "forged.json")
        let forgedRun = try h.stockade(["audit", "checkpoint", "--key", attackerKey, "--out", forgedPath])
        #expect(forgedRun.status == 0, "\(forgedRun.stderr)")
        let refused = try h.stockade(["audit", "verify", "--checkpoint", forgedPath])
        #expect(refused.status == 1 && refused.stderr.contains("not by the trusted key"), "\(refused.stderr)")
        // The forgery is a valid signature: only the choice of trusted key refuses it (the key it carries is never trusted).
        #expect(try h.stockade(["audit", "verify", "--checkpoint", forgedPath, "--public-key", attackerKey + ".pub"]).status == 0)
        // And the operator's own checkpoint still shows the cut.
        #expect(try h.stockade(["audit", "verify", "--checkpoint", cp]).status == 1)
    }

    @Test("audit verify --json reports the checked checkpoints; without a key there is nothing to trust")
    func jsonAndMissingKey() throws {
        let (h, last) = try threeRuns()
        let cp = outside(h, "cp.json")
        let made = try h.stockade(["audit", "checkpoint", "--out", cp, "--json"])
        #expect(made.status == 0 && made.stderr.isEmpty == false, "creation is reported on stderr")
        #expect(try made.report().int("seq") == Int(last))
        let r = try h.stockade(["audit", "verify", "--checkpoint", cp, "--json"])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let result = try r.report()
        #expect(result["valid"] as? Bool == true && result.int("eventsChecked") == Int(last))
        let checkpoints = try #require(result["checkpoints"] as? [[String: Any]])
        #expect(checkpoints.count == 1 && checkpoints.first?.int("seq") == Int(last))
        let plain = try h.stockade(["audit", "verify", "--json"])
        #expect(plain.status == 0)
        #expect(try plain.report()["valid"] as? Bool == true)

        // A state directory that never made a key cannot check a checkpoint without --public-key.
        let other = try Harness()
        #expect(try other.run([], ["/bin/true"]).status == 0)
        let noKey = try other.stockade(["audit", "verify", "--checkpoint", cp])
        #expect(noKey.status == 1 && noKey.stderr.contains("--public-key"), "\(noKey.stderr)")
    }

    @Test("a checkpoint key others can read is refused, saying what to fix")
    func keyMode() throws {
        let (h, _) = try threeRuns()
        #expect(try h.stockade(["audit", "checkpoint"]).status == 0)
        let key = h.stateDirectory + "/keys/audit-checkpoint.ed25519"
        chmod(key, 0o644)
        let r = try h.stockade(["audit", "checkpoint"])
        #expect(r.status == 1 && r.stderr.contains("chmod 600"), "\(r.stderr)")
        chmod(key, 0o600)
        #expect(try h.stockade(["audit", "checkpoint"]).status == 0)
    }
}
