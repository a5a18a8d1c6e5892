import Foundation
import Glibc
import StockadeTestSupport
import Testing

/// The `stockade` CLI as a client of the service: `--host` / `$STOCKADE_HOST` with `$STOCKADE_TOKEN`.
private struct Client {
    let server: ServerHarness
    let token: String?

    var environment: [String: String] {
        var env = ["STOCKADE_HOST": "unix://\(server.socketPath)", "STOCKADE_TOKEN": token ?? ""]
        // The local state directory is never the service's: runs through the service must not touch it.
        env["STOCKADE_STATE_DIR"] = server.directory + "/client-state"
        return env
    }

    func stockade(_ arguments: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ServerHarness.exec(ServerHarness.stockade, arguments, environment: environment.merging(extra) { $1 })
    }
}

/// `stockade run` in this process, on a state directory of its own (never the service's: a second
/// supervisor on it would take the service's running runs for abandoned ones).
private func local(_ server: ServerHarness, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    try ServerHarness.exec(ServerHarness.stockade, ["--state-dir", server.directory + "/local-state"] + arguments,
                           environment: ["STOCKADE_HOST": "", "STOCKADE_TOKEN": ""])
}

/// The summary line with what differs between two runs of one command (its id, its duration) made equal.
private func normalized(_ stderr: String) -> String {
    stderr.replacingOccurrences(of: #"run [0-9A-Z]{26} "#, with: "run RUNID ", options: .regularExpression)
        .replacingOccurrences(of: #" in [0-9]+ ms"#, with: " in N ms", options: .regularExpression)
}

/// A JSON value as text with sorted keys: equal values, equal text.
private func canonical(_ value: Any?) -> String {
    guard let value else { return "absent" }
    guard let data = try? JSONSerialization.data(withJSONObject: [value], options: [.sortedKeys, .fragmentsAllowed]) else { return "\(value)" }
    return String(decoding: data, as: UTF8.self)
}

private func object(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "a JSON object: \(text)")
}

@Suite("stockade --host: the CLI through a running stockade serve", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(4)))
struct ClientTests {
    @Test("run through the service prints what a local run prints and exits as it does: ok, a nonzero exit, a timeout, --json",
          arguments: [
              (["--", "/bin/sh", "-c", "echo out-line; echo err-line >&2"], Int32(0)),
              (["--", "/bin/sh", "-c", "printf 'partial'; echo oops >&2; exit 3"], Int32(3)),
              (["--timeout", "1", "--", "/bin/sh", "-c", "echo before; exec sleep 30"], Int32(124)),
              (["--env", "K=from-flag", "--label", "team=qa", "--name", "parity", "--", "/bin/sh", "-c", "echo $K; kill -TERM $$"], Int32(143)),
          ])
    func runParity(arguments: [String], expected: Int32) throws {
        let server = try ServerHarness()
        let client = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write"))

        let here = try local(server, ["run"] + arguments)
        let there = try client.stockade(["run"] + arguments)
        #expect(here.status == expected, "local: \(here.stderr)")
        #expect(there.status == here.status, "through the service: \(there.stderr)")
        #expect(there.stdout == here.stdout)
        #expect(normalized(there.stderr) == normalized(here.stderr))
        #expect(there.stderr.hasPrefix(here.stderr.components(separatedBy: "stockade: run ").first ?? ""), "the worker's stderr first, then the summary")

        let hereJSON = try local(server, ["run", "--json"] + arguments)
        let thereJSON = try client.stockade(["run", "--json"] + arguments)
        #expect(thereJSON.status == hereJSON.status)
        #expect(thereJSON.stderr == "" && hereJSON.stderr == "", "\(thereJSON.stderr) \(hereJSON.stderr)")
        #expect(thereJSON.stdout.hasSuffix("}\n") && thereJSON.stdout.split(separator: "\n").count == 1, "one report line: \(thereJSON.stdout)")
        let a = try object(hereJSON.stdout), b = try object(thereJSON.stdout)
        #expect(Set(a.keys) == Set(b.keys))
        for key in a.keys where !["runId", "durationMs", "cpuTimeMs", "memoryPeakBytes"].contains(key) {
            #expect(canonical(a[key]) == canonical(b[key]), "report key \(key): local \(a[key] ?? "") service \(b[key] ?? "")")
        }
        // The run is the service's: recorded in its trail, not in the client's state directory.
        let runId = try #require(b["runId"] as? String)
        let trail = try server.stockade(["audit", "runs", "--json"]).stdout
        #expect(trail.contains(runId))
        #expect(!FileManager.default.fileExists(atPath: server.directory + "/client-state/audit.sqlite"))
    }

