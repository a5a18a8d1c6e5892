import Foundation
import Testing

@Suite("stockade run, end to end", .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct SpawnTests {
    @Test("a command's output, exit code and outcome are reported")
    func echo() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "echo hi"])
        #expect(r.status == 0)
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.int("exitCode") == 0)
        #expect(report.string("stdout") == "hi\n")
        for key in ["runId", "profile", "outcome", "exitCode", "signal", "durationMs", "cpuTimeMs", "memoryPeakBytes",
                    "violations", "stdout", "stderr", "stdoutTruncated", "stderrTruncated", "result", "review", "setupError"] {
            #expect(report.keys.contains(key), "report key \(key)")
        }
    }

    @Test("the worker's exit code is stockade's, and exit 137 is an exit, not an OOM")
    func exitCodes() throws {
        let h = try Harness()
        for code in [0, 3, 137] {
            let r = try h.run([], ["/bin/sh", "-c", "exit \(code)"])
            #expect(r.status == Int32(code))
            #expect(try r.report().string("outcome") == "exited")
        }
    }

    @Test("a worker killed by a signal is signaled, 128 + signal; raising SIGSYS itself is not a seccomp kill")
    func signals() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "kill -TERM $$"])
        #expect(r.status == 128 + 15)
        #expect(try r.report().string("outcome") == "signaled")
        let sys = try h.run([], ["/bin/sh", "-c", "kill -SYS $$"])
        #expect(sys.status == 128 + 31)
        #expect(try sys.report().string("outcome") == "signaled")
    }

    @Test("a missing command exits 127 and an unexecutable one 126, as setup failures")
    func missingCommand() throws {
        let h = try Harness()
        let missing = try h.run([], ["/no/such/program"])
        #expect(missing.status == 127)
        #expect(try missing.report().string("outcome") == "setup-failed")
        let notExec = try h.run([], ["/etc/passwd"])
        #expect(notExec.status == 126)
    }

    @Test("a setup that cannot be built fails closed: setup-failed, exit 125, a message naming what is missing")
    func brokenSetup() throws {
        let h = try Harness()
        let r = try h.run(["--volume", "/no/such/source:/data"], ["/bin/true"])
        #expect(r.status == 125)
        let report = try r.report()
        #expect(report.string("outcome") == "setup-failed")
        let setup = try #require(report["setupError"] as? [String: Any])
        #expect((setup["message"] as? String)?.contains("/no/such/source") == true)
        #expect(setup["stage"] as? String == "mounts")
    }

    @Test("bad usage exits 125 and runs nothing")
    func badUsage() throws {
        let h = try Harness()
        #expect(try h.stockade(["run", "--memory", "lots", "--", "/bin/true"]).status == 125)
        #expect(try h.stockade(["run"]).status == 125)
        #expect(try h.stockade(["run", "--profile", "no-such-profile", "--", "/bin/true"]).status == 125)
    }

    @Test("the worker is an unprivileged user with no capabilities, no_new_privs and a seccomp filter")
    func privileges() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "id -u; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; cat /proc/self/uid_map /proc/self/gid_map"])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.hasPrefix("1000\n"))
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(out.contains("\(set):\t0000000000000000"), "\(set) empty")
        }
        #expect(out.contains("NoNewPrivs:\t1"))
        #expect(out.contains("Seccomp:\t2"))
        // uid_map/gid_map: "inside host count"; host 0 is never mapped.
        for line in out.split(separator: "\n") where line.split(separator: " ", omittingEmptySubsequences: true).count == 3 {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            #expect(fields[1] != "0", "maps to host id 0: \(line)")
        }
    }

    @Test("host processes are invisible and cannot be signalled")
    func hostPids() throws {
        let h = try Harness()
        let me = getpid()
        // Positive control: the host sees this test process.
        #expect(kill(me, 0) == 0)
        let r = try h.run([], ["/bin/sh", "-c", "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; kill -0 \(me) && echo SIGNALLED"])
        let out = try r.report().string("stdout") ?? ""
        let pids = out.split(separator: " ").compactMap { Int($0) }
        #expect(!pids.isEmpty && pids.allSatisfy { $0 < 100 }, "only the worker's own pids: \(out)")
        #expect(!out.contains("SIGNALLED"))
    }

    @Test("writes to the read-only host view fail and leave the host unchanged")
    func hostViewIsReadOnly() throws {
        let h = try Harness()
        let canary = "stockade-canary-\(UUID().uuidString)"
        let r = try h.run([], ["/bin/sh", "-c", "for d in /usr /usr/bin /etc / /bin /sandbox/request; do touch $d/\(canary) 2>/dev/null && echo WROTE $d; done; echo done"])
        let out = try r.report().string("stdout") ?? ""
        #expect(out == "done\n", "\(out)")
        for d in ["/usr", "/usr/bin", "/etc", "/", "/bin"] {
            #expect(!FileManager.default.fileExists(atPath: "\(d)/\(canary)"))
        }
    }

    @Test("the worker sees only the environment the profile gives it")
    func environment() throws {
        let h = try Harness()
        let r = try h.stockade(["run", "--json", "--env", "TASK=1", "--", "/usr/bin/env"], environment: ["HOST_SECRET": "s3cr3t-host-value"])
        let out = try r.report().string("stdout") ?? ""
        #expect(!out.contains("s3cr3t-host-value"))
        #expect(out.contains("TASK=1"))
        #expect(out.contains("PATH="))
    }

    @Test("the worker cannot read the supervisor's command line, environment or memory through its init")
    func initHidesSupervisor() throws {
        let h = try Harness()
        let needle = "needle-\(UUID().uuidString)"
        // Positive control: the value is on the supervisor's command line, where the host can read it.
        let r = try h.stockade(["run", "--json", "--env", "MARK=\(needle)", "--", "/bin/sh", "-c",
                                "echo $MARK >/dev/null; cat /proc/1/cmdline /proc/1/environ /proc/1/maps 2>&1 | tr '\\0' ' '; " +
                                "od -An -c /proc/1/mem 2>&1 | head -1"],
                               environment: ["HOST_ONLY": needle + "-env"])
        let out = try r.report().string("stdout") ?? ""
        #expect(!out.isEmpty)
        #expect(!out.contains(needle), "init showed the supervisor's argv or environment: \(out)")
        #expect(!out.contains("r-xp"), "init's memory map is readable: \(out)")
    }

    @Test("nested user namespaces, mount and sethostname are refused and recorded as violations")
    func namespaceEscapes() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "unshare -U true && echo UNSHARED; mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED; hostname evil 2>/dev/null && echo RENAMED; hostname"])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(!out.contains("UNSHARED") && !out.contains("MOUNTED") && !out.contains("RENAMED"))
        #expect(out.hasSuffix("stockade\n"))
        let syscalls = report.violationSyscalls
        #expect(syscalls.contains("unshare"))
        #expect(syscalls.contains("mount"))
        #expect(syscalls.contains("sethostname"))
    }

    @Test("the worker cannot connect to a listener on the host's loopback")
    func hostLoopback() throws {
        let listener = try LoopbackListener()
        // Positive control: the same connection from the host succeeds.
        let control = try Harness.exec("/bin/bash", ["-c", "echo x > /dev/tcp/127.0.0.1/\(listener.port) && echo CONNECTED"])
        #expect(control.stdout.contains("CONNECTED"))
        let accepted = listener.acceptedCount()
        let h = try Harness()
        let r = try h.run(["--network", "loopback"], ["/bin/bash", "-c", "echo x > /dev/tcp/127.0.0.1/\(listener.port) && echo CONNECTED"])
        #expect(!(try r.report().string("stdout") ?? "").contains("CONNECTED"))
        #expect(listener.acceptedCount() == accepted)
    }

    @Test("the run directory keeps the report and capped logs")
    func runDirectory() throws {
        let h = try Harness()
        let r = try h.run([], ["/bin/sh", "-c", "echo out; echo err >&2"])
        let id = try #require(try r.report().string("runId"))
        let dir = h.stateDirectory + "/runs/" + id
        #expect(try String(contentsOfFile: dir + "/logs/stdout.log", encoding: .utf8) == "out\n")
        #expect(try String(contentsOfFile: dir + "/logs/stderr.log", encoding: .utf8) == "err\n")
        #expect(FileManager.default.fileExists(atPath: dir + "/report.json"))
    }

    @Test("output beyond the cap is truncated and flagged, and the worker is not blocked")
    func outputCap() throws {
        let h = try Harness()
        let profile = h.stateDirectory + "/small-output.json"
        try #"{"extends": "default", "limits": {"stdoutBytes": 1000}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try h.run(["--profile", profile], ["/bin/sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' a; echo end >&2"])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect((report.string("stdout") ?? "").utf8.count == 1000)
        #expect(report["stdoutTruncated"] as? Bool == true)
        #expect(report.string("stderr") == "end\n")
    }
}

/// A TCP listener on 127.0.0.1 that counts accepted connections.
final class LoopbackListener: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let lock = NSLock()
    private var accepted = 0

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        try #require(bound == 0 && listen(fd, 16) == 0)
        withUnsafeMutablePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
        self.fd = fd
        port = UInt16(bigEndian: addr.sin_port)
        start()
    }

    private func start() {
        let thread = Thread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                lock.lock(); accepted += 1; lock.unlock()
                close(c)
            }
        }
        thread.start()
    }

    func acceptedCount() -> Int {
        usleep(100_000)
        lock.lock(); defer { lock.unlock() }
        return accepted
    }

    deinit { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}
