import Foundation
import StockadePolicy
import StockadeSupervisor
@testable import StockadeVerify
import Testing

/// One probe the default profile must block, and how the block must show.
struct ProbeCase: Sendable, CustomTestStringConvertible {
    enum Expect: Sendable {
        /// The probe exits 0 (refused); the run's outcome is `exited`.
        case refused
        /// The filter kills the worker: outcome `seccomp`, exit 159.
        case seccompKill
    }

    var probe: String
    var args: [String] = []
    var expect: Expect = .refused
    /// The syscall the report's `violations` must name, when the filter refuses it by notification.
    var violation: String?

    init(_ probe: String, _ args: [String] = [], _ expect: Expect = .refused, violation: String? = nil) {
        self.probe = probe
        self.args = args
        self.expect = expect
        self.violation = violation
    }

    var testDescription: String { ([probe] + args).joined(separator: " ") }

    static let blockedByDefault: [ProbeCase] = [
        // 1 namespaces
        ProbeCase("host-pids"),
        ProbeCase("userns", violation: "unshare"),
        ProbeCase("clone-newuser", violation: "clone"),
        ProbeCase("clone3-newuser"), // ENOSYS straight from the filter, so glibc falls back: no notification
        ProbeCase("setns", violation: "setns"),
        ProbeCase("mount-tmpfs", violation: "mount"),
        ProbeCase("mount-proc", violation: "mount"),
        ProbeCase("mount-sysfs", violation: "mount"),
        ProbeCase("sethostname", violation: "sethostname"),
        ProbeCase("proc-sys-write"),
        ProbeCase("chroot", violation: "chroot"),
        ProbeCase("pivot-root", violation: "pivot_root"),
        // 2 seccomp
        ProbeCase("keyctl-int80", [], .seccompKill, violation: "keyctl"),
        ProbeCase("x32-getpid", [], .seccompKill),
        ProbeCase("add-key", violation: "add_key"),
        ProbeCase("keyctl", violation: "keyctl"),
        ProbeCase("io-uring-setup", violation: "io_uring_setup"),
        ProbeCase("io-setup", violation: "io_setup"),
        ProbeCase("userfaultfd", violation: "userfaultfd"),
        ProbeCase("perf-event-open", violation: "perf_event_open"),
        ProbeCase("bpf", violation: "bpf"),
        ProbeCase("ptrace", violation: "ptrace"),
        ProbeCase("process-vm-readv", violation: "process_vm_readv"),
        ProbeCase("open-by-handle-at", violation: "open_by_handle_at"),
        ProbeCase("init-module", violation: "init_module"),
        ProbeCase("clock-settime", violation: "clock_settime"),
        ProbeCase("personality", violation: "personality"),
        ProbeCase("socket-vsock", violation: "socket"),
        ProbeCase("socket-packet", violation: "socket"),
        ProbeCase("socket-alg", violation: "socket"),
        ProbeCase("netlink-audit", violation: "socket"),
        ProbeCase("seccomp-mode"),
        // 3 capabilities
        ProbeCase("caps"),
        ProbeCase("no-new-privs"),
        ProbeCase("setuid0"),
        ProbeCase("capset"),
        ProbeCase("uidmap"),
        ProbeCase("mknod-dev"),
        // 4 resources that hold without cgroups (tmpfs size, rlimits)
        ProbeCase("tmpfs-fill", ["80"]),
        ProbeCase("fd-bomb", ["300"]),
        ProbeCase("rt-priority"),
        ProbeCase("core-dump"),
        // 5 filesystem
        ProbeCase("write-host-view"),
        // 6 network
        ProbeCase("raw-socket"),
        // 7 descriptors and terminals
        ProbeCase("tiocsti", violation: "ioctl"),
        ProbeCase("cwd-outside", violation: "chroot"),
    ] + classicEscapes.prefix(4)

