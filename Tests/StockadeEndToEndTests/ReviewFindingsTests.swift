import Foundation
import Testing

/// Findings of the adversarial review (see the review report): each test states what must hold.
/// Those marked "fails today" document an open finding and pass once it is fixed.
@Suite("adversarial review findings, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ReviewFindingsTests {
    @Test("syscall numbers no table names are counted in one bucket, so a worker walking through them cannot grow the report or the audit")
    func unknownSyscallFlood() throws {
        let h = try Harness()
        // 3000 distinct numbers past the end of the x86_64 table, each denied by notification.
        let r = try h.run(["--memory", "64m", "--pids", "64"], ["/usr/bin/perl", "-e", "syscall(1000 + $_) for 0 .. 2999; print qq(done\\n)"])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.string("stdout") == "done\n")
        let violations = (report["violations"] as? [[String: Any]]) ?? []
        #expect(violations.count == 1, "one bucket, not one entry per number: \(violations.count) entries")
        #expect((violations.first?["count"] as? NSNumber)?.intValue == 3000)
        #expect(violations.first?["syscall"] as? String == "unknown")
    }

    @Test("the workspace's changes are bounded by the profile's workspaceSize, not by the host disk")
    func workspaceChangesAreBounded() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let profile = h.stateDirectory + "/small.json"
        try #"{"extends": "default", "limits": {"workspaceSize": "8m"}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try h.stockade(["run", "--json", "--profile", profile, "--memory", "64m", "--pids", "64", "--workspace", ws, "--",
                                "/bin/sh", "-c", "head -c 16777216 /dev/zero > big && echo wrote-all || echo refused"])
        let report = try r.report()
        #expect(report.string("stdout") == "refused\n", "16 MiB went into an 8 MiB workspace: \(report.string("stdout") ?? "")")
    }

    @Test("a file name the worker chose cannot add a line to `review list`")
    func reviewListLineInjection() throws {
        let h = try Harness()
        let ws = try makeWorkspace()
        let name = "evil\n99\tFAKE\tpending\tpassed\t0 bytes\tX"
        _ = try h.stockade(["run", "--json", "--workspace", ws, "--", "/bin/sh", "-c", "ln -s /etc/passwd \"$(printf '\(name.replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "\t", with: "\\t"))')\""])
        let list = try h.stockade(["review", "list"])
        let lines = list.stdout.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 2, "a header and one diff, one line: \(list.stdout)")
    }
}

@Suite("setup cannot be steered or stalled by what a profile or an earlier run left", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct SetupHardeningTests {
    @Test("a profile denying a call the worker makes before execve fails the run with a setup error instead of hanging",
          arguments: ["prlimit64", "execve"])
    func deniedBeforeExec(call: String) throws {
        let h = try Harness()
        let profile = h.stateDirectory + "/deny.json"
        try #"{"extends":"default","seccomp":{"deny":["\#(call)"]}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let started = Date()
        let r = try h.stockade(["run", "--json", "--profile", profile, "--timeout", "5", "--", "/bin/true"])
        #expect(Date().timeIntervalSince(started) < 40)
        let report = try r.report()
        #expect(report.string("outcome") == "setup-failed", "\(report)")
        #expect(r.status == 125)
        // The stuck worker was killed by the spawn path: that kill is in the trail.
        let runId = try #require(report.string("runId"))
        let kills = try auditEvents(h, ["--run", runId, "--kind", "kill"])
        #expect(kills.contains { ($0["detail"] as? [String: Any])?["reason"] as? String == "sync" }, "\(kills)")
    }

    @Test("the worker cannot reach the supervisor's session keyring even when the profile allows keyctl")
    func sessionKeyring() throws {
        let h = try Harness()
        let marker = "stockade-key-\(UUID().uuidString.prefix(8))"
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/keyctl"), "keyctl (keyutils) is not installed")
        let profile = h.stateDirectory + "/keys.json"
        try #"{"extends":"default","seccomp":{"allow":["keyctl","add_key","request_key"]}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        // In a fresh session keyring: the key is found there on the host (positive control), then the worker looks.
        let script = "keyctl add user \(marker) secretvalue @s >/dev/null && keyctl search @s user \(marker) >/dev/null && echo CONTROL-FOUND; " +
            "'\(Harness.stockade)' run --json --profile '\(profile)' -- /bin/sh -c 'keyctl search @s user \(marker) && echo FOUND; echo end'"
        let r = try Harness.exec("/usr/bin/keyctl", ["session", "-", "/bin/sh", "-c", script], environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.first == "CONTROL-FOUND", "positive control: \(r.stdout) \(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data((lines.last ?? "").utf8)) as? [String: Any])
        let out = report["stdout"] as? String ?? ""
        #expect(out.hasSuffix("end\n") && !out.contains("FOUND"), "\(out)")
    }

    @Test("a symlink planted in a read-write volume cannot steer a later run's mount target outside the root")
    func plantedTarget() throws {
        let h = try Harness()
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-plant-\(UUID().uuidString)").path
        // Outside /tmp: the new root is mounted over /tmp in the child's namespace, which hides the host's.
        let outside = "/var/tmp/stockade-plant-\(UUID().uuidString)-outside"
        try FileManager.default.createDirectory(atPath: base + "/vol/sub", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: base + "/cache", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        // The worker's uid is not the host owner: let it write the read-write volume.
        chmod(base + "/vol", 0o777)
        chmod(base + "/vol/sub", 0o777)
        // The link's target is as open as the host's /var/tmp: only the check on the path stops run 2's
        // init (root in its namespace, not on the host) from making its mount point there.
        chmod(outside, 0o1777)
        defer { for p in [base, outside] { try? FileManager.default.removeItem(atPath: p) } }
        let volumes = ["--volume", "\(base)/vol:/data:rw", "--volume", "\(base)/cache:/data/sub/cache:ro"]
        // Run 1 replaces /data/sub with a link to a host directory it can name (here: one the test made).
        let plant = try h.stockade(["run", "--json", "--volume", "\(base)/vol:/data:rw", "--", "/bin/sh", "-c",
                                    "rm -rf /data/sub && ln -s \(outside) /data/sub && echo planted"])
        #expect(try plant.report().string("stdout") == "planted\n")
        // Run 2 must refuse to build its root through the link, and create nothing outside.
        let r = try h.stockade(["run", "--json"] + volumes + ["--", "/bin/true"])
        #expect(r.status == 125)
        #expect(try r.report().string("outcome") == "setup-failed")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
    }
}

@Suite("per-user kernel counters", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct UserCounterTests {
    @Test("a worker holding every inotify instance it may have does not take them from root on the host")
    func inotifyInstances() throws {
        let h = try Harness()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = ["run", "--json", "--", "/usr/bin/perl", "-e",
                             "my $n = 0; for (1..1000) { last if syscall(294, 0) < 0; $n++ } print \"instances=$n\\n\"; sleep 3"]
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        usleep(1_500_000)
        // While the worker holds them, root on the host can still create one (inotify_init1 = 294).
        let host = try Harness.exec("/usr/bin/perl", ["-e", "my $fd = syscall(294, 0); print $fd >= 0 ? \"ok\" : \"failed: $!\""])
        let report = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(report.contains("instances="), "the worker ran: \(report)")
        #expect(!report.contains("instances=0"), "the worker could create instances: \(report)")
        #expect(host.stdout == "ok", "host root lost its inotify instances to the worker: \(host.stdout)")
    }
}