    @Test("a run the service refuses: a bad value is named and exits 125; -i and --state-dir are refused with --host")
    func runRefusals() throws {
        let server = try ServerHarness()
        let client = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write"))
        // A run refused in setup before its run directory existed: the service keeps its report, so
        // the client prints the setup error as a local run does, and exits 125.
        let badProfile = try client.stockade(["run", "--profile", "no-such-profile", "--", "/bin/true"])
        #expect(badProfile.status == 125, "\(badProfile)")
        #expect(badProfile.stderr.contains("no-such-profile") && !badProfile.stderr.contains("kept no report"), "\(badProfile.stderr)")
        let badProfileJSON = try client.stockade(["run", "--json", "--profile", "no-such-profile", "--", "/bin/true"])
        #expect(badProfileJSON.status == 125 && badProfileJSON.stdout.contains(#""stage":"profile""#), "\(badProfileJSON)")
        let interactive = try client.stockade(["run", "-i", "--", "/bin/cat"])
        #expect(interactive.status == 125)
        #expect(interactive.stderr.contains("--interactive") && interactive.stderr.contains("standard input"), "\(interactive.stderr)")
        let stateDir = try client.stockade(["run", "--state-dir", "/tmp", "--", "/bin/true"])
        #expect(stateDir.status == 125 && stateDir.stderr.contains("--state-dir"), "\(stateDir.stderr)")
        let memory = try client.stockade(["run", "--memory", "-1", "--", "/bin/true"])
        #expect(memory.status == 125 && memory.stderr.contains("--memory"), "\(memory.stderr)")
        // A token without run:write: the service's 403, one line, nothing ran.
        let reader = Client(server: server, token: try server.token("reader", scopes: "run:read"))
        let forbidden = try reader.stockade(["run", "--", "/bin/true"])
        #expect(forbidden.status == 125)
        #expect(forbidden.stderr.hasPrefix("stockade: ") && forbidden.stderr.contains("run:write"), "\(forbidden.stderr)")
    }