    /// The escapes that broke real container runtimes (issue 22), each refused under every built-in
    /// profile: the first four have probes of their own, the rest are controls that already were.
    static let classicEscapes: [ProbeCase] = [
        ProbeCase("cgroup-release-agent", violation: "mount"),  // CVE-2022-0492
        ProbeCase("helper-write", ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/sys/kernel/uevent_helper"]),
        ProbeCase("exe-overwrite", ["/proc/self/exe", "/proc/1/exe"]),  // CVE-2019-5736
        ProbeCase("ptrace-init", violation: "ptrace"),  // CVE-2016-9962
        ProbeCase("keyctl", violation: "keyctl"),
        ProbeCase("mount-proc", violation: "mount"),  // unmasking /proc
        ProbeCase("open-by-handle-at", violation: "open_by_handle_at"),  // shocker
        ProbeCase("cwd-outside", violation: "chroot"),  // CVE-2024-21626
        ProbeCase("userfaultfd", violation: "userfaultfd"),
        ProbeCase("io-uring-setup", violation: "io_uring_setup"),
    ]
}

@Suite("enforcement probes, sandboxed and as positive controls",
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(3)))
struct ProbeTests {
    /// Skips the rest of the current case when the host itself cannot do the
    /// forbidden thing, recording why as a known issue (the console shows its
    /// comment; a plain `Test.cancel` shows nothing in this toolchain's output).
    func requirePositiveControl(_ probe: String, _ args: [String] = []) throws {
        let control = try Harness.probeUnsandboxed(probe, args)
        if control.status != 77 {
            let reason = "not applicable on this host: the positive control did not succeed (exit \(control.status)): \(control.stdout)\(control.stderr)"
            withKnownIssue(Comment(rawValue: reason)) { Issue.record(Comment(rawValue: reason)) }
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    @Test("each probe succeeds unsandboxed and is refused in the default sandbox, the refusal recorded",
          arguments: ProbeCase.blockedByDefault)
    func blocked(_ c: ProbeCase) throws {
        let h = try Harness()
        let r = try h.probe(c.probe, c.args)
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        switch c.expect {
        case .refused:
            #expect(report.string("outcome") == "exited", "\(out) \(report)")
            #expect(r.status == 0, "the probe did the forbidden thing or could not tell: \(out)")
            #expect(out.hasPrefix("\(c.probe): "), "one line saying what it observed: \(out)")
        case .seccompKill:
            #expect(report.string("outcome") == "seccomp", "\(out) \(report)")
            #expect(r.status == 159)
        }
        if let syscall = c.violation {
            #expect(report.violationSyscalls.contains(syscall), "violations name \(syscall): \(report["violations"] ?? "none")")
        }
        try requirePositiveControl(c.probe, c.args)
    }

    @Test("each classic escape is refused under the strict profile too, and recorded", arguments: ProbeCase.classicEscapes)
    func classicEscapeUnderStrict(_ c: ProbeCase) throws {
        let r = try Harness().probe(c.probe, c.args, options: ["--profile", "strict"])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        // strict kills at a violation: then the kill must be at the escape's own call.
        if let syscall = c.violation {
            #expect(report.violationSyscalls == [syscall], "only \(syscall), the escape itself: \(report["violations"] ?? "none")")
            #expect(report.string("outcome") == "seccomp" && r.status == 159, "\(out) \(report)")
        } else {
            #expect(report.string("outcome") == "exited" && r.status == 0, "the probe did the forbidden thing or could not tell: \(out) \(report)")
        }
        try requirePositiveControl(c.probe, c.args)
    }

    @Test("the classic escapes' positive controls leave the host as it was: no mount left, core_pattern unchanged")
    func classicEscapesAreHarmless() throws {
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let pattern = try String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8)
        var outputs: [String] = []
        for c in ProbeCase.classicEscapes { outputs.append(try Harness.probeUnsandboxed(c.probe, c.args).stdout) }
        #expect(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) == mounts)
        #expect(try String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8) == pattern)
        // The check compares something: the release_agent probe did mount cgroupfs (in a mount namespace of its own).
        #expect(outputs[0].contains("mounted cgroup"), "\(outputs[0])")
    }

    @Test("only descriptors 0, 1, 2 reach the worker, even when the supervisor inherited more")
    func descriptors() throws {
        // Positive control: a descriptor inherited unsandboxed is seen.
        let control = try Harness.exec("/bin/sh", ["-c", "exec 3</ 4</etc; exec \"$0\" fds", Harness.probe])
        #expect(control.status == 77, "\(control.stdout)")
        #expect(control.stdout.contains("3->/"))
        // The supervisor itself holds inheritable descriptors 3 and 4 to host directories.
        let h = try Harness()
        let run = "exec 3</ 4</etc; exec \"$0\" run --json --volume \"$1:/probe/stockade-probe:ro\" -- /probe/stockade-probe fds"
        let r = try Harness.exec("/bin/sh", ["-c", run, Harness.stockade, Harness.probe],
                                 environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
        let out = try r.report().string("stdout") ?? ""
        #expect(r.status == 0, "\(out)")
        #expect(out == "fds: only 0, 1, 2 open\n")
    }

    @Test("uid_map never maps host uid 0, under every built-in profile", arguments: ["default", "strict"])
    func uidMap(_ profile: String) throws {
        #expect(try Harness.probeUnsandboxed("uidmap").status == 77, "positive control: the host's map covers uid 0")
        let r = try Harness().probe("uidmap", options: ["--profile", profile])
        let out = try r.report().string("stdout") ?? ""
        #expect(r.status == 0, "\(out)")
        #expect(out.contains("host uid 0 not mapped"))
    }

    @Test("the host's loopback, abstract and path Unix listeners are unreachable, also with network loopback",
          arguments: ["none", "loopback"])
    func hostListeners(_ network: String) throws {
        let tcp = try LoopbackListener()
        let abstractName = "stockade-test-\(UUID().uuidString)"
        let abstract = try UnixListener(abstract: abstractName)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-sock-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try UnixListener(path: dir.path + "/s")
        let cases: [(String, String)] = [("host-loopback", String(tcp.port)), ("abstract-unix", abstractName), ("unix-path", dir.path + "/s")]
        let h = try Harness()
        for (probe, arg) in cases {
            let control = try Harness.probeUnsandboxed(probe, [arg])
            #expect(control.status == 77, "positive control \(probe): \(control.stdout)")
            let r = try h.probe(probe, [arg], options: ["--network", network])
            let out = try r.report().string("stdout") ?? ""
            #expect(r.status == 0, "\(probe) with network \(network): \(out)")
        }
        _ = (abstract, path)
    }

    @Test("a SIGSYS from the worker's own seccomp filter is signaled and exit 137 is exited: status comes from the kernel, not the worker")
    func statusSpoofing() throws {
        let h = try Harness()
        let sigsys = try h.probe("spoof-sigsys").report()
        #expect(sigsys.string("outcome") == "signaled")
        #expect(sigsys.int("signal") == 31)
        #expect(sigsys.violationSyscalls.isEmpty)
        let oom = try h.probe("spoof-oom")
        #expect(oom.status == 137)
        #expect(try oom.report().string("outcome") == "exited")
    }
}

/// A listening Unix socket (abstract or at a path); connections complete into the backlog.
final class UnixListener: @unchecked Sendable {
    let fd: Int32

    convenience init(abstract name: String) throws { try self.init(name: name, abstract: true) }
    convenience init(path: String) throws { try self.init(name: path, abstract: false) }

    private init(name: String, abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i + (abstract ? 1 : 0)] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 1 : 0))
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        try #require(bound == 0 && listen(fd, 16) == 0, "listen on \(abstract ? "@" : "")\(name)")
    }

    deinit { close(fd) }
}

