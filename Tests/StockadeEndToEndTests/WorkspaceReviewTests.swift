import Crypto
import Foundation
import Testing

/// A digest of every path, type, mode and content beneath `root` (links not followed).
func treeDigest(_ root: String) throws -> String {
    var lines: [String] = []
    let fm = FileManager.default
    let items = try fm.subpathsOfDirectory(atPath: root).sorted()
    for item in items {
        let path = root + "/" + item
        var st = stat()
        guard lstat(path, &st) == 0 else { continue }
        var line = "\(item) \(String(st.st_mode, radix: 8)) \(st.st_uid)"
        if st.st_mode & S_IFMT == S_IFREG, let data = fm.contents(atPath: path) {
            line += " " + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        }
        lines.append(line)
    }
    return lines.joined(separator: "\n")
}

func makeWorkspace() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-ws-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
    try "hello\n".write(toFile: dir + "/README.md", atomically: true, encoding: .utf8)
    try "one\ntwo\nthree\n".write(toFile: dir + "/src/a.txt", atomically: true, encoding: .utf8)
    try "gone\n".write(toFile: dir + "/src/b.txt", atomically: true, encoding: .utf8)
    return dir
}

@Suite("workspace diffs and review, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct WorkspaceReviewTests {
    @Test("edits, creations, deletions and mode changes become one pending diff; the real workspace stays byte-identical")
    func diffOfChanges() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let before = try treeDigest(ws)
        let r = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c",
                                "echo new >> README.md && rm src/b.txt && echo created > src/c.txt && chmod +x src/a.txt && mkdir -p deep/er && echo x > deep/er/f"])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        let review = try #require(report["review"] as? [String: Any])
        #expect(review["state"] as? String == "pending")
        let id = try #require((review["id"] as? NSNumber)?.intValue)
        #expect(try treeDigest(ws) == before, "the worker wrote to the real workspace")
        let show = try h.stockade(["review", "show", "\(id)"])
        #expect(show.status == 0)
        for fragment in ["+++ b/README.md", "+new", "deleted file mode 100644", "--- a/src/b.txt", "new file mode 100644",
                         "+++ b/src/c.txt", "old mode 100644", "new mode 100755", "+++ b/deep/er/f"] {
            #expect(show.stdout.contains(fragment), "diff lacks \(fragment):\n\(show.stdout)")
        }
        let runId = try #require(report.string("runId"))
        let stored = try String(contentsOfFile: h.stateDirectory + "/runs/\(runId)/diff.patch", encoding: .utf8)
        #expect(stored == show.stdout)
    }

    @Test("accept applies the diff exactly; reject leaves the workspace untouched; a decision is final")
    func acceptAndReject() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let command = ["/bin/sh", "-c", "echo new >> README.md && rm src/b.txt && echo created > src/c.txt"]
        let first = try h.stockade(["run", "--json", "--workspace", ws, "--"] + command)
        let second = try h.stockade(["run", "--json", "--workspace", ws, "--"] + command)
        let id1 = try #require(((first.report()["review"] as? [String: Any])?["id"] as? NSNumber)?.intValue)
        let id2 = try #require(((second.report()["review"] as? [String: Any])?["id"] as? NSNumber)?.intValue)
        let before = try treeDigest(ws)
        let rejected = try h.stockade(["review", "reject", "\(id2)", "--actor", "ops-reviewer", "--note", "not needed"])
        #expect(rejected.status == 0)
        #expect(try treeDigest(ws) == before)
        let accepted = try h.stockade(["review", "accept", "\(id1)", "--actor", "ops-reviewer"])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        #expect(try String(contentsOfFile: ws + "/README.md", encoding: .utf8) == "hello\nnew\n")
        #expect(!FileManager.default.fileExists(atPath: ws + "/src/b.txt"))
        #expect(try String(contentsOfFile: ws + "/src/c.txt", encoding: .utf8) == "created\n")
        #expect(try h.stockade(["review", "accept", "\(id2)", "--actor", "x"]).status == 1)
        #expect(try h.stockade(["review", "reject", "\(id1)", "--actor", "x"]).status == 1)
        let list = try h.stockade(["review", "list", "--json"])
        #expect(list.stdout.contains("\"state\":\"accepted\"") && list.stdout.contains("\"state\":\"rejected\""))
        let pending = try h.stockade(["review", "list", "--state", "pending"])
        #expect(pending.stdout.split(separator: "\n") == ["ID\tRUN\tSTATE\tVERDICT\tBYTES\tCREATED\tREASON"], "only the header: \(pending.stdout)")
        let events = try h.stockade(["audit", "events", "--kind", "review.decided", "--json"])
        #expect(events.stdout.contains("ops-reviewer") && events.stdout.contains("not needed"))
        #expect(try h.stockade(["audit", "events", "--kind", "diff.applied"]).stdout.contains("diff.applied"))
    }

    @Test("accept, run by root, leaves no root-owned file: new ones belong to their directory's owner, edited ones keep theirs")
    func acceptKeepsOwners() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        // A user's workspace, owned by 4242:4343 (the worker sees that owner's files as its own).
        for path in [ws, ws + "/src", ws + "/README.md", ws + "/src/a.txt", ws + "/src/b.txt"] {
            #expect(chown(path, 4242, 4343) == 0)
        }
        let r = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c",
                                "echo more >> src/a.txt && mkdir -p new/deeper && echo n > new/deeper/f && echo c > src/c.txt"])
        let id = try #require(((r.report()["review"] as? [String: Any])?["id"] as? NSNumber)?.intValue)
        let accepted = try h.stockade(["review", "accept", "\(id)", "--actor", "ops-reviewer"])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        func owner(_ path: String) -> String {
            var st = stat()
            return lstat(ws + "/" + path, &st) == 0 ? "\(st.st_uid):\(st.st_gid)" : "missing"
        }
        #expect(owner("src/a.txt") == "4242:4343", "an edited file keeps its owner")
        #expect(owner("src/c.txt") == "4242:4343", "a new file belongs to its directory's owner")
        #expect(owner("new") == "4242:4343" && owner("new/deeper") == "4242:4343" && owner("new/deeper/f") == "4242:4343")
        #expect(try String(contentsOfFile: ws + "/src/a.txt", encoding: .utf8) == "one\ntwo\nthree\nmore\n")
    }

    @Test("hostile workspace changes are rejected before review with their rule, and nothing is applied", arguments: [
        ("ln -s /etc/passwd link", "special_file"),
        ("mkfifo pipe", "special_file"),
        ("mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit", "git_dir"),
        ("mkdir -p .GIT && echo evil > .GIT/config", "git_dir"),
        ("echo x > \"$(printf 'bad\\033name')\"", "control_byte"),
    ])
    func hostileChanges(script: String, rule: String) throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let before = try treeDigest(ws)
        let r = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", script])
        let report = try r.report()
        let review = try #require(report["review"] as? [String: Any])
        #expect(review["state"] as? String == "rejected", "\(report)")
        let id = try #require((review["id"] as? NSNumber)?.intValue)
        let list = try h.stockade(["review", "list", "--json"])
        #expect(list.stdout.contains(rule), "\(list.stdout)")
        #expect(try h.stockade(["review", "accept", "\(id)", "--actor", "x"]).status == 1)
        #expect(try treeDigest(ws) == before)
        #expect(try h.stockade(["audit", "events", "--kind", "diff.rejected"]).stdout.contains(rule))
    }

    @Test("a profile with autoAcceptDiffs applies a clean diff as actor auto")
    func autoAccept() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let profile = h.stateDirectory + "/auto.json"
        try #"{"extends": "default", "review": {"autoAcceptDiffs": true}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--profile", profile, "--workspace", ws, "--", "/bin/sh", "-c", "echo auto > made.txt"])
        let review = try #require(try r.report()["review"] as? [String: Any])
        #expect(review["state"] as? String == "accepted")
        #expect(try String(contentsOfFile: ws + "/made.txt", encoding: .utf8) == "auto\n")
        #expect(try h.stockade(["audit", "events", "--kind", "review.decided"]).stdout.contains("\"actor\":\"auto\""))
        // A run that fails or is killed leaves its diff pending for a human.
        let failed = try h.stockade(["run", "--json", "--profile", profile, "--workspace", ws, "--", "/bin/sh", "-c", "echo half > half.txt; exit 3"])
        #expect((try failed.report()["review"] as? [String: Any])?["state"] as? String == "pending")
        #expect(!FileManager.default.fileExists(atPath: ws + "/half.txt"))
    }

    @Test("without --workspace, /workspace is an empty writable directory and there is no diff")
    func noWorkspace() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--json", "--", "/bin/sh", "-c", "ls -A /workspace | wc -l; echo x > /workspace/f && echo wrote"])
        let report = try r.report()
        #expect(report.string("stdout") == "0\nwrote\n")
        #expect((report["review"] as? [String: Any])?["state"] as? String == "none")
    }
}
