import Crypto
import Foundation
import Glibc
import Testing

/// A workspace directory in the harness's directory (removed with it).
private func workspace(_ server: ServerHarness, _ name: String) throws -> String {
    let dir = server.directory + "/" + name
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try "hello\n".write(toFile: dir + "/README.md", atomically: true, encoding: .utf8)
    return dir
}

/// Submits a run and waits for its end; the run id.
private func runToEnd(_ server: ServerHarness, token: String, _ body: String) throws -> String {
    let submitted = try server.client.request("POST", "/v1/runs", token: token, json: body)
    #expect(submitted.status == 202, "\(submitted.text)")
    let id = try #require(try submitted.json()["id"] as? String)
    let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
    #expect(waited.status == 200, "\(waited.text)")
    return id
}

/// The diff id of a run's pending diff, from GET /v1/reviews.
private func pendingDiff(_ server: ServerHarness, token: String, run: String) throws -> Int {
    let listed = try server.client.request("GET", "/v1/reviews?state=pending", token: token)
    #expect(listed.status == 200, "\(listed.text)")
    let items = try #require(try listed.json()["reviews"] as? [[String: Any]])
    let item = try #require(items.first { $0["runId"] as? String == run }, "a pending diff of run \(run): \(listed.text)")
    return try #require((item["id"] as? NSNumber)?.intValue)
}

