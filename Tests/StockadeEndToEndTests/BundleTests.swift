import Crypto
import Foundation
import Testing

func sha256Hex(_ text: String) -> String {
    SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
}

/// Shell that writes a result bundle: `files` (path, contents) plus a manifest with `declared` entries.
func resultScript(_ files: [(String, String)], declared: [(path: String, size: Int, sha: String)], extra: String = "") -> String {
    var script = "cd /sandbox/result && "
    for (path, contents) in files {
        if let slash = path.lastIndex(of: "/") { script += "mkdir -p '\(path[..<slash])' && " }
        script += "printf '%s' '\(contents)' > '\(path)' && "
    }
    let entries = declared.map { #"{"path":"\#($0.path)","size":\#($0.size),"sha256":"\#($0.sha)"}"# }.joined(separator: ",")
    script += "printf '%s' '{\"version\":1,\"files\":[\(entries)]}' > manifest.json"
    if !extra.isEmpty { script += " && " + extra }
    return script
}

@Suite("request and result bundles, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct BundleTests {
    @Test("a request bundle's command and env run with its files read-only at /sandbox/request")
    func requestBundle() throws {
        let h = try Harness()
        let dir = h.stateDirectory + "/req"
        try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
        try "task input\n".write(toFile: dir + "/data/in.txt", atomically: true, encoding: .utf8)
        let manifest = #"{"version":1,"files":[{"path":"data/in.txt","size":11,"sha256":"\#(sha256Hex("task input\n"))"}],"# +
            #""command":["/bin/sh","-c","cat /sandbox/request/data/in.txt; echo $GREETING; echo x > /sandbox/request/data/in.txt || echo READONLY"],"env":{"GREETING":"hi"}}"#
        try manifest.write(toFile: dir + "/manifest.json", atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--request", dir])
        let report = try r.report()
        #expect(report.string("stdout") == "task input\nhi\nREADONLY\n")
        #expect(try String(contentsOfFile: dir + "/data/in.txt", encoding: .utf8) == "task input\n")
        let events = try h.stockade(["audit", "events", "--kind", "bundle.accepted"])
        #expect(events.stdout.contains("request"))
    }

    @Test("a request bundle that lies is refused before anything runs, naming the entry and rule", arguments: [
        ("size", #"{"version":1,"files":[{"path":"a.txt","size":3,"sha256":"SHA"}],"command":["/bin/true"]}"#, "size_mismatch"),
        ("hash", #"{"version":1,"files":[{"path":"a.txt","size":2,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}],"command":["/bin/true"]}"#, "hash_mismatch"),
        ("unlisted", #"{"version":1,"files":[],"command":["/bin/true"]}"#, "unlisted_file"),
        ("dotdot", #"{"version":1,"files":[{"path":"../a.txt","size":2,"sha256":"SHA"}],"command":["/bin/true"]}"#, "bad_path"),
        ("dupkey", #"{"version":1,"version":1,"files":[],"command":["/bin/true"]}"#, "bad_manifest"),
    ])
    func badRequest(name: String, manifest: String, rule: String) throws {
        let h = try Harness()
        let dir = h.stateDirectory + "/req-\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "a\n".write(toFile: dir + "/a.txt", atomically: true, encoding: .utf8)
        try manifest.replacingOccurrences(of: "SHA", with: sha256Hex("a\n")).write(toFile: dir + "/manifest.json", atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--request", dir])
        #expect(r.status == 125)
        let report = try r.report()
        #expect(report.string("outcome") == "setup-failed")
        let message = ((report["setupError"] as? [String: Any])?["message"] as? String) ?? ""
        #expect(message.contains(rule), "\(message)")
        #expect(try h.stockade(["audit", "events", "--kind", "bundle.rejected"]).stdout.contains(rule))
    }

    @Test("a well-formed result bundle is accepted and copied into the run directory; a run that leaves none has no result/")
    func resultAccepted() throws {
        let h = try Harness()
        let script = resultScript([("out/r.txt", "done")], declared: [("out/r.txt", 4, sha256Hex("done"))])
        let report = try h.stockade(["run", "--json", "--", "/bin/sh", "-c", script]).report()
        let result = try #require(report["result"] as? [String: Any])
        #expect(result["status"] as? String == "accepted", "\(result)")
        let runId = try #require(report.string("runId"))
        #expect(try String(contentsOfFile: h.stateDirectory + "/runs/\(runId)/result/out/r.txt", encoding: .utf8) == "done")
        // A run that leaves nothing has no result/ (one inode fewer a run).
        let none = try h.stockade(["run", "--json", "--", "/bin/true"]).report()
        #expect((none["result"] as? [String: Any])?["status"] as? String == "none")
        let noneDir = h.stateDirectory + "/runs/" + (try #require(none.string("runId")))
        #expect(FileManager.default.fileExists(atPath: noneDir + "/logs") && !FileManager.default.fileExists(atPath: noneDir + "/result"))
    }

    @Test("a result bundle that cannot be copied into the run directory is not accepted, and the reason names the path and errno")
    func resultNotCopied() throws {
        let h = try Harness()
        let runs = h.stateDirectory + "/runs"
        // While the worker sleeps, the run directory gets a result/ the supervisor did not make, so
        // its own mkdir fails (EEXIST): the bundle is well-formed, but review would read no copy.
        let made = LockedData()  // done once the squatter made result/
        let squatter = Thread {
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: runs)) ?? []
                if let run = names.first(where: { !$0.hasPrefix(".") && FileManager.default.fileExists(atPath: runs + "/" + $0 + "/logs") }) {
                    if mkdir(runs + "/" + run + "/result", 0o700) == 0 { made.set(Data()) }
                    return
                }
                usleep(5_000)
            }
        }
        squatter.start()
        let script = "sleep 2 && " + resultScript([("r.txt", "done")], declared: [("r.txt", 4, sha256Hex("done"))])
        let report = try h.stockade(["run", "--json", "--", "/bin/sh", "-c", script]).report()
        try #require(made.done, "the test could not make result/ in the run directory while the worker slept")
        let result = try #require(report["result"] as? [String: Any])
        #expect(result["status"] as? String == "rejected", "\(result)")
        let reason = result["reason"] as? String ?? ""
        #expect(reason.contains("/result") && reason.contains("errno \(EEXIST)"), "\(reason)")
        #expect(try h.stockade(["audit", "events", "--kind", "bundle.rejected"]).stdout.contains("result"))
        #expect(!(try h.stockade(["audit", "events", "--kind", "bundle.accepted"]).stdout.contains("result")))
    }

    @Test("a hostile result bundle is rejected with the rule and entry, and no host secret leaks", arguments: [
        ("symlink", "symlink"), ("fifo-manifest", "special_file"), ("size-lie", "size_mismatch"), ("hash", "hash_mismatch"),
        ("unlisted", "unlisted_file"), ("hardlink", "hardlink"), ("missing", "missing_file"), ("manifest-dir", "bad_manifest"),
    ])
    func resultRejected(kind: String, rule: String) throws {
        let h = try Harness()
        let canary = "stockade-canary-\(UUID().uuidString)"
        // Outside the state directory: a volume may never show the state directory itself.
        let canaryDir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-canary-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: canaryDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: canaryDir) }
        try canary.write(toFile: canaryDir + "/canary.txt", atomically: true, encoding: .utf8)
        let ok = sha256Hex("data")
        let script: String
        switch kind {
        case "symlink":
            script = "cd /sandbox/result && ln -s /canary/canary.txt c.txt && printf '%s' '{\"version\":1,\"files\":[{\"path\":\"c.txt\",\"size\":\(canary.utf8.count),\"sha256\":\"\(sha256Hex(canary))\"}]}' > manifest.json"
        case "fifo-manifest":
            script = "cd /sandbox/result && mkfifo manifest.json"
        case "size-lie":
            script = resultScript([("a.txt", "data")], declared: [("a.txt", 2, ok)])
        case "hash":
            script = resultScript([("a.txt", "data")], declared: [("a.txt", 4, sha256Hex("dat!"))])
        case "unlisted":
            script = resultScript([("a.txt", "data"), ("b.txt", "more")], declared: [("a.txt", 4, ok)])
        case "hardlink":
            script = resultScript([("a.txt", "data")], declared: [("a.txt", 4, ok), ("b.txt", 4, ok)], extra: "ln a.txt b.txt")
        case "missing":
            script = resultScript([], declared: [("a.txt", 4, ok)])
        default:
            script = "mkdir /sandbox/result/manifest.json"
        }
        let r = try h.stockade(["run", "--json", "--volume", "\(canaryDir):/canary:ro", "--", "/bin/sh", "-c", script])
        let report = try r.report()
        let result = try #require(report["result"] as? [String: Any])
        #expect(result["status"] as? String == "rejected", "\(report)")
        #expect(((result["reason"] as? String) ?? "").contains(rule), "\(result)")
        let runId = try #require(report.string("runId"))
        let runDir = h.stateDirectory + "/runs/\(runId)"
        let everything = (try? FileManager.default.subpathsOfDirectory(atPath: runDir)) ?? []
        for item in everything {
            if let text = try? String(contentsOfFile: runDir + "/" + item, encoding: .utf8) { #expect(!text.contains(canary), "\(item)") }
        }
        #expect(!r.stdout.contains(canary))
        #expect(try h.stockade(["audit", "events", "--kind", "bundle.rejected"]).stdout.contains(rule))
    }

    @Test("a result with 100 000 files is refused as too_many_files without holding up the supervisor")
    func tooManyFiles() throws {
        let h = try Harness()
        let profile = h.stateDirectory + "/many.json"
        try #"{"extends":"default","limits":{"resultInodes":200000,"resultSize":"512m","timeout":60}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let script = "cd /sandbox/result && mkdir d && cd d && seq 1 100000 | xargs touch && cd .. && printf '%s' '{\"version\":1,\"files\":[]}' > manifest.json"
        let report = try h.stockade(["run", "--json", "--profile", profile, "--", "/bin/sh", "-c", script]).report()
        let result = try #require(report["result"] as? [String: Any])
        #expect(((result["reason"] as? String) ?? "").contains("too_many_files"), "\(result)")
    }

    @Test("the result filesystem's quota holds: the worker gets ENOSPC, the host disk is untouched")
    func quota() throws {
        let h = try Harness()
        let profile = h.stateDirectory + "/small.json"
        try #"{"extends":"default","limits":{"resultSize":"1m","resultInodes":64}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let script = "head -c 4000000 /dev/zero > /sandbox/result/big 2>/dev/null || echo NOSPACE; " +
            "i=0; while [ $i -lt 200 ]; do touch /sandbox/result/f$i 2>/dev/null || { echo NOINODES; break; }; i=$((i+1)); done"
        let report = try h.stockade(["run", "--json", "--profile", profile, "--", "/bin/sh", "-c", script]).report()
        #expect(report.string("stdout") == "NOSPACE\nNOINODES\n")
    }
}
