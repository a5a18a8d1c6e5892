import Foundation
import Testing

/// What the worker's /proc shows of the host: the kernel details Docker masks
/// and the boot command line are covered, the kernel's tunables are read-only.
@Suite("the worker's /proc", .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(3)))
struct ProcTests {
    /// Cancels the case, as a known issue saying why, when the probe does not
    /// succeed unsandboxed: on this kernel there is nothing for the sandbox to hide.
    func requirePositiveControl(_ probe: String, _ args: [String]) throws {
        let control = try Harness.probeUnsandboxed(probe, args)
        if control.status != 77 {
            let reason = "not applicable on this host: the positive control did not succeed (exit \(control.status)): \(control.stdout)\(control.stderr)"
            withKnownIssue(Comment(rawValue: reason)) { Issue.record(Comment(rawValue: reason)) }
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    @Test("/proc/cmdline reads empty in the worker while the host's holds the boot parameters")
    func cmdline() throws {
        let host = try String(contentsOfFile: "/proc/cmdline", encoding: .utf8)
        #expect(!host.isEmpty, "positive control: the host's boot command line is readable")
        let r = try Harness().run([], ["/bin/cat", "/proc/cmdline"])
        let report = try r.report()
        #expect(report.string("outcome") == "exited" && r.status == 0, "\(report)")
        #expect(report.string("stdout") == "", "the worker read the host's command line: \(report.string("stdout") ?? "")")
    }

    @Test("each host kernel file and directory Docker masks is covered in the worker",
          arguments: ["/proc/cmdline", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/interrupts",
                      "/proc/acpi", "/proc/scsi"])
    func masked(_ path: String) throws {
        try requirePositiveControl("proc-masked", [path])
        let r = try Harness().probe("proc-masked", [path])
        let out = try r.report().string("stdout") ?? ""
        #expect(r.status == 0, "\(out)")
        #expect(out.contains("\(path)=dev-null") || out.contains("\(path)=empty-tmpfs"), "\(out)")
    }

    @Test("a masked path this kernel lacks is skipped: the run starts, and the path stays absent")
    func absentSkipped() throws {
        let absent = ["/proc/kcore", "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats", "/proc/asound", "/proc/scsi"]
            .filter { !FileManager.default.fileExists(atPath: $0) }
        guard let path = absent.first else {
            let reason = "not applicable on this host: every masked path exists"
            withKnownIssue(Comment(rawValue: reason)) { Issue.record(Comment(rawValue: reason)) }
            try Test.cancel(Comment(rawValue: reason))
        }
        let r = try Harness().run([], ["/bin/sh", "-c", "test -e \"$0\" && echo present || echo absent", path])
        let report = try r.report()
        #expect(report.string("outcome") == "exited" && r.status == 0, "\(report)")
        #expect(report.string("stdout") == "absent\n", "\(path): \(report)")
    }

    @Test("writes to /proc/sys and /proc/sysrq-trigger are refused by a read-only mount (EROFS)",
          arguments: ["/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname", "/proc/sysrq-trigger"])
    func readOnly(_ path: String) throws {
        try requirePositiveControl("proc-write", [path])
        let r = try Harness().probe("proc-write", [path])
        let out = try r.report().string("stdout") ?? ""
        #expect(r.status == 0, "\(out)")
        #expect(out.contains("\(path)=EROFS"), "\(out)")
    }

    @Test("a nested user and mount namespace a profile allows can neither unmount a mask nor mount a fresh proc")
    func nestedNamespace() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-nested-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let profile = dir.appendingPathComponent("nested.json").path
        try #"{"extends":"default","seccomp":{"allow":["unshare","mount","umount2","clone"]}}"#
            .write(toFile: profile, atomically: true, encoding: .utf8)
        // As root of the nested namespace: unmount the mask, then mount a fresh proc over /proc.
        let script = """
            unshare -Urm sh -c 'echo nested; umount /proc/cmdline 2>/dev/null && echo unmounted; wc -c < /proc/cmdline'
            unshare -Urmpf sh -c 'echo nested; mount -t proc proc /proc 2>/dev/null && echo mounted; wc -c < /proc/cmdline'
            """
        let r = try Harness().run(["--profile", profile], ["/bin/sh", "-c", script])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(report.string("outcome") == "exited", "\(report)")
        // Both got their namespace, neither got through, and /proc/cmdline read empty both times.
        let lines = out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines == ["nested", "0", "nested", "0"], "\(out) \(report.string("stderr") ?? "")")
    }
}