@Suite("stockade verify, end to end",
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(3)))
struct VerifyTests {
    func verify(_ args: [String], harness: Harness? = nil) throws -> (Harness.Result, [String: Any], [[String: Any]]) {
        let h = try harness ?? Harness()
        let r = try h.stockade(["verify", "--json"] + args)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "JSON: \(r.stdout) \(r.stderr)")
        let controls = try #require(object["controls"] as? [[String: Any]])
        return (r, object, controls)
    }

    @Test("the default and strict profiles: every control is enforced (or the host cannot do it either), exit 0, and the audit keeps the verdicts",
          arguments: ["default", "strict"])
    func shippedProfiles(profile: String) throws {
        let h = try Harness()
        let (r, object, controls) = try verify(["--profile", profile], harness: h)
        #expect(r.status == 0, "\(r.stdout.prefix(3000))")
        #expect(object["passed"] as? Bool == true)
        for c in controls {
            let verdict = c["verdict"] as? String
            #expect(verdict == "enforced" || (verdict == "inconclusive" && c["fails"] as? Bool == false), "\(c)")
        }
        let events = try h.stockade(["audit", "events", "--kind", "verification", "--json"])
        #expect(events.stdout.contains("\"profile\":\"\(profile)\"") && events.stdout.contains("seccomp.keyrings"), "\(events.stdout.prefix(500))")
    }

    @Test("the default profile: every control that does not need cgroups is enforced or legitimately not applicable; exit 0 exactly when none fails")
    func defaultProfile() throws {
        let (r, object, controls) = try verify([])
        for key in ["profile", "kernel", "cgroupMode", "controls", "enforced", "notEnforced", "notApplicable", "inconclusive", "passed"] {
            #expect(object.keys.contains(key), "key \(key)")
        }
        #expect(object["profile"] as? String == "default")
        #expect(controls.map { $0["id"] as? String ?? "" } == ControlCatalog.all.map(\.id))
        for c in controls {
            let id = c["id"] as? String ?? "?"
            for key in ["id", "threatClass", "title", "verdict", "evidence"] { #expect(c.keys.contains(key), "\(id): \(key)") }
            let verdict = c["verdict"] as? String
            #expect(verdict != "not-applicable", "the default profile grants nothing on purpose: \(id) \(c["evidence"] ?? "")")
            if c["needsCgroups"] as? Bool != true {
                #expect(c["fails"] as? Bool == false, "\(id): \(verdict ?? "?"): \(c["evidence"] ?? "")")
                #expect(verdict == "enforced" || verdict == "inconclusive", "\(id): \(verdict ?? "?")")
            }
            if verdict == "inconclusive" && c["fails"] as? Bool == false {
                let positive = c["positiveControl"] as? [String: Any]
                #expect(positive?["exitCode"] as? Int != 77, "inconclusive only when the host cannot do it: \(id)")
            }
        }
        // The controls that must hold on any kernel this project supports.
        let verdicts = Dictionary(uniqueKeysWithValues: controls.map { ($0["id"] as? String ?? "", $0["verdict"] as? String ?? "") })
        for id in ["seccomp.keyrings", "seccomp.foreign-arch-i386", "namespaces.userns-unshare", "capabilities.uid-map",
                   "descriptors.inherited", "network.host-loopback", "supervisor.sigsys-spoof"] {
            #expect(verdicts[id] == "enforced", "\(id)")
        }
        let anyFails = controls.contains { $0["fails"] as? Bool == true }
        #expect(r.status == (anyFails ? 1 : 0))
        #expect(object["passed"] as? Bool == !anyFails)
    }

    @Test("a weakened profile never shows the keyring control as enforced")
    func weakenedProfile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-weak-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let profile = dir.appendingPathComponent("weak.json").path
        try #"{"extends":"default","seccomp":{"allow":["keyctl","add_key"]},"network":{"mode":"loopback"}}"#
            .write(toFile: profile, atomically: true, encoding: .utf8)
        let (_, _, controls) = try verify(["--profile", profile])
        let keyrings = try #require(controls.first { $0["id"] as? String == "seccomp.keyrings" })
        let verdict = keyrings["verdict"] as? String
        #expect(verdict == "not-enforced" || verdict == "not-applicable", "\(keyrings)")
        // Loopback for the worker is its own: the host's listener stays unreachable.
        let loopback = try #require(controls.first { $0["id"] as? String == "network.host-loopback" })
        #expect(loopback["verdict"] as? String == "enforced", "\(loopback)")
    }

    @Test("without --json, a table names every control and its verdict, uncoloured into a pipe")
    func table() throws {
        let h = try Harness()
        let r = try h.stockade(["verify"])
        for control in ControlCatalog.all {
            #expect(r.stdout.contains(control.id), "\(control.id)")
        }
        #expect(r.stdout.contains("enforced"))
        #expect(!r.stdout.contains("\u{1B}"), "no escape sequences into a pipe")
    }

    @Test("on a terminal the verdicts are coloured; with --json or NO_COLOR they are not",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script"), "needs script(1) for a pseudo-terminal"))
    func colouredOnATerminal() throws {
        let h = try Harness()
        func onTerminal(_ args: String, noColor: Bool = false) throws -> String {
            // script(1) gives stockade a pseudo-terminal as stdout; its own stdout is our pipe.
            // `swift test` itself sets NO_COLOR for the tests it runs: only the last case keeps one.
            let r = try Harness.exec("/usr/bin/env", ["-u", "NO_COLOR"] + (noColor ? ["NO_COLOR=1"] : [])
                                         + ["/usr/bin/script", "-qec", "\(Harness.stockade) \(args)", "/dev/null"],
                                     environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
            return r.stdout
        }
        let table = try onTerminal("verify")
        #expect(table.contains("\u{1B}[32menforced\u{1B}[0m"), "\(table.prefix(600))")
        let json = try onTerminal("verify --json")
        #expect(json.contains("\"verdict\":\"enforced\"") && !json.contains("\u{1B}["), "\(json.prefix(300))")
        let noColor = try onTerminal("verify", noColor: true)
        #expect(noColor.contains("enforced") && !noColor.contains("\u{1B}["), "\(noColor.prefix(300))")
    }

    @Test("verify leaves no run directories behind; the audit keeps one verification naming its probe runs, and their own events")
    func cleansUp() throws {
        let h = try Harness()
        let (_, object, controls) = try verify([], harness: h)
        let runs = try #require(object["runs"] as? [String])
        #expect(runs.count >= ControlCatalog.all.count)
        for c in controls {
            let sandboxed = c["sandboxed"] as? [String: Any]
            #expect((sandboxed?["runId"] as? String).map(runs.contains) == true, "\(c["id"] ?? "?")")
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: h.stateDirectory + "/runs")
        #expect(left.isEmpty, "left behind: \(left.prefix(5))")
        let verifications = try h.stockade(["audit", "events", "--kind", "verification", "--json"])
        let lines = verifications.stdout.split(separator: "\n")
        #expect(lines.count == 1, "\(verifications.stdout.prefix(300))")
        #expect(verifications.stdout.contains(runs[0]))
        // The probe runs really happened: their own records stay (the filter's violation among them).
        let keyrings = try #require(controls.first { $0["id"] as? String == "seccomp.keyrings" })
        let keyringRun = try #require((keyrings["sandboxed"] as? [String: Any])?["runId"] as? String)
        let events = try h.stockade(["audit", "events", "--run", keyringRun, "--json"])
        #expect(events.stdout.contains("run.created") && events.stdout.contains("add_key"), "\(events.stdout.prefix(600))")
        #expect(try h.stockade(["audit", "verify"]).status == 0)
    }

    @Test("with a pids limit the memory limit reaches first, the fork bomb's end is no evidence for the pids limit")
    func pidsLimitBehindTheMemoryLimit() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-pids-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let profile = dir.appendingPathComponent("many-pids.json").path
        try #"{"extends":"default","limits":{"pids":4096,"memory":"64m"}}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let (r, _, controls) = try verify(["--profile", profile])
        let pids = try #require(controls.first { $0["id"] as? String == "resources.pids" })
        let evidence = pids["evidence"] as? String ?? ""
        #expect(pids["verdict"] as? String != "enforced", "\(evidence)")
        #expect(pids["fails"] as? Bool == true)
        #expect(!evidence.contains("pids limit refused"), "\(evidence)")
        #expect(evidence.contains("not the pids limit"), "\(evidence)")
        #expect(r.status == 1, "an unproven applicable control fails the verification")
        // Positive control in the same run: the memory limit itself is proven by its own OOM kill.
        let memory = try #require(controls.first { $0["id"] as? String == "resources.memory" })
        #expect(memory["verdict"] as? String == "enforced", "\(memory)")
        #expect((memory["evidence"] as? String ?? "").contains("memory limit OOM-killed"))
    }

    @Test("under the default profile the pids and memory limits are each enforced by their own mechanism, and x32 by the filter")
    func ownMechanisms() throws {
        let (_, _, controls) = try verify([])
        func evidence(_ id: String) throws -> (String?, String) {
            let c = try #require(controls.first { $0["id"] as? String == id })
            return (c["verdict"] as? String, c["evidence"] as? String ?? "")
        }
        let pids = try evidence("resources.pids")
        #expect(pids.0 == "enforced" && pids.1.contains("pids limit refused a fork"), "\(pids)")
        let memory = try evidence("resources.memory")
        #expect(memory.0 == "enforced" && memory.1.contains("memory limit OOM-killed"), "\(memory)")
        let x32 = try evidence("seccomp.foreign-arch-x32")
        #expect(x32.0 == "enforced" && x32.1.contains("filter killed the worker at x32/"), "\(x32)")
        let keys = try evidence("seccomp.keyrings")
        #expect(keys.0 == "enforced" && keys.1.contains("filter refused add_key"), "\(keys)")
    }
}

