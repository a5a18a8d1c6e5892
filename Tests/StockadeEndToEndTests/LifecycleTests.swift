import Foundation
import Testing

/// Host uids the workers map to (SandboxSpec.defaultHostIdBase and up).
private let workerUidBase: UInt32 = 1_000_000_000

/// Pids of host processes running as a worker uid (any run's).
func workerProcesses() -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap(Int32.init).filter { pid in
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }),
              let uid = line.split(separator: "\t").dropFirst().first.flatMap({ UInt32($0) }) else { return false }
        return uid >= workerUidBase
    }
}

@Suite("run lifecycle: timeouts, daemons, supervisor death, batch", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct LifecycleTests {
    @Test("sleep 1000 with --timeout 2 is a timeout, exit 124, within a few seconds")
    func timeout() throws {
        let h = try Harness()
        let started = Date()
        let r = try h.run(["--timeout", "2"], ["/bin/sleep", "1000"])
        #expect(r.status == 124)
        let report = try r.report()
        #expect(report.string("outcome") == "timeout")
        #expect(Date().timeIntervalSince(started) < 30, "the deadline must end the run, not the sleep")
    }

    @Test("a double-forked setsid daemon that ignores SIGTERM is gone after the run and counted")
    func daemon() throws {
        let marker = "stockade-daemon-\(UUID().uuidString.prefix(8))"
        let h = try Harness()
        let script = "(trap '' TERM; setsid sh -c 'trap \"\" TERM; exec sleep 997' & ) ; sleep 0.2; echo \(marker)"
        let r = try h.run([], ["/bin/sh", "-c", script])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.string("stdout") == "\(marker)\n")
        #expect((report.int("orphansKilled") ?? 0) >= 1)
        usleep(200_000)
        let survivors = workerProcesses().filter { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("997")
        }
        #expect(survivors.isEmpty, "daemon survived: \(survivors)")
    }

    @Test("SIGKILL to the supervisor leaves no worker process alive")
    func supervisorDeath() throws {
        let h = try Harness()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--timeout", "120", "--", "/bin/sh", "-c", "sleep 995 & sleep 995 & exec sleep 995"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        func sleepers() -> [Int32] {
            workerProcesses().filter { pid in
                ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("995")
            }
        }
        var waited = 0
        while sleepers().count < 3 && waited < 100 {
            usleep(100_000)
            waited += 1
        }
        #expect(sleepers().count == 3, "the worker started")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        waited = 0
        while !sleepers().isEmpty && waited < 50 {
            usleep(100_000)
            waited += 1
        }
        #expect(sleepers().isEmpty, "workers outlived the supervisor: \(sleepers())")
    }

    @Test("stockade batch --parallel 4 with 50 requests returns 50 reports with the right outcomes")
    func batch() throws {
        let h = try Harness()
        var lines: [String] = []
        for i in 0..<50 {
            switch i % 5 {
            case 0: lines.append(#"{"id":"e\#(i)","command":["/bin/sh","-c","exit \#(i % 7)"]}"#)
            case 1: lines.append(#"{"id":"s\#(i)","command":["/bin/sh","-c","kill -TERM $$"]}"#)
            case 2: lines.append(#"{"id":"t\#(i)","command":["/bin/sleep","30"],"timeout":0.5}"#)
            case 3: lines.append(#"{"id":"o\#(i)","command":["/bin/sh","-c","echo $TASK"],"env":{"TASK":"n\#(i)"}}"#)
            default: lines.append(#"{"id":"m\#(i)","command":["/no/such/program"]}"#)
            }
        }
        let input = h.stateDirectory + "/requests.jsonl"
        try (lines.joined(separator: "\n") + "\n").write(toFile: input, atomically: true, encoding: .utf8)
        let r = try h.stockade(["batch", "--parallel", "4", input])
        #expect(r.status == 0, "\(r.stderr)")
        let reports = try r.stdout.split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        #expect(reports.count == 50)
        var seen = Set<String>()
        for report in reports {
            let id = try #require(report.string("id"))
            seen.insert(id)
            let n = Int(id.dropFirst()) ?? -1
            switch id.first {
            case "e":
                #expect(report.string("outcome") == "exited" && report.int("exitCode") == n % 7, "\(id)")
            case "s":
                #expect(report.string("outcome") == "signaled" && report.int("signal") == 15, "\(id)")
            case "t":
                #expect(report.string("outcome") == "timeout", "\(id)")
            case "o":
                #expect(report.string("stdout") == "n\(n)\n", "\(id)")
            default:
                #expect(report.string("outcome") == "setup-failed", "\(id)")
            }
        }
        #expect(seen.count == 50)
    }

    @Test("a malformed batch line gets a setup-failed report naming the key, and the others still run")
    func batchBadLine() throws {
        let h = try Harness()
        let input = #"{"id":"ok","command":["/bin/true"]}"# + "\n" + #"{"id":"bad","command":["/bin/true"],"memroy":"1m"}"# + "\n"
        let r = try h.stockade(["batch", "-"], stdin: input)
        #expect(r.status == 1)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        let bad = try #require(lines.first { $0.contains("\"id\":\"bad\"") })
        #expect(bad.contains("memroy") && bad.contains("setup-failed"))
        #expect(lines.contains { $0.contains("\"id\":\"ok\"") && $0.contains("\"exited\"") })
    }

    @Test("gc removes finished run directories past the age, keeps younger ones and never a running one")
    func gc() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let finished = try #require(try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "echo x > y"]).report().string("runId"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--timeout", "20", "--", "/bin/sleep", "10"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        let runs = h.stateDirectory + "/runs"
        var running: String?
        for _ in 0..<100 where running == nil {
            usleep(100_000)
            running = ((try? FileManager.default.contentsOfDirectory(atPath: runs)) ?? []).first { $0 != finished && !$0.hasPrefix(".") }
        }
        let live = try #require(running, "the second run started")
        let young = try h.stockade(["gc", "--older-than", "1h"])
        #expect(young.status == 0 && young.stdout.isEmpty)
        let old = try h.stockade(["gc", "--older-than", "0s"])
        #expect(old.status == 0, "\(old.stderr)")
        #expect(old.stdout == finished + "\n")
        #expect(!FileManager.default.fileExists(atPath: runs + "/" + finished))
        #expect(FileManager.default.fileExists(atPath: runs + "/" + live), "a running run's directory was removed")
        #expect(try h.stockade(["gc", "--older-than", "soon"]).status == 2)
    }
}