    @Test("batch through the service: one report line per request with its id and line; a bad line refused as locally, exit 1")
    func batch() throws {
        let server = try ServerHarness()
        let client = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write"))
        let input = server.directory + "/requests.jsonl"
        try """
        {"id":"a","command":["/bin/sh","-c","echo A"]}

        {"id":"b","command":["/bin/sh","-c","exit 4"],"timeout":"10s"}
        {"id":"c","memory":"lots","command":["/bin/true"]}
        {"id":"a","command":["/bin/true"]}
        {"id":"d","command":["/bin/sh","-c","echo D >&2; exit 9"]}

        """.write(toFile: input, atomically: true, encoding: .utf8)
        let there = try client.stockade(["batch", "--parallel", "2", input])
        let here = try local(server, ["batch", "--parallel", "2", input])
        #expect(there.status == 1 && here.status == 1, "\(there.stderr) \(here.stderr)")
        func byLine(_ out: String) throws -> [Int: [String: Any]] {
            var rows: [Int: [String: Any]] = [:]
            for line in out.split(separator: "\n") {
                let o = try object(String(line))
                rows[try #require((o["line"] as? NSNumber)?.intValue)] = o
            }
            return rows
        }
        let remote = try byLine(there.stdout), reference = try byLine(here.stdout)
        #expect(Set(remote.keys) == [1, 3, 4, 5, 6], "\(there.stdout)")
        #expect(Set(remote.keys) == Set(reference.keys))
        for (line, row) in remote {
            let other = try #require(reference[line])
            #expect(Set(row.keys) == Set(other.keys), "line \(line)")
            for key in ["id", "outcome", "exitCode", "stdout", "stderr", "setupError"] {
                #expect(canonical(row[key]) == canonical(other[key]), "line \(line) key \(key): \(row[key] ?? "") vs \(other[key] ?? "")")
            }
        }
        #expect(remote[1]?["stdout"] as? String == "A\n")
        #expect((remote[3]?["exitCode"] as? NSNumber)?.intValue == 4)
        let refused = try #require(remote[4]?["setupError"] as? [String: Any])
        #expect(refused["stage"] as? String == "request-line" && (refused["message"] as? String ?? "").hasPrefix("line 4: memory"), "\(refused)")
        let repeated = (remote[5]?["setupError"] as? [String: Any])?["message"] as? String
        #expect(repeated?.contains("already used on line 1") == true, "\(repeated ?? "none")")
    }

    @Test("review list, show and accept through the service print what the local commands print; self-approval is refused with exit 1")
    func reviewAccept() throws {
        let server = try ServerHarness()
        let engine = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write,review:read,review:submit"))
        let reviewer = Client(server: server, token: try server.token("reviewer", scopes: "review:read,review:submit"))
        let ws = server.directory + "/ws"
        try FileManager.default.createDirectory(atPath: ws, withIntermediateDirectories: true)
        try "hello\n".write(toFile: ws + "/README.md", atomically: true, encoding: .utf8)

        // A relative --workspace is the client's directory, made absolute before it reaches the service.
        let ran = try ServerHarness.exec("/bin/sh", ["-c", "cd \(server.directory) && exec \(ServerHarness.stockade) run --workspace ws -- /bin/sh -c 'echo made > made.txt'"],
                                         environment: engine.environment)
        #expect(ran.status == 0, "\(ran.stderr)")
        let diffId = try #require(ran.stderr.firstMatch(of: /diff ([0-9]+) pending review/)?.1, "\(ran.stderr)")

        for arguments in [["review", "list"], ["review", "list", "--json"], ["review", "list", "--state", "pending"],
                          ["review", "show", String(diffId)], ["review", "show", String(diffId), "--json"]] {
            let there = try reviewer.stockade(arguments)
            let here = try server.stockade(arguments)
            #expect(there.status == 0 && here.status == 0, "\(arguments): \(there.stderr) \(here.stderr)")
            #expect(there.stdout == here.stdout, "\(arguments)")
            #expect(there.stderr == here.stderr, "\(arguments)")
        }
        let missing = try reviewer.stockade(["review", "show", "999"])
        #expect(missing.status == 1 && missing.stderr == "stockade: no diff with id 999\n", "\(missing.stderr)")

        let own = try engine.stockade(["review", "accept", String(diffId)])
        #expect(own.status == 1, "the submitter may not decide its own run's diff: \(own)")
        #expect(own.stderr.hasPrefix("stockade: ") && own.stderr.contains("engine submitted"), "\(own.stderr)")
        let withActor = try reviewer.stockade(["review", "accept", String(diffId), "--actor", "someone"])
        #expect(withActor.status == 2 && withActor.stderr.contains("--actor"), "\(withActor.stderr)")

        let accepted = try reviewer.stockade(["review", "accept", String(diffId), "--note", "looks right"])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        #expect(accepted.stdout == "diff \(diffId) accepted and applied by reviewer\n")
        #expect((try? String(contentsOfFile: ws + "/made.txt", encoding: .utf8)) == "made\n")
        let shown = try object(try reviewer.stockade(["review", "show", String(diffId), "--json"]).stdout)
        #expect(shown["note"] as? String == "looks right" && shown["decidedBy"] as? String == "reviewer")
        let again = try reviewer.stockade(["review", "reject", String(diffId)])
        #expect(again.status == 1 && again.stderr.contains("accepted"), "\(again.stderr)")
    }

    @Test("audit events through the service prints the rows and JSON lines the local command prints, up to when it began")
    func auditEvents() throws {
        let server = try ServerHarness()
        let engine = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write"))
        let auditor = Client(server: server, token: try server.token("auditor", scopes: "audit:read,run:read"))
        let ran = try engine.stockade(["run", "--json", "--", "/bin/sh", "-c", "echo audited"])
        let runId = try #require(try object(ran.stdout)["runId"] as? String)

        for arguments in [["audit", "events", "--run", runId], ["audit", "events", "--run", runId, "--json"],
                          ["audit", "events", "--run", runId, "--kind", "run.finished"], ["audit", "events", "--kind", "run.created", "--json"]] {
            let there = try auditor.stockade(arguments)
            let here = try server.stockade(arguments)
            #expect(there.status == 0 && here.status == 0, "\(arguments): \(there.stderr)")
            #expect(!there.stdout.isEmpty && there.stdout == here.stdout, "\(arguments)")
        }
        // Without --run: every event before the command began, the API calls included.
        let all = try auditor.stockade(["audit", "events", "--since", "2", "--json"])
        #expect(all.status == 0, "\(all.stderr)")
        let seqs = try all.stdout.split(separator: "\n").map { try #require((try object(String($0))["seq"] as? NSNumber)?.intValue) }
        #expect(seqs.first == 3 && seqs == Array(3...(seqs.last ?? 0)), "in seq order, none missing: \(seqs)")
        #expect(all.stdout.contains(#""kind":"api.request""#))

        let unknownRun = try auditor.stockade(["audit", "events", "--run", "01M8T8XVRWJ2JTE6RJBTBY81KR"])
        #expect(unknownRun.status == 1 && unknownRun.stderr.contains("--run"), "\(unknownRun.stderr)")
        let badKind = try auditor.stockade(["audit", "events", "--kind", "no.such"])
        #expect(badKind.status == 2)
        let noScope = try engine.stockade(["audit", "events"])
        #expect(noScope.status == 1 && noScope.stderr.contains("audit:read"), "\(noScope.stderr)")
        let followLocally = try local(server, ["audit", "events", "--follow"])
        #expect(followLocally.status == 2 && followLocally.stderr.contains("--follow"))
    }

    @Test("--follow goes on printing events as the service records them")
    func follow() throws {
        let server = try ServerHarness()
        let engine = Client(server: server, token: try server.token("engine", scopes: "run:read,run:write"))
        let auditor = Client(server: server, token: try server.token("auditor", scopes: "audit:read"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ServerHarness.stockade)
        process.arguments = ["audit", "events", "--follow", "--kind", "run.finished", "--json"]
        process.environment = ProcessInfo.processInfo.environment.merging(auditor.environment) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        let ran = try engine.stockade(["run", "--json", "--", "/bin/true"])
        let runId = try #require(try object(ran.stdout)["runId"] as? String)
        // The event arrives within the service's poll; the read blocks until it does (the suite's limit bounds it).
        var received = ""
        while !received.contains(runId) {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            received += String(decoding: data, as: UTF8.self)
        }
        #expect(received.contains(#""kind":"run.finished""#) && received.contains(runId), "\(received)")
        #expect(process.isRunning, "--follow does not end by itself")
    }

    @Test("usage: a missing token, a bad URL, plaintext beyond loopback, a bad https host and --host before a command that cannot take it are refused naming the fix, with run's usage status (125) whether --host comes before or after it")
    func usage() throws {
        let server = try ServerHarness()
        let none = Client(server: server, token: nil)
        let noToken = try none.stockade(["run", "--", "/bin/true"])
        #expect(noToken.status == 125 && noToken.stderr.contains("STOCKADE_TOKEN"), "\(noToken.stderr)")
        let noTokenList = try none.stockade(["review", "list"])
        #expect(noTokenList.status == 2 && noTokenList.stderr.contains("STOCKADE_TOKEN"))
        // Given before the subcommand, --host is the command's own: the message names it, and a
        // usage error of run exits 125 as it does with --host after `run`.
        let noTokenGlobal = try none.stockade(["--host", "unix://\(server.socketPath)", "run", "--", "/bin/true"])
        #expect(noTokenGlobal.status == 125 && noTokenGlobal.stderr.contains("--host: $STOCKADE_TOKEN is not set"), "\(noTokenGlobal.stderr)")

        let client = Client(server: server, token: "stk_unused")
        for (host, words) in [("ftp://127.0.0.1:1", ["expected unix:///PATH"]),
                              ("unix://relative.sock", ["absolute path"]),
                              ("http://10.1.2.3:8700", ["loopback only", "https://10.1.2.3:PORT", "SSH tunnel"]),
                              ("http://localhost:8700", ["host names are not resolved"]),
                              ("http://127.0.0.1", ["a port is required"]),
                              ("https://bad_host!:8443", ["host name or address"])] {
            let viaFlag = try client.stockade(["review", "list", "--host", host])
            #expect(viaFlag.status == 2, "\(host): \(viaFlag.stderr)")
            #expect(viaFlag.stderr.hasPrefix("Error: --host:") || viaFlag.stderr.hasPrefix("stockade: --host:") || viaFlag.stderr.contains("--host: "), "\(viaFlag.stderr)")
            for word in words { #expect(viaFlag.stderr.contains(word), "\(host): \(viaFlag.stderr)") }
            let viaEnvironment = try client.stockade(["run", "--", "/bin/true"], environment: ["STOCKADE_HOST": host])
            #expect(viaEnvironment.status == 125 && viaEnvironment.stderr.contains("$STOCKADE_HOST"), "\(viaEnvironment.stderr)")
            let globalRun = try client.stockade(["--host", host, "run", "--", "/bin/true"])
            #expect(globalRun.status == 125 && globalRun.stderr.contains("--host: "), "\(host): \(globalRun.stderr)")
            for word in words { #expect(globalRun.stderr.contains(word), "\(host): \(globalRun.stderr)") }
            let globalList = try client.stockade(["--host", host, "review", "list"])
            #expect(globalList.status == 2 && globalList.stderr.contains("--host: "), "\(host): \(globalList.stderr)")
        }
        // A global --host's value that starts with "-" is still its value: refused with the address's message.
        for spelling in [["--host", "-x"], ["--host=-x"]] {
            let dashed = try client.stockade(spelling + ["run", "--", "/bin/true"])
            #expect(dashed.status == 125 && dashed.stderr.contains("--host: expected unix:///PATH"), "\(spelling): \(dashed.stderr)")
        }
        let global = try client.stockade(["--host", "unix://\(server.socketPath)", "token", "list"])
        #expect(global.status == 2 && global.stderr.contains("cannot go through the service"), "\(global.stderr)")
        let unknownToken = try client.stockade(["review", "list"])
        #expect(unknownToken.status == 1 && unknownToken.stderr.contains("unknown, expired or revoked"), "\(unknownToken.stderr)")
    }

    @Test("--host before the subcommand goes to the service as --host after it does, with $STOCKADE_HOST unset; the local state directory stays untouched")
    func globalHost() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let client = Client(server: server, token: token)
        let host = "unix://\(server.socketPath)"
        let before = try client.stockade(["--host", host, "run", "--json", "--", "/bin/sh", "-c", "echo through"], environment: ["STOCKADE_HOST": ""])
        #expect(before.status == 0, "\(before.stderr)")
        #expect(before.stdout.contains(#""stdout":"through\n""#), "\(before.stdout)")
        let after = try client.stockade(["run", "--host", host, "--json", "--", "/bin/sh", "-c", "echo through"], environment: ["STOCKADE_HOST": ""])
        #expect(after.status == 0 && after.stdout.contains(#""stdout":"through\n""#), "\(after.stderr)")
        // A run in this process would have made the local state directory's database: none was made.
        #expect(!FileManager.default.fileExists(atPath: server.directory + "/client-state/audit.sqlite"),
                "a run through the service touched the local state directory")
    }

    @Test("a service that is not running: the error names the socket and says how to start it; loopback TCP works like the socket")
    func notRunning() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let client = Client(server: server, token: token)
        let gone = server.directory + "/nobody.sock"
        let run = try client.stockade(["run", "--", "/bin/true"], environment: ["STOCKADE_HOST": "unix://\(gone)"])
        #expect(run.status == 125, "\(run.stderr)")
        #expect(run.stderr.contains(gone) && run.stderr.contains("stockade serve"), "\(run.stderr)")
        let list = try client.stockade(["review", "list", "--host", "unix://\(gone)"])
        #expect(list.status == 1 && list.stderr.contains(gone))

        // The same service on loopback TCP (a second harness on the same state directory).
        #expect(server.terminate() == 0)
        let port = freeLoopbackPort()
        let tcp = try ServerHarness(start: false, sharing: server)
        try tcp.start([], listen: "tcp://127.0.0.1:\(port)")
        let overTCP = try client.stockade(["run", "--", "/bin/sh", "-c", "echo tcp"], environment: ["STOCKADE_HOST": "http://127.0.0.1:\(port)"])
        #expect(overTCP.status == 0 && overTCP.stdout == "tcp\n", "\(overTCP.stderr)")
        #expect(tcp.terminate() == 0)
        let refused = try client.stockade(["run", "--", "/bin/true"], environment: ["STOCKADE_HOST": "http://127.0.0.1:\(port)"])
        #expect(refused.status == 125 && refused.stderr.contains("127.0.0.1:\(port)") && refused.stderr.contains("stockade serve"), "\(refused.stderr)")
    }
}

@Suite("stockade --host https://: the CLI over TLS", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ClientTLSTests {
    @Test("run and review list over https with $STOCKADE_CA_FILE print what a local run prints; an untrusted certificate, plain http to the TLS port and a wrong CA fail closed")
    func https() throws {
        let server = try ServerHarness(start: false)
        let (cert, key) = try Ops.certificate(in: server.directory)
        let port = Ops.freePort()
        try server.start(["--tls-cert", cert, "--tls-key", key], listen: "tcp://127.0.0.1:\(port)")
        let token = try server.token("engine", scopes: "run:read,run:write,review:read")
        let env = ["STOCKADE_HOST": "https://127.0.0.1:\(port)", "STOCKADE_TOKEN": token, "STOCKADE_CA_FILE": cert,
                   "STOCKADE_STATE_DIR": server.directory + "/client-state"]
        let command = ["run", "--", "/bin/sh", "-c", "echo over-tls; echo err >&2; exit 4"]
        let remote = try ServerHarness.exec(ServerHarness.stockade, command, environment: env)
        let here = try local(server, command)
        #expect(remote.status == 4 && here.status == 4, "\(remote) \(here)")
        #expect(remote.stdout == "over-tls\n" && remote.stdout == here.stdout)
        #expect(normalized(remote.stderr) == normalized(here.stderr), "\(remote.stderr) vs \(here.stderr)")
        let listed = try ServerHarness.exec(ServerHarness.stockade, ["review", "list", "--json"], environment: env)
        #expect(listed.status == 0, "\(listed.stderr)")

        // Fail closed: no trusted CA (the system's roots do not know this certificate), a CA that is
        // not the service's, plaintext to the TLS port: nothing runs, the error names the service.
        var untrusted = env
        untrusted["STOCKADE_CA_FILE"] = ""
        let noCA = try ServerHarness.exec(ServerHarness.stockade, ["run", "--", "/bin/true"], environment: untrusted)
        #expect(noCA.status == 125 && noCA.stderr.contains("https://127.0.0.1:\(port)"), "\(noCA.stderr)")
        let (otherCert, _) = try Ops.certificate(in: server.directory, name: "other")
        var wrongCA = env
        wrongCA["STOCKADE_CA_FILE"] = otherCert
        let wrong = try ServerHarness.exec(ServerHarness.stockade, ["run", "--", "/bin/true"], environment: wrongCA)
        #expect(wrong.status == 125 && wrong.stderr.contains("TLS"), "\(wrong.stderr)")
        var clear = env
        clear["STOCKADE_HOST"] = "http://127.0.0.1:\(port)"
        let plain = try ServerHarness.exec(ServerHarness.stockade, ["run", "--", "/bin/true"], environment: clear)
        #expect(plain.status == 125, "\(plain)")
        var badFile = env
        badFile["STOCKADE_CA_FILE"] = server.directory + "/no-such.pem"
        let missing = try ServerHarness.exec(ServerHarness.stockade, ["run", "--", "/bin/true"], environment: badFile)
        #expect(missing.status == 125 && missing.stderr.contains("STOCKADE_CA_FILE"), "\(missing.stderr)")
        // Only the first run ran: every refused one left no run behind.
        let runs = try server.stockade(["audit", "runs", "--json"]).stdout.split(separator: "\n").count
        #expect(runs == 1, "runs on the service: \(runs)")
        #expect(server.terminate() == 0)
    }
}