/// `stockade verify`'s judgement, from the two observations alone (no privileges needed).
@Suite("verification verdicts")
struct VerdictTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var control: String
        var profile: String
        var positive: ProbeObservation
        var sandboxed: ProbeObservation
        var verdict: Verdict
        var fails: Bool
        var testDescription: String { name }
    }

    static func exited(_ code: Int32, _ out: String = "") -> ProbeObservation {
        ProbeObservation(outcome: "exited", exitCode: code, signal: nil, output: out)
    }

    static func killed(at call: String) -> ProbeObservation {
        ProbeObservation(outcome: "seccomp", exitCode: nil, signal: 9, output: "", violations: [call], seccompKill: call)
    }

    static func refused(_ out: String = "", recorded violations: [String]) -> ProbeObservation {
        ProbeObservation(outcome: "exited", exitCode: 0, signal: nil, output: out, violations: violations)
    }

    static let seccompKilled = killed(at: "i386/keyctl")
    static let oomKilled = ProbeObservation(outcome: "oom", exitCode: nil, signal: 9, output: "", violations: ["memory"])
    /// SIGKILLed after an OOM kill in its cgroup, the kernel's log naming no victim among the run's processes.
    static let killedAfterOOM = ProbeObservation(outcome: "signaled", exitCode: nil, signal: 9, output: "", violations: ["memory"])

    static let cases: [Case] = [
        Case(name: "refused in the sandbox with the filter's record, worked on the host: enforced", control: "seccomp.keyrings",
             profile: "default", positive: exited(77), sandboxed: refused(recorded: ["x86_64/add_key"]), verdict: .enforced, fails: false),
        Case(name: "refused in the sandbox but never seen by the filter (something else refused it): not enforced",
             control: "seccomp.keyrings", profile: "default", positive: exited(77), sandboxed: exited(0, "add_key(user): errno 13 (EACCES)"),
             verdict: .notEnforced, fails: true),
        Case(name: "the filter recorded another call than the control's: not enforced", control: "seccomp.keyrings", profile: "default",
             positive: exited(77), sandboxed: refused(recorded: ["x86_64/bpf"]), verdict: .notEnforced, fails: true),
        Case(name: "worked in the sandbox: not enforced", control: "seccomp.keyrings", profile: "default",
             positive: exited(77), sandboxed: exited(77), verdict: .notEnforced, fails: true),
        Case(name: "granted by the profile's seccomp allow list: not applicable", control: "seccomp.keyrings", profile: "allow-keys",
             positive: exited(77), sandboxed: exited(77), verdict: .notApplicable, fails: false),
        Case(name: "the host cannot do it either: inconclusive, not a failure", control: "seccomp.modules", profile: "default",
             positive: exited(2), sandboxed: exited(0), verdict: .inconclusive, fails: false),
        Case(name: "the sandboxed probe could not tell: inconclusive and a failure", control: "seccomp.bpf", profile: "default",
             positive: exited(77), sandboxed: exited(2), verdict: .inconclusive, fails: true),
        Case(name: "a foreign architecture must kill: a refusal is not enough", control: "seccomp.foreign-arch-i386", profile: "default",
             positive: exited(77), sandboxed: exited(0), verdict: .notEnforced, fails: true),
        Case(name: "a foreign architecture killed by the filter: enforced", control: "seccomp.foreign-arch-i386", profile: "default",
             positive: exited(77), sandboxed: seccompKilled, verdict: .enforced, fails: false),
        Case(name: "a kill-on-violation profile ends the control's call with outcome seccomp: enforced", control: "seccomp.bpf", profile: "default",
             positive: exited(77), sandboxed: killed(at: "x86_64/bpf"), verdict: .enforced, fails: false),
        Case(name: "a seccomp kill at another call than the control's is no evidence for it: inconclusive and a failure",
             control: "seccomp.bpf", profile: "default", positive: exited(77), sandboxed: killed(at: "x86_64/mount"),
             verdict: .inconclusive, fails: true),
        Case(name: "a probe-observed control killed at its own forbidden call: enforced", control: "capabilities.mknod", profile: "default",
             positive: exited(77), sandboxed: killed(at: "x86_64/mknodat"), verdict: .enforced, fails: false),
        Case(name: "a probe-observed control killed at an unrelated call: inconclusive and a failure", control: "capabilities.empty-sets",
             profile: "default", positive: exited(77), sandboxed: killed(at: "x86_64/ioctl"), verdict: .inconclusive, fails: true),
        Case(name: "x32 killed by the filter's x32 rule: enforced", control: "seccomp.foreign-arch-x32", profile: "default",
             positive: exited(77), sandboxed: killed(at: "x32/getpid"), verdict: .enforced, fails: false),
        Case(name: "x32 killed by the filter on a kernel without the x32 ABI (positive control ENOSYS): the filter's record is the evidence, enforced",
             control: "seccomp.foreign-arch-x32", profile: "default",
             positive: exited(2, "x32-getpid: x32 getpid: ENOSYS (x32 ABI disabled in this kernel): cannot tell"),
             sandboxed: killed(at: "x32/getpid"), verdict: .enforced, fails: false),
        Case(name: "an x32 probe killed at an i386 call is no evidence for the x32 rule", control: "seccomp.foreign-arch-x32", profile: "default",
             positive: exited(77), sandboxed: seccompKilled, verdict: .inconclusive, fails: true),
        Case(name: "clone3 answered ENOSYS by the filter's own rule (unrecorded by design): enforced", control: "namespaces.userns-clone3",
             profile: "default", positive: exited(77), sandboxed: exited(0, "clone3-newuser: clone3(CLONE_NEWUSER): errno 38 (ENOSYS)"),
             verdict: .enforced, fails: false),
        Case(name: "a fork bomb the pids limit stopped (the pids counter moved): enforced", control: "resources.pids", profile: "default",
             positive: exited(77), sandboxed: refused("fork-bomb: forked 61 of 80, then errno 11 (EAGAIN)", recorded: ["pids"]),
             verdict: .enforced, fails: false),
        Case(name: "a fork bomb the memory limit stopped is no evidence for the pids limit: inconclusive and a failure",
             control: "resources.pids", profile: "default", positive: exited(77), sandboxed: oomKilled, verdict: .inconclusive, fails: true),
        Case(name: "a fork bomb SIGKILLed after an OOM kill its victim unnamed is no evidence for the pids limit", control: "resources.pids",
             profile: "default", positive: exited(77), sandboxed: killedAfterOOM, verdict: .inconclusive, fails: true),
        Case(name: "a memory bomb SIGKILLed after an OOM kill in its cgroup, its victim unnamed by the kernel's log, is contained",
             control: "resources.memory", profile: "default", positive: exited(77), sandboxed: killedAfterOOM, verdict: .enforced, fails: false),
        Case(name: "a fork bomb SIGKILLed after an OOM kill whose pids counter moved too: the pids limit acted, enforced",
             control: "resources.pids", profile: "default", positive: exited(77),
             sandboxed: ProbeObservation(outcome: "signaled", exitCode: nil, signal: 9, output: "", violations: ["pids", "memory"]),
             verdict: .enforced, fails: false),
        Case(name: "a SIGKILL with no OOM kill counted is no evidence for the memory limit", control: "resources.memory", profile: "default",
             positive: exited(77), sandboxed: ProbeObservation(outcome: "signaled", exitCode: nil, signal: 9, output: ""),
             verdict: .inconclusive, fails: true),
        Case(name: "a fork refused without the pids counter moving (ENOMEM) is no evidence for the pids limit", control: "resources.pids",
             profile: "default", positive: exited(77), sandboxed: exited(0, "fork-bomb: forked 900 of 4096, then errno 12 (ENOMEM)"),
             verdict: .inconclusive, fails: true),
        Case(name: "a memory bomb whose allocation failed without an OOM kill is no evidence for the memory limit", control: "resources.memory",
             profile: "default", positive: exited(77), sandboxed: exited(0, "mem-bomb: allocation failed after 10 of 320 MiB"),
             verdict: .inconclusive, fails: true),
        Case(name: "/tmp filled up to its size (ENOSPC): enforced", control: "resources.tmp-size", profile: "default", positive: exited(77),
             sandboxed: exited(0, "tmpfs-fill: wrote 63 of 80 MiB to /tmp, then errno 28 (ENOSPC)"), verdict: .enforced, fails: false),
        Case(name: "/tmp filling stopped by the file-size rlimit (EFBIG) is no evidence for the /tmp size", control: "resources.tmp-size",
             profile: "default", positive: exited(77), sandboxed: exited(0, "tmpfs-fill: wrote 64 of 80 MiB to /tmp, then errno 27 (EFBIG)"),
             verdict: .inconclusive, fails: true),
        Case(name: "/tmp filling stopped by the memory limit is no evidence for the /tmp size", control: "resources.tmp-size",
             profile: "default", positive: exited(77), sandboxed: oomKilled, verdict: .inconclusive, fails: true),
        Case(name: "descriptors refused at the rlimit (EMFILE): enforced", control: "resources.descriptors", profile: "default",
             positive: exited(77), sandboxed: exited(0, "fd-bomb: opened 253 of 272, then errno 24 (EMFILE)"), verdict: .enforced, fails: false),
        Case(name: "the worker's own loopback does not explain a refused host connection: enforced", control: "network.host-loopback",
             profile: "loopback", positive: exited(77), sandboxed: exited(0), verdict: .enforced, fails: false),
        Case(name: "a connection that got through under a loopback profile: not applicable", control: "network.host-loopback",
             profile: "loopback", positive: exited(77), sandboxed: exited(77), verdict: .notApplicable, fails: false),
        Case(name: "a self-raised SIGSYS classified as seccomp: not enforced", control: "supervisor.sigsys-spoof", profile: "default",
             positive: ProbeObservation(outcome: "signaled", exitCode: nil, signal: 31, output: ""), sandboxed: seccompKilled,
             verdict: .notEnforced, fails: true),
        Case(name: "an OOM-killed memory bomb is contained", control: "resources.memory", profile: "default",
             positive: exited(77), sandboxed: oomKilled, verdict: .enforced, fails: false),
        Case(name: "a denied name refused by the proxy with its not-allowed record: enforced", control: "egress.denied-name",
             profile: "default", positive: exited(77), sandboxed: refused(recorded: ["egress/not-allowed"]), verdict: .enforced, fails: false),
        Case(name: "a denied name that the proxy connected: not enforced", control: "egress.denied-name",
             profile: "default", positive: exited(77), sandboxed: exited(77), verdict: .notEnforced, fails: true),
        Case(name: "a denied name refused for another reason (the address check) is no evidence for the name rule",
             control: "egress.denied-name", profile: "default", positive: exited(77),
             sandboxed: refused(recorded: ["egress/loopback-address"]), verdict: .inconclusive, fails: true),
        Case(name: "a proxy that admitted nothing (the probe cannot tell): inconclusive and failing", control: "egress.ip-literal",
             profile: "default", positive: exited(77), sandboxed: exited(2), verdict: .inconclusive, fails: true),
        Case(name: "a private address refused with the proxy's record: enforced", control: "egress.private-address",
             profile: "default", positive: exited(77), sandboxed: refused(recorded: ["egress/loopback-address"]), verdict: .enforced, fails: false),
    ]

    static func profile(_ name: String) -> Profile {
        var p = Profile()
        switch name {
        case "allow-keys": p.seccomp.allow = ["add_key", "keyctl"]
        case "loopback": p.network.mode = .loopback
        default: break
        }
        return p
    }

    @Test("each pair of observations gets the verdict the contract gives it", arguments: cases)
    func verdict(_ c: Case) throws {
        let control = try #require(ControlCatalog.control(c.control))
        let result = Verifier.judge(control, profile: Self.profile(c.profile), positive: c.positive, sandboxed: c.sandboxed)
        #expect(result.verdict == c.verdict, "\(result.evidence)")
        #expect(result.fails == c.fails)
        #expect(!result.evidence.isEmpty)
    }

    @Test("an enforced verdict's evidence names the mechanism that acted")
    func evidenceNamesTheMechanism() throws {
        let pids = try #require(ControlCatalog.control("resources.pids"))
        let byPids = Verifier.judge(pids, profile: Profile(), positive: Self.exited(77), sandboxed: Self.refused(recorded: ["pids"]))
        #expect(byPids.evidence.contains("pids limit"), "\(byPids.evidence)")
        let byMemory = Verifier.judge(pids, profile: Profile(), positive: Self.exited(77), sandboxed: Self.oomKilled)
        #expect(byMemory.evidence.contains("memory limit") && byMemory.evidence.contains("not the pids limit"), "\(byMemory.evidence)")
        // The flake this fixed: the kernel's log lost the victim's record, and the evidence said only "could not tell".
        let afterOOM = Verifier.judge(pids, profile: Profile(), positive: Self.exited(77), sandboxed: Self.killedAfterOOM)
        #expect(afterOOM.evidence.contains("memory limit") && afterOOM.evidence.contains("not the pids limit"), "\(afterOOM.evidence)")
        let keys = try #require(ControlCatalog.control("seccomp.keyrings"))
        let byFilter = Verifier.judge(keys, profile: Profile(), positive: Self.exited(77), sandboxed: Self.refused(recorded: ["x86_64/add_key"]))
        #expect(byFilter.evidence.contains("filter refused add_key"), "\(byFilter.evidence)")
        let x32 = try #require(ControlCatalog.control("seccomp.foreign-arch-x32"))
        let noABI = Verifier.judge(x32, profile: Profile(), positive: Self.exited(2, "ENOSYS"), sandboxed: Self.killed(at: "x32/getpid"))
        #expect(noABI.evidence.contains("filter killed the worker at x32/getpid") && noABI.evidence.contains("cannot do it unsandboxed"),
                "\(noABI.evidence)")
    }

    @Test("every control names the mechanism its verdict must be evidence for; the filter's controls name the calls they grant")
    func everyControlHasItsMechanism() {
        for control in ControlCatalog.all {
            let granted = control.grants.flatMap { grant -> [String] in
                if case .seccompAllows(let calls) = grant { return calls }
                return []
            }
            switch control.mechanism {
            case .filter(let calls): #expect(calls == granted, "\(control.id)")
            case .filterAnswer(let call, _): #expect(granted.contains(call), "\(control.id)")
            case .probe: #expect(granted.isEmpty, "\(control.id): a call the allow list grants is the filter's to stop")
            case .pidsLimit, .memoryLimit: #expect(control.needsCgroups, "\(control.id)")
            case .foreignArchitecture: #expect(control.expectation == .seccompKill, "\(control.id)")
            case .refusalErrno: #expect(control.expectation == .contained, "\(control.id)")
            case .classification: #expect(control.threatClass == 8, "\(control.id)")
            case .egress: #expect(control.egress != nil && control.threatClass == 14, "\(control.id): the proxy acts only in proxy runs")
            }
            #expect(control.egress == nil || control.threatClass == 14, "\(control.id)")
        }
    }

    @Test("verdicts are coloured only when asked: green enforced, red not-enforced, yellow inconclusive; the columns line up either way")
    func colouredTable() throws {
        let keys = try #require(ControlCatalog.control("seccomp.keyrings"))
        let bpf = try #require(ControlCatalog.control("seccomp.bpf"))
        let modules = try #require(ControlCatalog.control("seccomp.modules"))
        let results = [
            Verifier.judge(keys, profile: Profile(), positive: Self.exited(77), sandboxed: Self.refused(recorded: ["x86_64/add_key"])),
            Verifier.judge(bpf, profile: Profile(), positive: Self.exited(77), sandboxed: Self.exited(77)),
            Verifier.judge(modules, profile: Profile(), positive: Self.exited(2), sandboxed: Self.exited(0)),
        ]
        #expect(results.map(\.verdict) == [.enforced, .notEnforced, .inconclusive])
        let report = VerificationReport(profile: "default", profileDigest: "d", kernel: "6.x", cgroupMode: "v1", controls: results, durationMs: 1)
        let plain = report.table(colored: false)
        #expect(!plain.contains("\u{1B}"))
        #expect(report.table == plain)
        let coloured = report.table(colored: true)
        #expect(coloured.contains("\u{1B}[32menforced\u{1B}[0m"))
        #expect(coloured.contains("\u{1B}[31mnot-enforced\u{1B}[0m"))
        #expect(coloured.contains("\u{1B}[33minconclusive\u{1B}[0m"))
        // Without the escapes, the coloured table is the plain one.
        let stripped = coloured.replacing(/\x{1B}\[[0-9]+m/, with: "")
        #expect(stripped == plain)
    }

    @Test("a coloured table escapes every field it quotes, so the colour codes are its only control bytes")
    func colouredTableEscapesFields() throws {
        let keys = try #require(ControlCatalog.control("seccomp.keyrings"))
        let hostile = Self.refused("add-key: \u{1B}]0;owned\u{07}\u{1B}[2J", recorded: ["x86_64/add_key"])
        let result = Verifier.judge(keys, profile: Profile(), positive: Self.exited(77), sandboxed: hostile)
        let report = VerificationReport(profile: "default", profileDigest: "d", kernel: "6.x", cgroupMode: "v1", controls: [result], durationMs: 1)
        let escaped = report.table(colored: true) { $0.replacing("\u{1B}", with: "\\x1b").replacing("\u{07}", with: "\\x07") }
        #expect(escaped.contains("\\x1b]0;owned\\x07\\x1b[2J"), "\(escaped)")
        let controls = escaped.replacing(/\x{1B}\[3[123]m|\x{1B}\[0m/, with: "")
        #expect(!controls.contains("\u{1B}") && !controls.contains("\u{07}"))
        // Positive control: without the escape the hostile bytes are there.
        #expect(report.table(colored: true).contains("\u{1B}[2J"))
    }

    @Test("every control's probe exists in the probe binary, and ids are unique")
    func catalogMatchesProbes() throws {
        let list = try Harness.exec(Harness.probe, ["list"])
        let names = Set(list.stdout.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
        for control in ControlCatalog.all {
            #expect(names.contains(control.probe), "\(control.id): probe \(control.probe)")
        }
        #expect(Set(ControlCatalog.all.map(\.id)).count == ControlCatalog.all.count)
    }

    @Test("a report's JSON carries the contract's keys and counts")
    func reportJSON() throws {
        let control = try #require(ControlCatalog.control("seccomp.keyrings"))
        let result = Verifier.judge(control, profile: Profile(), positive: Self.exited(77), sandboxed: Self.refused(recorded: ["x86_64/add_key"]))
        let report = VerificationReport(profile: "default", profileDigest: "d", kernel: "6.x", cgroupMode: "v1", controls: [result], durationMs: 5,
                                        runIds: ["r1"])
        let object = try #require(report.jsonValue.object)
        #expect(object["enforced"] == .number("1"))
        #expect(object["notEnforced"] == .number("0"))
        #expect(object["passed"] == .bool(true))
        #expect(object["runs"] == .array([.string("r1")]))
        let first = try #require(object["controls"]?.array?.first?.object)
        #expect(first["id"] == .string("seccomp.keyrings"))
        #expect(first["threatClass"] == .number("2"))
        #expect(first["verdict"] == .string("enforced"))
        #expect(report.table.contains("seccomp.keyrings"))
    }
}

/// The probes mean what they say in every build configuration: an optimiser
/// that removes a probe's work (a release build once dropped the memory
/// bomb's malloc + memset) makes `verify` report a holding limit as broken.
@Suite("the probe binary under the optimiser", .timeLimit(.minutes(1)))
struct ProbeBinaryTests {
    /// Runs the probe unsandboxed; its exit status and its page faults (from wait4).
    /// Faults, not peak RSS: a spawned child's peak RSS starts at its parent's, while
    /// its fault count starts at zero, and each page the bomb first touches faults once.
    static func pageFaults(_ args: [String]) throws -> (status: Int32, faults: Int) {
        var pid: pid_t = 0
        let argv = ([Harness.probe] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        let rc = posix_spawn(&pid, Harness.probe, &actions, nil, argv, environ)
        try #require(rc == 0, "posix_spawn: \(rc)")
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        return ((status >> 8) & 0xFF, usage.ru_minflt + usage.ru_majflt)
    }

    static let pagesPerMiB = 256

    @Test("the memory bomb really touches every MiB it reports: at least one fault per page")
    func memoryBombTouchesItsMemory() throws {
        let (status, faults) = try Self.pageFaults(["mem-bomb", "48"])
        #expect(status == 77, "the bomb reports all 48 MiB allocated and touched")
        #expect(faults >= 48 * Self.pagesPerMiB, "\(faults) page faults for 48 MiB: the pages were never touched")
    }

    @Test("positive control: a bomb a tenth the size faults far less, so the count measures the bomb")
    func smallerBombFewerFaults() throws {
        let small = try Self.pageFaults(["mem-bomb", "4"])
        let large = try Self.pageFaults(["mem-bomb", "48"])
        #expect(small.status == 77)
        #expect(small.faults < 24 * Self.pagesPerMiB, "\(small.faults) faults for 4 MiB")
        #expect(large.faults - small.faults >= 40 * Self.pagesPerMiB, "\(small.faults) vs \(large.faults) faults")
    }
}
