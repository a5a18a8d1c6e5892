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

/// Occurrences of `needle` in the readable memory of process `pid` (root reads any process's memory).
func memoryOccurrences(pid: pid_t, of needle: [UInt8]) -> Int {
    guard let maps = try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8) else { return 0 }
    let mem = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
    guard mem >= 0 else { return 0 }
    defer { close(mem) }
    var count = 0
    for line in maps.split(separator: "\n") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2, fields[1].hasPrefix("r"), !line.contains("[vvar"), !line.contains("[vsyscall]") else { continue }
        let bounds = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
        guard bounds.count == 2, bounds[1] > bounds[0], bounds[1] - bounds[0] <= 256 << 20 else { continue }
        var buffer = [UInt8](repeating: 0, count: Int(bounds[1] - bounds[0]))
        let n = buffer.withUnsafeMutableBytes { pread(mem, $0.baseAddress, $0.count, off_t(bounds[0])) }
        guard n > 0 else { continue }
        // memchr + memcmp: a byte loop in a debug build is too slow for a supervisor's whole heap.
        buffer.withUnsafeBytes { raw in
            needle.withUnsafeBytes { pattern in
                let base = raw.baseAddress!
                var offset = 0
                while offset + pattern.count <= n,
                      let hit = memchr(base + offset, Int32(needle[0]), n - offset - pattern.count + 1) {
                    let at = UnsafeRawPointer(hit) - base
                    if memcmp(hit, pattern.baseAddress!, pattern.count) == 0 { count += 1 }
                    offset = at + 1
                }
            }
        }
    }
    return count
}

/// `stockade batch --parallel N` over `lines`, started and left running: its stdout is the pipe returned.
func startBatch(_ h: Harness, _ lines: [String], parallel: Int) throws -> (Process, Pipe) {
    let input = h.stateDirectory + "/requests.jsonl"
    try (lines.joined(separator: "\n") + "\n").write(toFile: input, atomically: true, encoding: .utf8)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Harness.stockade)
    process.arguments = ["batch", "--parallel", String(parallel), input]
    process.environment = ProcessInfo.processInfo.environment.merging(["STOCKADE_STATE_DIR": h.stateDirectory]) { $1 }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    return (process, out)
}

/// The processes whose parent is `parent` and whose name is `name`.
func children(of parent: pid_t, named name: String) -> [pid_t] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry),
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        let comm = stat[stat.index(after: open)..<close]
        let rest = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        // Live processes only: an init that has exited (state Z) until the supervisor reaps it has no memory to scan.
        return comm == name && rest.count > 1 && rest[0] != "Z" && pid_t(rest[1]) == parent ? pid : nil
    }
}

/// `children(of:named:)` once it has `count` entries, or as it is after about three seconds.
func waitForChildren(of parent: pid_t, named name: String, count: Int) -> [pid_t] {
    var found: [pid_t] = []
    for _ in 0..<300 {
        found = children(of: parent, named: name)
        if found.count == count { break }
        usleep(10_000)
    }
    return found
}