@Suite("stockade serve: signed run receipts and the review routes", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ReceiptReviewTests {
    @Test("a finished run's receipt verifies offline; any changed field, a changed log byte or signature fails; 409 while running; scopes")
    func receipts() throws {
        let server = try ServerHarness()
        let engine = try server.token("engine", scopes: "run:read,run:write")
        let writer = try server.token("writer", scopes: "run:write")
        let reviewer = try server.token("reviewer", scopes: "review:read,review:submit")

        // Not finished yet: 409.
        let sleeping = try server.client.request("POST", "/v1/runs", token: engine, json: #"{"command":["/bin/sleep","30"]}"#)
        let sleeper = try #require(try sleeping.json()["id"] as? String)
        let early = try server.client.request("GET", "/v1/runs/\(sleeper)/receipt", token: engine)
        #expect(early.status == 409, "\(early.text)")
        #expect(try early.error().code == "not-finished")
        _ = try server.client.request("POST", "/v1/runs/\(sleeper)/cancel", token: engine)

        let id = try runToEnd(server, token: engine, #"{"command":["/bin/sh","-c","echo receipt-out; echo receipt-err >&2; exit 3"]}"#)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/receipt", token: writer).status == 403)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/receipt", token: reviewer).status == 403)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/receipt").status == 401)
        #expect(try server.client.request("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/receipt", token: engine).status == 404)
        let answered = try server.client.request("GET", "/v1/runs/\(id)/receipt", token: engine)
        #expect(answered.status == 200, "\(answered.text)")
        let document = try answered.json()
        let receipt = try #require(document["receipt"] as? [String: Any])
        #expect(receipt["runId"] as? String == id)
        #expect(receipt["outcome"] as? String == "exited")
        #expect((receipt["exitStatus"] as? NSNumber)?.intValue == 3)
        #expect(receipt["profile"] as? String == "default")
        #expect(receipt["network"] as? String == "none")
        #expect(receipt["command"] as? [String] == ["/bin/sh", "-c", "echo receipt-out; echo receipt-err >&2; exit 3"])
        let stdoutHash = Self.sha256(Array("receipt-out\n".utf8))
        #expect(receipt["stdoutSha256"] as? String == stdoutHash)
        #expect(receipt["stderrSha256"] as? String == Self.sha256(Array("receipt-err\n".utf8)))
        #expect((receipt["seccompSha256"] as? String)?.count == 64, "\(receipt)")
        #expect(receipt["diffSha256"] is NSNull && receipt["resultBundleSha256"] is NSNull)
        let seqs = try #require(receipt["auditSeq"] as? [String: Any])
        let first = try #require((seqs["first"] as? NSNumber)?.intValue)
        let last = try #require((seqs["last"] as? NSNumber)?.intValue)
        #expect(first < last)
        // The range is the run's events: run.created first, run.finished last.
        let events = try server.stockade(["audit", "events", "--run", id, "--json"]).stdout.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect((events.first?["seq"] as? NSNumber)?.intValue == first && events.first?["kind"] as? String == "run.created")
        #expect((events.last?["seq"] as? NSNumber)?.intValue == last && events.last?["kind"] as? String == "run.finished")
        // Signed with the checkpoint key; the document carries its id and public key.
        let publicHex = try String(contentsOfFile: server.stateDirectory + "/keys/audit-checkpoint.ed25519.pub", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(document["publicKey"] as? String == publicHex)

        let file = server.directory + "/receipt.json"
        try Data(answered.body).write(to: URL(fileURLWithPath: file))
        let keyFile = server.stateDirectory + "/keys/audit-checkpoint.ed25519.pub"
        func verify(_ path: String, _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
            try ServerHarness.exec(ServerHarness.stockade, ["receipt", "verify", path] + extra)
        }
        let good = try verify(file, ["--public-key", keyFile])
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout.contains("valid"))
        // The key given inline (hex or base64), and the state directory's key by default with its logs checked.
        #expect(try verify(file, ["--public-key", publicHex]).status == 0)
        let raw = try #require(Self.bytes(hex: publicHex))
        #expect(try verify(file, ["--public-key", Data(raw).base64EncodedString()]).status == 0)
        let byState = try server.stockade(["receipt", "verify", file, "--json"])
        #expect(byState.status == 0, "\(byState.stderr)")
        #expect(byState.stdout.contains(#""logsChecked":true"#) && byState.stdout.contains(#""valid":true"#), "\(byState.stdout)")

        // Rewritten by another JSON writer but unchanged, it still verifies: the signature is over the canonical form.
        try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted]).write(to: URL(fileURLWithPath: server.directory + "/same.json"))
        let same = try verify(server.directory + "/same.json", ["--public-key", keyFile])
        #expect(same.status == 0, "\(same.stderr)")
        // Every field of the receipt is covered by the signature.
        let text = answered.text
        for (field, value) in receipt {
            var changed = receipt
            changed[field] = (value is String) ? ("x" + (value as! String)) : "changed"
            var doc = document
            doc["receipt"] = changed
            let path = server.directory + "/bad-\(field).json"
            try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
            let bad = try verify(path, ["--public-key", keyFile])
            #expect(bad.status == 1, "changing \(field) must fail: \(bad.stdout)")
            #expect(bad.stderr.contains("signature"), "\(field): \(bad.stderr)")
        }
        var seqChanged = receipt
        seqChanged["auditSeq"] = ["first": first, "last": last + 1]
        var seqDoc = document
        seqDoc["receipt"] = seqChanged
        try JSONSerialization.data(withJSONObject: seqDoc).write(to: URL(fileURLWithPath: server.directory + "/bad-seq.json"))
        #expect(try verify(server.directory + "/bad-seq.json", ["--public-key", keyFile]).status == 1)
        // A changed signature, and a key other than the signer's.
        var sigDoc = document
        let signature = try #require(document["signature"] as? String)
        sigDoc["signature"] = (signature.first == "A" ? "B" : "A") + signature.dropFirst()
        try JSONSerialization.data(withJSONObject: sigDoc).write(to: URL(fileURLWithPath: server.directory + "/bad-sig.json"))
        let badSig = try verify(server.directory + "/bad-sig.json", ["--public-key", keyFile])
        #expect(badSig.status == 1 && badSig.stderr.contains("signature"), "\(badSig.stderr)")
        let wrongKey = try verify(file, ["--public-key", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"])
        #expect(wrongKey.status == 1 && wrongKey.stderr.contains("keyId"), "\(wrongKey.stderr)")
        // An unknown field in the document is refused by name.
        try Data(text.replacingOccurrences(of: #""keyId":"#, with: #""extra":1,"keyId":"#).utf8).write(to: URL(fileURLWithPath: server.directory + "/extra.json"))
        let extra = try verify(server.directory + "/extra.json", ["--public-key", keyFile])
        #expect(extra.status == 1 && extra.stderr.contains("extra"), "\(extra.stderr)")

        // One byte of the logged stdout changed: the receipt no longer matches the run directory.
        let log = server.stateDirectory + "/runs/\(id)/logs/stdout.log"
        try Data("receipt-ouT\n".utf8).write(to: URL(fileURLWithPath: log))
        let tampered = try verify(file, ["--public-key", keyFile, "--run-dir", server.stateDirectory + "/runs/\(id)"])
        #expect(tampered.status == 1, "\(tampered.stdout)")
        #expect(tampered.stderr.contains("stdoutSha256"), "\(tampered.stderr)")
        #expect(try server.stockade(["receipt", "verify", file]).status == 1, "the state directory's run directory is checked too")
        #expect(server.terminate() == 0)
    }

    @Test("reviews: list and show with review:read; the submitter's accept is 403 self-approval; another principal accepts and the host changes; reject; 404, 409")
    func reviews() throws {
        let server = try ServerHarness()
        let engine = try server.token("engine", scopes: "run:read,run:write,review:read,review:submit")
        let reviewer = try server.token("reviewer", scopes: "review:read,review:submit")
        let reader = try server.token("reader", scopes: "review:read")
        let ws = try workspace(server, "ws")

        let id = try runToEnd(server, token: engine, #"{"command":["/bin/sh","-c","echo made > made.txt"],"workspace":"\#(ws)"}"#)
        let diff = try pendingDiff(server, token: reader, run: id)
        let shown = try server.client.request("GET", "/v1/reviews/\(diff)", token: reader)
        #expect(shown.status == 200, "\(shown.text)")
        #expect(try shown.json()["state"] as? String == "pending")
        #expect((try shown.json()["content"] as? String)?.contains("+made") == true, "\(shown.text)")
        // The same object `stockade review show --json` prints.
        let cli = try server.stockade(["review", "show", "\(diff)", "--json"])
        #expect(try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? NSDictionary == (try shown.json()) as NSDictionary)
        #expect(try server.client.request("GET", "/v1/reviews?state=bogus", token: reader).status == 400)
        // The run's receipt carries the diff's SHA-256 from its record.
        let receipt = try #require(try server.client.request("GET", "/v1/runs/\(id)/receipt", token: engine).json()["receipt"] as? [String: Any])
        #expect(receipt["diffSha256"] as? String == (try shown.json()["sha256"] as? String), "\(receipt)")
        #expect((receipt["diffSha256"] as? String)?.count == 64)

        // Scopes: review:read cannot decide; run tokens cannot read reviews.
        let forbidden = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: reader, json: "{}")
        #expect(try forbidden.status == 403 && forbidden.error().code == "forbidden")

        // The principal that submitted the run may not accept its diff.
        let own = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: engine, json: #"{"note":"mine"}"#)
        #expect(own.status == 403, "\(own.text)")
        #expect(try own.error().code == "self-approval")
        #expect(!FileManager.default.fileExists(atPath: ws + "/made.txt"))
        #expect(try server.client.request("POST", "/v1/reviews/\(diff)/reject", token: engine, json: "{}").status == 403)
        // A body with an unknown key names it.
        let badBody = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: reviewer, json: #"{"notes":"x"}"#)
        #expect(try badBody.status == 400 && badBody.error().field == "notes", "\(badBody.text)")

        let accepted = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: reviewer, json: #"{"note":"looks right"}"#)
        #expect(accepted.status == 200, "\(accepted.text)")
        #expect(try accepted.json()["state"] as? String == "accepted")
        #expect(try accepted.json()["decidedBy"] as? String == "reviewer")
        #expect(try accepted.json()["note"] as? String == "looks right")
        #expect(try String(contentsOfFile: ws + "/made.txt", encoding: .utf8) == "made\n")
        let again = try server.client.request("POST", "/v1/reviews/\(diff)/reject", token: reviewer, json: "{}")
        #expect(try again.status == 409 && again.error().code == "already-decided", "\(again.text)")
        #expect(try server.client.request("POST", "/v1/reviews/99999/accept", token: reviewer, json: "{}").status == 404)
        #expect(try server.client.request("GET", "/v1/reviews/99999", token: reader).status == 404)
        #expect(try server.client.request("GET", "/v1/reviews/x1", token: reader).status == 404)

        // Reject: nothing is applied.
        let second = try runToEnd(server, token: engine, #"{"command":["/bin/sh","-c","echo no > refused.txt"],"workspace":"\#(ws)"}"#)
        let secondDiff = try pendingDiff(server, token: reader, run: second)
        let rejected = try server.client.request("POST", "/v1/reviews/\(secondDiff)/reject", token: reviewer, json: "")
        #expect(rejected.status == 200, "\(rejected.text)")
        #expect(try rejected.json()["state"] as? String == "rejected")
        #expect(!FileManager.default.fileExists(atPath: ws + "/refused.txt"))
        let decided = try server.stockade(["audit", "events", "--kind", "review.decided", "--json"]).stdout
        #expect(decided.contains(#""actor":"reviewer""#) && !decided.contains(#""actor":"engine""#))

        // The submitter survives a restart: it is in run.created, not in the service's memory.
        let third = try runToEnd(server, token: engine, #"{"command":["/bin/sh","-c","echo later > later.txt"],"workspace":"\#(ws)"}"#)
        let thirdDiff = try pendingDiff(server, token: reader, run: third)
        #expect(server.terminate() == 0)
        let restarted = try ServerHarness(sharing: server)
        let stillOwn = try restarted.client.request("POST", "/v1/reviews/\(thirdDiff)/accept", token: engine, json: "{}")
        #expect(try stillOwn.status == 403 && stillOwn.error().code == "self-approval", "\(stillOwn.text)")
        #expect(restarted.terminate() == 0)
    }

    @Test("a diff that no longer applies is 409 diff-conflict naming the file, not where the workspace is on the host; nothing is written")
    func conflictAnswer() throws {
        let server = try ServerHarness()
        let engine = try server.token("engine", scopes: "run:read,run:write")
        let reviewer = try server.token("reviewer", scopes: "review:read,review:submit")
        let ws = try workspace(server, "conflicted")
        let id = try runToEnd(server, token: engine, #"{"command":["/bin/sh","-c","echo changed > README.md"],"workspace":"\#(ws)"}"#)
        let diff = try pendingDiff(server, token: reviewer, run: id)
        try "edited on the host\n".write(toFile: ws + "/README.md", atomically: true, encoding: .utf8)
        let answer = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: reviewer, json: "{}")
        #expect(try answer.status == 409 && answer.error().code == "diff-conflict", "\(answer.text)")
        #expect(answer.text.contains("README.md") && !answer.text.contains(ws), "\(answer.text)")
        #expect(try String(contentsOfFile: ws + "/README.md", encoding: .utf8) == "edited on the host\n")
        #expect(server.terminate() == 0)
    }

    @Test("a profile the service finds by name with review.allowSelfApproval lets the submitter accept its own run's diff; the same file named by path does not, nor does its autoAcceptDiffs")
    func selfApprovalAllowed() throws {
        let profiles = FileManager.default.temporaryDirectory.path + "/stockade-self-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: profiles, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: profiles) }
        let server = try ServerHarness(environment: ["STOCKADE_PROFILES_DIR": profiles])
        let engine = try server.token("engine", scopes: "run:read,run:write,review:read,review:submit")
        let profile = profiles + "/selfok.json"
        try #"{"extends": "default", "review": {"allowSelfApproval": true}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        // The submitter may have written a file it names by path (through a volume): it cannot loosen its own review.
        let planted = try workspace(server, "planted")
        let byPath = try runToEnd(server, token: engine, #"{"profile":"\#(profile)","command":["/bin/sh","-c","echo own > own.txt"],"workspace":"\#(planted)"}"#)
        let refused = try server.client.request("POST", "/v1/reviews/\(try pendingDiff(server, token: engine, run: byPath))/accept", token: engine, json: "{}")
        #expect(try refused.status == 403 && refused.error().code == "self-approval", "\(refused.text)")
        #expect(!FileManager.default.fileExists(atPath: planted + "/own.txt"))
        let auto = profiles + "/auto.json"
        try #"{"extends": "default", "review": {"autoAcceptDiffs": true}}"#.write(toFile: auto, atomically: true, encoding: .utf8)
        let autoWs = try workspace(server, "auto")
        let autoRun = try runToEnd(server, token: engine, #"{"profile":"\#(auto)","command":["/bin/sh","-c","echo own > own.txt"],"workspace":"\#(autoWs)"}"#)
        _ = try pendingDiff(server, token: engine, run: autoRun)
        #expect(!FileManager.default.fileExists(atPath: autoWs + "/own.txt"), "a path's autoAcceptDiffs accepted the submitter's diff")
        // The positive control: the same file found by name.
        let ws = try workspace(server, "ws")
        let id = try runToEnd(server, token: engine, #"{"profile":"selfok","command":["/bin/sh","-c","echo own > own.txt"],"workspace":"\#(ws)"}"#)
        let diff = try pendingDiff(server, token: engine, run: id)
        let accepted = try server.client.request("POST", "/v1/reviews/\(diff)/accept", token: engine, json: "{}")
        #expect(accepted.status == 200, "\(accepted.text)")
        #expect(try String(contentsOfFile: ws + "/own.txt", encoding: .utf8) == "own\n")
        // A wrong type for the key is refused by name.
        try #"{"extends": "default", "review": {"allowSelfApproval": "yes"}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let check = try ServerHarness.exec(ServerHarness.stockade, ["profile", "check", profile])
        #expect(check.status != 0 && (check.stdout + check.stderr).contains("review.allowSelfApproval"), "\(check.stdout) \(check.stderr)")
        #expect(server.terminate() == 0)
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    static func bytes(hex: String) -> [UInt8]? {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            out.append(byte)
            index = next
        }
        return out
    }
}
