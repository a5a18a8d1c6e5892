import Foundation
import Testing

/// The `--json` lines of `stockade audit events`.
func auditEvents(_ h: Harness, _ args: [String] = []) throws -> [[String: Any]] {
    let r = try h.stockade(["audit", "events", "--json"] + args)
    return try r.stdout.split(separator: "\n").map { line in
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }
}

/// The directories of a run's cgroup, as its `worker.started` event records them (one per v1 hierarchy).
func runCgroupPaths(_ h: Harness, _ runId: String) throws -> [String] {
    let started = try #require(try auditEvents(h, ["--run", runId]).first { $0["kind"] as? String == "worker.started" }, "no worker.started for \(runId)")
    let cgroup = try #require((started["detail"] as? [String: Any])?["cgroup"] as? [String: Any], "\(started)")
    let paths = try #require(cgroup["paths"] as? [String], "\(cgroup)")
    try #require(!paths.isEmpty)
    return paths
}

@Suite("the audit trail, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct AuditTrailTests {
    @Test("a run refused before it starts (its profile cannot be loaded) is in the trail too, command withheld")
    func refusedRun() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--json", "--profile", h.stateDirectory + "/missing.json", "--", "/bin/echo", "token-in-argv"])
        #expect(r.status == 125)
        let runId = try #require(try r.report().string("runId"))
        let events = try auditEvents(h, ["--run", runId])
        #expect(events.compactMap { $0["kind"] as? String } == ["run.created", "run.finished"], "\(events)")
        let created = events.first?["detail"] as? [String: Any]
        #expect(created?["refusedAt"] as? String == "profile")
        #expect(created?["commandWithheld"] as? Bool == true)
        let finished = events.last?["detail"] as? [String: Any]
        #expect(finished?["outcome"] as? String == "setup-failed")
        #expect(!events.description.contains("token-in-argv"))
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("a misbehaving worker's whole story is in the trail: creation, start, violations, kill, exit, outcome")
    func story() throws {
        let h = try Harness()
        let r = try h.run(["--profile", "strict"], ["/bin/sh", "-c", "echo start; unshare -U true; echo never"])
        let report = try r.report()
        #expect(report.string("outcome") == "seccomp")
        #expect(r.status == 159)
        let runId = try #require(report.string("runId"))
        let events = try auditEvents(h, ["--run", runId])
        let kinds = events.compactMap { $0["kind"] as? String }
        // The kill is recorded before it is sent (a crash in between keeps the intent).
        #expect(kinds == ["run.created", "worker.started", "kill", "violation", "worker.exited", "run.finished"], "\(kinds)")
        let kill = try #require(events.first { $0["kind"] as? String == "kill" }?["detail"] as? [String: Any])
        #expect(kill["when"] as? String == "before" && kill["syscall"] as? String == "unshare", "\(kill)")
        let violation = try #require(events.first { $0["kind"] as? String == "violation" }?["detail"] as? [String: Any])
        #expect(violation["syscall"] as? String == "unshare")
        let finished = try #require(events.last?["detail"] as? [String: Any])
        #expect(finished["outcome"] as? String == "seccomp")
        let seqs = events.compactMap { ($0["seq"] as? NSNumber)?.int64Value }
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
        let runSeqs = events.compactMap { ($0["runSeq"] as? NSNumber)?.intValue }
        #expect(runSeqs == Array(1...runSeqs.count))
        let timeout = try h.run(["--timeout", "0.5"], ["/bin/sleep", "30"])
        let timeoutRun = try #require(try timeout.report().string("runId"))
        let timeoutKinds = try auditEvents(h, ["--run", timeoutRun]).compactMap { $0["kind"] as? String }
        #expect(timeoutKinds.contains("limit.hit") && timeoutKinds.contains("kill"))
        #expect(try h.stockade(["audit", "verify"]).status == 0)
        let runs = try h.stockade(["audit", "runs", "--json"])
        #expect(runs.stdout.contains(runId) && runs.stdout.contains("\"outcome\":\"seccomp\""))
    }

    @Test("the exit is on record before the result's verdict and the diff, and the run's end after them")
    func storyWithResultAndDiff() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        defer { try? FileManager.default.removeItem(atPath: ws) }
        let script = "echo changed > README.md && " + resultScript([("r.txt", "done")], declared: [("r.txt", 4, sha256Hex("done"))])
        let report = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", script]).report()
        #expect((report["result"] as? [String: Any])?["status"] as? String == "accepted", "\(report)")
        #expect((report["review"] as? [String: Any])?["state"] as? String == "pending", "\(report)")
        let runId = try #require(report.string("runId"))
        let kinds = try auditEvents(h, ["--run", runId]).compactMap { $0["kind"] as? String }
        #expect(kinds == ["run.created", "worker.started", "worker.exited", "bundle.accepted", "diff.recorded", "run.finished"], "\(kinds)")
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("--since resumes after the last seq a client saw")
    func resume() throws {
        let h = try Harness()
        _ = try h.run([], ["/bin/true"])
        let all = try auditEvents(h)
        let middle = try #require((all[all.count / 2]["seq"] as? NSNumber)?.int64Value)
        let rest = try auditEvents(h, ["--since", "\(middle)"])
        #expect(rest.compactMap { ($0["seq"] as? NSNumber)?.int64Value } == all.compactMap { ($0["seq"] as? NSNumber)?.int64Value }.filter { $0 > middle })
    }

    @Test("a row edited with the sqlite3 CLI makes audit verify fail naming its seq")
    func tamper() throws {
        let h = try Harness()
        _ = try h.run([], ["/bin/true"])
        _ = try h.run([], ["/bin/true"])
        #expect(try h.stockade(["audit", "verify"]).status == 0)
        let edit = try Harness.exec("/usr/bin/sqlite3", [h.stateDirectory + "/audit.sqlite",
                                                         "UPDATE events SET detail = replace(detail, 'exited', 'signaled') WHERE seq = 3"])
        #expect(edit.status == 0, "\(edit.stderr)")
        let verify = try h.stockade(["audit", "verify"])
        #expect(verify.status == 1)
        #expect(verify.stderr.contains("seq 3"), "\(verify.stderr)")
    }

    @Test("SIGKILL of the supervisor mid-run leaves a consistent database; the next start marks the run abandoned")
    func abandoned() throws {
        let h = try Harness()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--", "/bin/sleep", "60"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var started = false
        for _ in 0..<100 where !started {
            usleep(100_000)
            started = ((try? auditEvents(h)) ?? []).contains { $0["kind"] as? String == "worker.started" }
        }
        #expect(started)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        // Queries change nothing; the next command that runs workers does the start-up housekeeping.
        #expect(!(try h.stockade(["audit", "runs", "--json"]).stdout.contains("abandoned")))
        #expect(try h.run([], ["/bin/true"]).status == 0)
        let runs = try h.stockade(["audit", "runs", "--json"])
        #expect(runs.stdout.contains("\"state\":\"abandoned\""), "\(runs.stdout)")
        #expect(try auditEvents(h).contains { $0["kind"] as? String == "run.abandoned" })
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("a worker's exit is durable before its workspace is collected: a supervisor killed during the scan loses no outcome event")
    func outcomeDurableBeforeCollection() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        defer { try? FileManager.default.removeItem(atPath: ws) }
        // 5000 new files: the scan and the diff after the exit take a good part of a second in a debug build.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "i=0; while [ $i -lt 5000 ]; do i=$((i+1)); echo $i > f$i; done"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var seen: [String] = []
        while process.isRunning && !seen.contains("worker.exited") {
            usleep(5_000)
            seen = ((try? auditEvents(h)) ?? []).compactMap { $0["kind"] as? String }
        }
        // Before the fix the exit waited in memory for run.finished's transaction, past the scan.
        #expect(seen.contains("worker.exited") && !seen.contains("run.finished") && !seen.contains("diff.recorded"),
                "the exit was not on disk while the workspace was collected: \(seen)")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(try h.run([], ["/bin/true"]).status == 0)  // the start-up housekeeping marks the killed run abandoned
        let kinds = try auditEvents(h).compactMap { $0["kind"] as? String }
        #expect(kinds.starts(with: ["run.created", "worker.started", "worker.exited", "run.abandoned"]), "\(kinds)")
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("runs carry their host: STOCKADE_HOST_ID when set; a supervisor never marks another host's run abandoned")
    func hostIdentity() throws {
        let h = try Harness()
        #expect(try h.run([], ["/bin/true"], environment: ["STOCKADE_HOST_ID": "e2e-host-1"]).status == 0)
        let bad = try h.run([], ["/bin/true"], environment: ["STOCKADE_HOST_ID": "two words"])
        #expect(bad.status == 125 && bad.stderr.contains("STOCKADE_HOST_ID"), "\(bad.stderr)")

        // A supervisor of another host dies mid-run, leaving its run `running` in the shared store.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--", "/bin/sleep", "60"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin", "STOCKADE_HOST_ID": "elsewhere"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var started = false
        for _ in 0..<100 where !started {
            usleep(100_000)
            started = ((try? auditEvents(h)) ?? []).contains { $0["kind"] as? String == "worker.started" }
        }
        #expect(started)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()

        func runs() throws -> [[String: Any]] {
            try h.stockade(["audit", "runs", "--json"]).stdout.split(separator: "\n").map {
                try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
            }
        }
        // This host's next supervisor leaves it alone: its pid means nothing here.
        #expect(try h.run([], ["/bin/true"]).status == 0)
        var all = try runs()
        #expect(all.count == 3, "\(all)")
        #expect(all.map { $0["hostId"] as? String }.first == "e2e-host-1")
        let elsewhere = try #require(all.first { $0["hostId"] as? String == "elsewhere" })
        #expect(elsewhere["state"] as? String == "running", "\(all)")
        let local = try #require(all.last?["hostId"] as? String)
        #expect(!local.isEmpty && local != "elsewhere" && local != "e2e-host-1")
        #expect(!(try auditEvents(h)).contains { $0["kind"] as? String == "run.abandoned" })

        // That host's next supervisor marks it.
        #expect(try h.run([], ["/bin/true"], environment: ["STOCKADE_HOST_ID": "elsewhere"]).status == 0)
        all = try runs()
        #expect(all.first { $0["runId"] as? String == elsewhere["runId"] as? String }?["state"] as? String == "abandoned", "\(all)")
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("four concurrent stockade processes lose and duplicate no event")
    func concurrentSupervisors() throws {
        let h = try Harness()
        let group = DispatchGroup()
        let failures = LockedData()
        for i in 0..<4 {
            group.enter()
            Thread {
                defer { group.leave() }
                for _ in 0..<3 {
                    if let r = try? h.run([], ["/bin/sh", "-c", "echo \(i)"]), r.status != 0 { failures.set(Data("\(r.stderr)".utf8)) }
                }
            }.start()
        }
        group.wait()
        #expect(failures.value.isEmpty, "\(String(decoding: failures.value, as: UTF8.self))")
        let events = try auditEvents(h)
        let seqs = events.compactMap { ($0["seq"] as? NSNumber)?.int64Value }
        #expect(seqs == Array(1...Int64(seqs.count)), "global seq is gap-free")
        var byRun: [String: [Int]] = [:]
        for e in events { if let run = e["runId"] as? String { byRun[run, default: []].append((e["runSeq"] as? NSNumber)?.intValue ?? -1) } }
        #expect(byRun.count == 12)
        for (run, runSeqs) in byRun {
            #expect(runSeqs == Array(1...runSeqs.count), "run \(run)")
            #expect(runSeqs.count == 4, "run \(run): created, started, exited, finished")
        }
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("an injection string chosen by the worker's caller is stored verbatim")
    func injection() throws {
        let h = try Harness()
        let evil = "x'); DROP TABLE events;-- \"\\ \u{202E}"
        let r = try h.run([], ["/bin/echo", evil])
        let runId = try #require(try r.report().string("runId"))
        let created = try #require(try auditEvents(h, ["--run", runId]).first)
        let command = try #require((created["detail"] as? [String: Any])?["command"] as? [String])
        #expect(command.last == evil)
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("an audit database that cannot be written fails the run instead of reporting success")
    func auditWriteFails() throws {
        let h = try Harness()
        _ = try h.run([], ["/bin/true"])
        // A trigger makes every new event fail, as a full or broken disk would.
        let sql = "CREATE TRIGGER stop_events BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'disk full'); END;"
        #expect(try Harness.exec("/usr/bin/sqlite3", [h.stateDirectory + "/audit.sqlite", sql]).status == 0)
        let r = try h.run([], ["/bin/true"])
        #expect(r.status == 125)
        let report = try r.report()
        #expect(((report["setupError"] as? [String: Any])?["stage"] as? String) == "audit")
    }
}

@Suite("secrets never reach what the supervisor stores", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct SecretStorageTests {
    @Test("a secret the worker prints, writes into the workspace and into its result is absent from the audit database, report, logs, diff and result copy")
    func secretEverywhere() throws {
        let h = try Harness()
        let secret = "sk-live-\(UUID().uuidString)"
        let secretFile = h.stateDirectory + "/token"
        try secret.write(toFile: secretFile, atomically: true, encoding: .utf8)
        chmod(secretFile, 0o600)
        let profile = h.stateDirectory + "/secret.json"
        try #"{"extends":"default","secrets":[{"env":"API_TOKEN","file":"\#(secretFile)"}]}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let ws = try makeWorkspace()
        let script = "echo \"token=$API_TOKEN\"; echo \"$API_TOKEN\" >&2; echo \"$API_TOKEN\" > leaked.txt; " +
            "cd /sandbox/result && printf '%s' \"$API_TOKEN\" > r.txt && H=$(sha256sum r.txt | cut -d' ' -f1) && S=$(wc -c < r.txt) && " +
            "printf '{\"version\":1,\"files\":[{\"path\":\"r.txt\",\"size\":%s,\"sha256\":\"%s\"}]}' $S $H > manifest.json"
        let r = try h.stockade(["run", "--json", "--profile", profile, "--workspace", ws, "--", "/bin/sh", "-c", script])
        let report = try r.report()
        #expect(report.string("stdout") == "token=[REDACTED]\n", "the worker saw the secret and the report hides it")
        #expect(!r.stdout.contains(secret))
        let review = try #require(report["review"] as? [String: Any])
        #expect(review["state"] as? String == "rejected")
        let result = try #require(report["result"] as? [String: Any])
        #expect(result["status"] as? String == "rejected" && ((result["reason"] as? String) ?? "").contains("secret"), "\(result)")
        let runId = try #require(report.string("runId"))
        let runDir = h.stateDirectory + "/runs/" + runId
        for item in ["report.json", "logs/stdout.log", "logs/stderr.log", "diff.patch"] {
            let text = (try? String(contentsOfFile: runDir + "/" + item, encoding: .utf8)) ?? ""
            #expect(!text.isEmpty && !text.contains(secret), "\(item)")
        }
        for item in (try? FileManager.default.subpathsOfDirectory(atPath: runDir + "/result")) ?? [] {
            let text = (try? String(contentsOfFile: runDir + "/result/" + item, encoding: .utf8)) ?? ""
            #expect(!text.contains(secret), "result/\(item)")
        }
        let dump = try Harness.exec("/usr/bin/sqlite3", [h.stateDirectory + "/audit.sqlite", ".dump"])
        #expect(dump.status == 0 && dump.stdout.contains(runId))
        #expect(!dump.stdout.contains(secret), "the audit database holds the secret")
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }
}

@Suite("variables a profile marks secret", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct MarkedSecretTests {
    @Test("a value given with --env under a name the profile marks secret reaches the worker and is redacted everywhere it is stored")
    func markedEnv() throws {
        let h = try Harness()
        let value = "tok-\(UUID().uuidString)"
        let profile = h.stateDirectory + "/marked.json"
        try #"{"extends":"default","environment":{"secret":["DEPLOY_TOKEN"]}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--profile", profile, "--env", "DEPLOY_TOKEN=\(value)", "--", "/bin/sh", "-c",
                                "echo \"t=$DEPLOY_TOKEN\"; [ $(printf %s \"$DEPLOY_TOKEN\" | wc -c) -eq \(value.utf8.count) ] && echo SEEN"])
        let report = try r.report()
        #expect(report.string("stdout") == "t=[REDACTED]\nSEEN\n")
        let dump = try Harness.exec("/usr/bin/sqlite3", [h.stateDirectory + "/audit.sqlite", ".dump"])
        #expect(!dump.stdout.contains(value) && !r.stdout.contains(value))
        // Even a caller that also writes the value into the command line leaks nothing into the trail.
        let echoed = try h.stockade(["run", "--json", "--profile", profile, "--env", "DEPLOY_TOKEN=\(value)", "--", "/bin/echo", value])
        #expect(try echoed.report().string("stdout") == "[REDACTED]\n")
        let again = try Harness.exec("/usr/bin/sqlite3", [h.stateDirectory + "/audit.sqlite", ".dump"])
        #expect(!again.stdout.contains(value), "the command line's copy reached the audit database")
        let short = try h.stockade(["run", "--json", "--profile", profile, "--env", "DEPLOY_TOKEN=abc", "--", "/bin/true"])
        #expect(short.status == 125)
        #expect(((try short.report()["setupError"] as? [String: Any])?["message"] as? String ?? "").contains("DEPLOY_TOKEN"))
    }
}