@Suite("spawn helpers and inits hold no run's secrets", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct HelperMemoryTests {
    @Test("after runs with a secret, neither the spawn helpers nor a later run's init hold it; the supervisor does")
    func secretsStayInTheSupervisor() throws {
        let h = try Harness()
        let needle = "stockade-needle-\(UUID().uuidString)"
        let dir = h.stateDirectory + "/profiles"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let token = dir + "/token"
        #expect(FileManager.default.createFile(atPath: token, contents: Data(needle.utf8), attributes: [.posixPermissions: 0o600]))
        try #"{"extends": "default", "secrets": [{"env": "API_TOKEN", "file": "\#(token)"}]}"#
            .write(toFile: dir + "/secretive.json", atomically: true, encoding: .utf8)
        var lines = (0..<4).map { #"{"id":"s\#($0)","profile":"\#(dir)/secretive.json","command":["/bin/sh","-c","test -n \"$API_TOKEN\""]}"# }
        lines += (0..<4).map { #"{"id":"l\#($0)","command":["/bin/sleep","60"]}"# }
        let (process, out) = try startBatch(h, lines, parallel: 4)
        defer { process.waitUntilExit() }
        let supervisor = process.processIdentifier
        // Wait until the four sleepers' inits are up and the secret runs' inits are gone (each init
        // lives until its main process has exited and the supervisor has released it).
        var inits: [pid_t] = []
        for _ in 0..<300 {
            inits = children(of: supervisor, named: "stockade-init").filter { pid in
                ((try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? "").isEmpty == false
            }
            if inits.count == 4 && children(of: supervisor, named: "stockade-init").count == 4 { break }
            usleep(10_000)
        }
        if inits.count != 4 { kill(supervisor, SIGKILL) }
        try #require(inits.count == 4, "the four sleeping runs' inits")
        let helpers = children(of: supervisor, named: "stockade-spawn")
        #expect(helpers.count == 4)
        let bytes = Array(needle.utf8)
        for pid in inits + helpers {
            // Positive control: the scan reads this process (a literal of the binary is found).
            #expect(memoryOccurrences(pid: pid, of: Array("stockade-init".utf8)) > 0, "process \(pid) could not be read")
            #expect(memoryOccurrences(pid: pid, of: bytes) == 0, "process \(pid) holds the secret")
        }
        #expect(memoryOccurrences(pid: supervisor, of: bytes) > 0, "positive control: the supervisor loaded the secret")
        // The sleepers have served their purpose: end the batch (its workers die with it).
        kill(supervisor, SIGKILL)
        let reports = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(reports.split(separator: "\n").count == 4, "the four secret runs reported")
        #expect(!reports.contains(needle))
    }
}

@Suite("a spawn helper that dies", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct HelperDeathTests {
    @Test("killed mid-spawn: the run fails naming the helper, its half-made init is killed and reaped, later spawns fail closed")
    func killedMidSpawn() throws {
        let h = try Harness()
        // Denying prlimit64 holds the worker just before execve, so its spawn stays in the helper.
        let profile = h.stateDirectory + "/stall.json"
        try #"{"extends":"default","seccomp":{"deny":["prlimit64"]}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let lines = [#"{"id":"stalled","profile":"\#(profile)","command":["/bin/true"]}"#,
                     #"{"id":"sleeper","command":["/bin/sleep","3"]}"#,
                     #"{"id":"after","command":["/bin/true"]}"#]
        let (process, out) = try startBatch(h, lines, parallel: 2)
        let supervisor = process.processIdentifier
        let inits = waitForChildren(of: supervisor, named: "stockade-init", count: 2)
        #expect(inits.count == 2, "the stalled run's and the sleeper's inits")
        usleep(300_000)
        let helpers = children(of: supervisor, named: "stockade-spawn")
        #expect(helpers.count == 2)
        for pid in helpers { kill(pid, SIGKILL) }
        usleep(500_000)
        // While the sleeper still runs: no init of the supervisor's is left a zombie.
        let zombies = children(of: supervisor, named: "stockade-init").filter { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? "").contains(") Z ")
        }
        #expect(zombies.isEmpty, "zombie inits: \(zombies)")
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        var reports: [String: [String: Any]] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let id = object["id"] as? String {
                reports[id] = object
            }
        }
        let stalled = try #require(reports["stalled"])
        #expect(stalled.string("outcome") == "setup-failed")
        let stalledError = stalled["setupError"] as? [String: Any]
        #expect(stalledError?["stage"] as? String == "spawn-helper")
        let stalledMessage = (stalledError?["message"] as? String) ?? ""
        #expect(stalledMessage.contains("killed and reaped"), "\(stalled)")
        let stalledId = try #require(stalled.string("runId"))
        let kills = try auditEvents(h, ["--run", stalledId, "--kind", "kill"])
        #expect(kills.contains { ($0["detail"] as? [String: Any])?["reason"] as? String == "spawn-helper" }, "\(kills)")
        #expect(reports["sleeper"]?.string("outcome") == "exited", "a run already spawned is not affected")
        let after = try #require(reports["after"])
        #expect(after.string("outcome") == "setup-failed")
        let afterMessage = ((after["setupError"] as? [String: Any])?["message"] as? String) ?? ""
        #expect(afterMessage.contains("no spawn helper is left"), "\(after)")
    }
}
