import Foundation
import StockadeSupervisor
import Testing

/// `sh -c SCRIPT` with `$STOCKADE` naming the binary under test and the harness's state directory:
/// pipelines typed as a user types them. Output goes to files, not pipes: a process another test
/// spawns at the same moment (a minutes-long compiler run) can inherit a pipe's write end, and a
/// reader waiting for end of file would wait for that process too; the shell's exit is enough here.
func shell(_ h: Harness, _ script: String, environment: [String: String] = [:]) throws -> Harness.Result {
    let base = h.stateDirectory + "/shell-\(UUID().uuidString)"
    _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
    _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", script]
    process.environment = ProcessInfo.processInfo.environment
        .merging(environment.merging(["STOCKADE": Harness.stockade, "STOCKADE_STATE_DIR": h.stateDirectory]) { $1 }) { $1 }
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
    try process.run()
    process.waitUntilExit()
    let out = try String(contentsOfFile: base + ".out", encoding: .utf8)
    let err = try String(contentsOfFile: base + ".err", encoding: .utf8)
    return Harness.Result(status: process.terminationStatus, stdout: out, stderr: err)
}

/// What a newcomer types: input, docker-style values, labels and names, one line per failure, JSON.
@Suite("the command line as a new user types it", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct CommandLineTests {
    @Test("a relative state directory, given as --state-dir or $STOCKADE_STATE_DIR, is made below the current directory (.. included), never below /")
    func relativeStateDirectory() throws {
        let h = try Harness()
        let tag = UUID().uuidString.prefix(8)
        let base = h.stateDirectory + "/cwd-\(tag)"
        try FileManager.default.createDirectory(atPath: base + "/sub", withIntermediateDirectories: true)
        let flag = "rel-\(tag)/state", variable = "../up-\(tag)"
        let r = try shell(h, """
            cd '\(base)' && "$STOCKADE" run --state-dir \(flag) --json -- /bin/true > flag.json &&
            cd sub && STOCKADE_STATE_DIR=\(variable) "$STOCKADE" run --json -- /bin/true > ../variable.json &&
            "$STOCKADE" audit runs --state-dir ../\(flag) --json
            """)
        #expect(r.status == 0, "\(r.stderr)")
        for (state, reportFile) in [(base + "/" + flag, base + "/flag.json"), (base + "/up-\(tag)", base + "/variable.json")] {
            #expect(FileManager.default.fileExists(atPath: state + "/audit.sqlite"), "no audit store in \(state): \(r.stderr)")
            let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportFile))) as? [String: Any]
            let runId = try #require(report?["runId"] as? String, "\(reportFile)")
            #expect(FileManager.default.fileExists(atPath: state + "/runs/" + runId + "/report.json"), "\(state)")
        }
        // The audit trail read back through the same relative name finds the run.
        #expect(r.stdout.contains("\"state\":\"finished\""), "\(r.stdout)")
        // The old reading took every path from the root: /rel-TAG and /up-TAG.
        #expect(!FileManager.default.fileExists(atPath: "/rel-\(tag)") && !FileManager.default.fileExists(atPath: "/up-\(tag)"),
                "a relative state directory was made below /")
    }

    @Test("one-shot runs keep the audit store's WAL short: the next run's start reads few frames")
    func oneShotWALStaysShort() throws {
        let h = try Harness()
        let state = h.stateDirectory + "/wal-\(UUID().uuidString.prefix(8))"
        // Twelve runs write about 280 WAL frames (about 22 each); with SQLite's default threshold
        // (1000 pages) the WAL keeps them all, with the one-shot threshold (128) it is reset.
        let r = try shell(h, "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do \"$STOCKADE\" run --state-dir '\(state)' -- /bin/true || exit 1; done")
        #expect(r.status == 0, "\(r.stderr)")
        var info = stat()
        #expect(stat(state + "/audit.sqlite-wal", &info) == 0)
        #expect(Int(info.st_size) <= 170 * (4096 + 24), "WAL of \(info.st_size) bytes after 12 one-shot runs")
        let runs = try shell(h, "\"$STOCKADE\" audit runs --state-dir '\(state)' --json")
        #expect(runs.stdout.components(separatedBy: "\"state\":\"finished\"").count - 1 == 12, "\(runs.stdout)")
    }

    @Test("echo hi | stockade run -i -- cat prints hi; without -i the worker's stdin is /dev/null")
    func interactiveInput() throws {
        let h = try Harness()
        let piped = try shell(h, #"echo hi | "$STOCKADE" run -i -- /bin/cat"#)
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(piped.stdout == "hi\n")
        let closed = try shell(h, #"echo hi | "$STOCKADE" run -- /bin/sh -c 'cat; echo "end of input"'"#)
        #expect(closed.status == 0, "\(closed.stderr)")
        #expect(closed.stdout == "end of input\n")
        // Larger than a pipe's buffer: every byte arrives, in order, then end of file.
        let big = try shell(h, #"seq 1 200000 | "$STOCKADE" run -i --json -- /usr/bin/awk 'END { print NR; print $0 }'"#)
        let report = try big.report()
        #expect(report.string("stdout")?.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) } == ["200000", "200000"])
    }

    @Test("with -i, a worker that never reads its stdin does not hold the run: it ends when the worker does")
    func interactiveWorkerThatNeverReads() throws {
        let h = try Harness()
        let started = Date()
        let r = try shell(h, #"yes | "$STOCKADE" run -i --timeout 20 -- /bin/sleep 0.3"#)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Date().timeIntervalSince(started) < 10, "the run waited for the caller's input to end")
        // A caller whose input never ends (its pipe stays open, nothing is written) cannot outlast the deadline either.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "-i", "--timeout", "1", "--", "/bin/cat"]
        process.environment = ProcessInfo.processInfo.environment.merging(["STOCKADE_STATE_DIR": h.stateDirectory]) { $1 }
        let input = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let begun = Date()
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 124)
        #expect(Date().timeIntervalSince(begun) < 10)
        try input.fileHandleForWriting.close()
    }

    @Test("--env-file takes docker's format; a bad line is refused naming the file and the line")
    func envFile() throws {
        let h = try Harness()
        let file = h.stateDirectory + "/worker.env"
        try "# a comment\n\nGREETING=hello world\n  QUOTED=\"kept\"\nFROM_HOST\nUNSET_ON_HOST\n".write(toFile: file, atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--env-file", file, "--env", "GREETING=flag wins", "--", "/bin/sh", "-c",
                                #"echo "$GREETING|$QUOTED|$FROM_HOST|${UNSET_ON_HOST-unset}""#],
                               environment: ["FROM_HOST": "passed"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "flag wins|\"kept\"|passed|unset\n")
        // Through a pipe, as with `--env-file <(...)`.
        let piped = try shell(h, #"printf 'A=from a pipe\n' | "$STOCKADE" run --env-file /dev/stdin -- /bin/sh -c 'echo "$A"'"#)
        #expect(piped.stdout == "from a pipe\n", "\(piped.stderr)")
        try "OK=1\nnot a name=2\n".write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try h.stockade(["run", "--env-file", file, "--", "/bin/true"])
        #expect(bad.status == 125)
        #expect(bad.stderr.contains("--env-file \(file):2:"), "\(bad.stderr)")
    }

    @Test("--label and --name are recorded, shown by audit runs (text and --json) and filtered with --label")
    func labelsAndNames() throws {
        let h = try Harness()
        #expect(try h.stockade(["run", "--label", "team=infra", "--label", "ticket=42", "--name", "nightly build", "--", "/bin/true"]).status == 0)
        #expect(try h.stockade(["run", "--label", "team=web", "--", "/bin/true"]).status == 0)
        let table = try h.stockade(["audit", "runs"])
        let rows = table.stdout.split(separator: "\n")
        #expect(rows.first == "RUN\tCREATED\tPROFILE\tSTATE\tOUTCOME\tEXIT\tNAME\tLABELS\tCOMMAND", "\(table.stdout)")
        #expect(rows.count == 3)
        #expect(rows.contains { $0.contains("\tnightly build\tteam=infra,ticket=42\t") }, "\(table.stdout)")
        let filtered = try h.stockade(["audit", "runs", "--json", "--label", "team=infra"])
        let records = try filtered.stdout.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(records.count == 1)
        #expect(records.first?["name"] as? String == "nightly build")
        #expect(records.first?["labels"] as? [String: String] == ["team": "infra", "ticket": "42"])
        #expect(try h.stockade(["audit", "runs", "--label", "team=none"]).stdout.split(separator: "\n").count == 1)
        let created = try auditEvents(h, ["--kind", "run.created"])
        #expect(created.contains { ($0["detail"] as? [String: Any])?["name"] as? String == "nightly build" })
    }

    @Test("sizes and durations are written the docker way; negative, zero and out-of-range values are refused naming the flag")
    func dockerValues() throws {
        let h = try Harness()
        let ok = try h.stockade(["run", "--json", "--memory", "64MiB", "--timeout", "1.5s", "--", "/bin/true"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let runId = try #require(try ok.report().string("runId"))
        let created = try #require(try auditEvents(h, ["--run", runId, "--kind", "run.created"]).first?["detail"] as? [String: Any])
        let limits = try #require(created["limits"] as? [String: Any])
        #expect((limits["memory"] as? NSNumber)?.int64Value == 64 << 20)
        #expect((limits["timeout"] as? NSNumber)?.doubleValue == 1.5)
        for value in ["64mb", "1.5g", "512000k", "67108864"] {
            #expect(try h.stockade(["run", "--memory", value, "--timeout", "5m", "--", "/bin/true"]).status == 0, "--memory \(value)")
        }
        let host = RunValues.hostCPUCount
        let refused: [([String], String)] = [
            (["--memory", "-1"], "--memory: must not be negative"),
            (["--memory", "1k"], "--memory: must be at least 4m (4 MiB)"),
            (["--memory", "lots"], "--memory: must be a size"),
            (["--timeout", "0"], "--timeout: must be more than 0"),
            (["--timeout", "-5s"], "--timeout: must not be negative"),
            (["--cpus", "-1"], "--cpus: must be a number of CPUs of at least 0.01"),
            (["--cpus", "\(host + 1)"], "--cpus: must be at most \(host), this host's CPU count"),
            (["--pids", "0"], "--pids: must be a whole number from 1 to 65536"),
            (["--publish", "70000:80"], "--publish: ports must be from 1 to 65535"),
            (["--network", "none", "--publish", "8080:80"], "--network none: cannot publish ports"),
        ]
        for (flags, message) in refused {
            let r = try h.stockade(["run"] + flags + ["--", "/bin/true"])
            #expect(r.status == 125, "\(flags)")
            #expect(r.stderr.contains(message), "\(flags): \(r.stderr)")
        }
    }

    @Test("the smallest memory limit accepted is enough to start a worker")
    func memoryFloorStarts() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--memory", "4m", "--", "/bin/echo", "started"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "started\n")
    }

    @Test("with --network loopback a worker that is not root binds port 80, as under docker")
    func lowPortInWorkerNamespace() throws {
        let h = try Harness()
        let script = #"use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 80, Listen => 1, ReuseAddr => 1) or die "bind: $!\n"; print "bound ", $s->sockport, " as uid $<\n";"#
        let r = try h.stockade(["run", "--network", "loopback", "--", "/usr/bin/perl", "-e", script])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "bound 80 as uid 1000\n")
    }

    @Test("a setup failure is one line on stderr; --log-format json writes log lines as JSON objects")
    func oneMessagePerFailure() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--workspace", "/nonexistent-\(UUID().uuidString)", "--", "/bin/true"])
        #expect(r.status == 125)
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("setup-failed") && r.stderr.contains("--workspace"))
        let logged = try h.stockade(["--log-format", "json", "run", "--", "/bin/true"], environment: ["STOCKADE_LOG": "debug"])
        #expect(logged.status == 0, "\(logged.stderr)")
        let objects = logged.stderr.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let started = objects.first { $0["message"] as? String == "worker.started" }
        #expect(started?["level"] as? String == "debug", "\(logged.stderr)")
        #expect(started?["run.id"] as? String != nil)
        let badFormat = try h.stockade(["--log-format", "xml", "gc", "--older-than", "1h"])
        #expect(badFormat.status == 2 && badFormat.stderr.contains("--log-format: must be text or json"))
    }

    static let nobodyCanRunTheBinary: Bool = {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { return false }
        let r = try? Harness.exec("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "/bin/test", "-x", Harness.stockade])
        return r?.status == 0
    }()

    @Test("run as a user that is not root says it needs root and why",
          .enabled(if: nobodyCanRunTheBinary, "needs setpriv and a build directory user nobody can reach"))
    func needsRoot() throws {
        let h = try Harness()
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: h.stateDirectory)
        let r = try Harness.exec("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
                                                      Harness.stockade, "run", "--", "/bin/true"],
                                 environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
        #expect(r.status == 125)
        #expect(r.stderr.hasPrefix("stockade run: needs root: each worker runs under host ids of its own"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
    }

    @Test("batch reports carry their input line; a repeated id is refused; labels and name are accepted")
    func batchLines() throws {
        let h = try Harness()
        let input = """
            {"id": "a", "command": ["/bin/true"], "labels": {"team": "infra"}, "name": "first"}

            {"id": "b", "command": ["/bin/true"], "memory": "64MiB", "timeout": "2s"}
            {"id": "a", "command": ["/bin/true"]}
            {"id": "c", "command": ["/bin/true"], "memory": "1k"}

            """
        let r = try h.stockade(["batch", "-"], stdin: input)
        #expect(r.status == 1, "a refused line makes the batch exit 1")
        let reports = try r.stdout.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        let byLine = Dictionary(uniqueKeysWithValues: reports.compactMap { r in r.int("line").map { ($0, r) } })
        #expect(byLine.keys.sorted() == [1, 3, 4, 5])
        #expect(byLine[1]?.string("outcome") == "exited" && byLine[1]?.string("id") == "a")
        #expect(byLine[3]?.string("outcome") == "exited")
        let duplicate = byLine[4]?["setupError"] as? [String: Any]
        #expect((duplicate?["message"] as? String)?.contains("already used on line 1") == true, "\(duplicate ?? [:])")
        let small = byLine[5]?["setupError"] as? [String: Any]
        #expect((small?["message"] as? String)?.contains("memory: must be at least 4m") == true, "\(small ?? [:])")
        let runs = try h.stockade(["audit", "runs", "--json", "--label", "team=infra"])
        #expect(runs.stdout.split(separator: "\n").count == 1 && runs.stdout.contains("\"name\":\"first\""), "\(runs.stdout)")
    }

    @Test("output that is not UTF-8 is kept exactly in --json as base64 beside the lossy text; valid UTF-8 has no base64")
    func invalidUTF8RoundTrips() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--json", "--", "/bin/sh", "-c", #"printf 'ok\377\376\000end'; printf 'caf\303\251' >&2"#])
        let report = try r.report()
        let base64 = try #require(report.string("stdoutBase64"), "\(report)")
        #expect(Data(base64Encoded: base64) == Data([0x6F, 0x6B, 0xFF, 0xFE, 0x00, 0x65, 0x6E, 0x64]))
        #expect(report.string("stdout")?.hasPrefix("ok\u{FFFD}\u{FFFD}") == true)
        #expect(report["stderrBase64"] == nil)
        #expect(report.string("stderr") == "café")
    }

    @Test("an unknown subcommand suggests the nearest; a command without -- is told where it goes")
    func usageHints() throws {
        let h = try Harness()
        let typo = try h.stockade(["rnu", "--", "/bin/true"])
        #expect(typo.status == 2)
        #expect(typo.stderr.contains("unknown command 'rnu': did you mean 'run'?"), "\(typo.stderr)")
        let nested = try h.stockade(["audit", "evnts"])
        #expect(nested.status == 2 && nested.stderr.contains("did you mean 'events'?"), "\(nested.stderr)")
        let noTerminator = try h.stockade(["run", "echo", "hi"])
        #expect(noTerminator.status == 125)
        #expect(noTerminator.stderr.contains("put the command after --, as in: stockade run [OPTIONS] -- echo hi"), "\(noTerminator.stderr)")
    }

    @Test("profile check, gc, review show/accept/reject answer in JSON; review list has a header; audit events refuses unknown kinds and runs")
    func jsonEverywhere() throws {
        let h = try Harness()
        let good = try h.stockade(["profile", "check", "--json", "default"])
        #expect(good.status == 0)
        let goodObject = try #require(try JSONSerialization.jsonObject(with: Data(good.stdout.utf8)) as? [String: Any])
        #expect(goodObject["valid"] as? Bool == true && goodObject["name"] as? String == "default")
        let file = h.stateDirectory + "/bad.json"
        try #"{"limits": {"memory": "1k", "bogus": 1}}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try h.stockade(["profile", "check", "--json", file])
        #expect(bad.status == 1)
        let badObject = try #require(try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as? [String: Any])
        #expect(badObject["valid"] as? Bool == false)
        #expect(((badObject["errors"] as? [[String: Any]]) ?? []).compactMap { $0["field"] as? String }.contains("limits.memory"), "\(bad.stdout)")

        let ws = try makeWorkspace()
        let run = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "echo more >> README.md"])
        let id = try #require((try run.report()["review"] as? [String: Any])?["id"] as? NSNumber).intValue
        let gc = try h.stockade(["gc", "--json", "--older-than", "1h"])
        #expect(gc.status == 0 && gc.stdout == "{\"layers\":[],\"layersBusy\":false,\"removed\":[]}\n" && gc.stderr.isEmpty, "\(gc.stdout) \(gc.stderr)")
        let list = try h.stockade(["review", "list"])
        #expect(list.stdout.split(separator: "\n").first == "ID\tRUN\tSTATE\tVERDICT\tBYTES\tCREATED\tREASON")
        let show = try h.stockade(["review", "show", "--json", "\(id)"])
        let shown = try #require(try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any])
        #expect(shown["state"] as? String == "pending" && (shown["content"] as? String)?.contains("+more") == true, "\(show.stdout)")
        let reject = try h.stockade(["review", "reject", "--json", "\(id)", "--actor", "me", "--note", "no"])
        let rejected = try #require(try JSONSerialization.jsonObject(with: Data(reject.stdout.utf8)) as? [String: Any])
        #expect(rejected["state"] as? String == "rejected" && rejected["decidedBy"] as? String == "me")

        let second = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "echo again >> README.md"])
        let id2 = try #require((try second.report()["review"] as? [String: Any])?["id"] as? NSNumber).intValue
        let accept = try h.stockade(["review", "accept", "--json", "\(id2)", "--actor", "me"])
        let accepted = try #require(try JSONSerialization.jsonObject(with: Data(accept.stdout.utf8)) as? [String: Any], "\(accept.stdout) \(accept.stderr)")
        #expect(accepted["state"] as? String == "accepted" && accepted["appliedAt"] is String, "\(accept.stdout)")
        #expect(try String(contentsOfFile: ws + "/README.md", encoding: .utf8) == "hello\nagain\n")

        let kind = try h.stockade(["audit", "events", "--kind", "violations"])
        #expect(kind.status == 2 && kind.stderr.contains("unknown event kind violations; known kinds: run.created"), "\(kind.stderr)")
        let unknownRun = try h.stockade(["audit", "events", "--run", "01NOSUCHRUN"])
        #expect(unknownRun.status == 1 && unknownRun.stderr.contains("no run 01NOSUCHRUN"), "\(unknownRun.stderr)")
    }
}

@Suite("what every start of the binary loads")
struct StartupLinkTests {
    /// The shared libraries `path` names in its dynamic section (DT_NEEDED), as readelf prints them.
    static func neededLibraries(_ path: String) throws -> [String] {
        let result = try Harness.exec("/usr/bin/readelf", ["-d", path])
        try #require(result.status == 0, "readelf -d \(path): \(result.stderr)")
        return result.stdout.split(separator: "\n").compactMap { line in
            guard line.contains("(NEEDED)"), let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
    }

    @Test("stockade does not link libarchive: it is loaded only when an image layer is unpacked (and image import still works: ImageTests)")
    func libarchiveIsNotLinked() throws {
        let needed = try Self.neededLibraries(Harness.stockade)
        // The positive control: the reader sees the libraries the binary does link.
        #expect(needed.contains { $0.hasPrefix("libseccomp.so") }, "readelf saw \(needed)")
        #expect(!needed.contains { $0.hasPrefix("libarchive") }, "libarchive (and the ten libraries it needs) would load at every start: \(needed)")
    }
}
