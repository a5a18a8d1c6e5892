import Foundation
import Testing

/// Linux AIO contexts come from the host-wide `fs.aio-max-nr` pool: denied by
/// default (recorded, answered ENOSYS), allowed only by a profile that asks.
@Suite("Linux AIO", .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(3)))
struct LinuxAIOTests {
    @Test("io_setup works unsandboxed, is answered ENOSYS under the default profile, and the report and the trail record it")
    func deniedAndRecorded() throws {
        let control = try Harness.probeUnsandboxed("io-setup")
        #expect(control.status == 77, "positive control: io_setup works on the host: \(control.stdout)")
        let h = try Harness()
        let r = try h.probe("io-setup")
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(r.status == 0 && out.contains("ENOSYS"), "\(out)")
        #expect(report.violationSyscalls.contains("io_setup"), "\(report["violations"] ?? "none")")
        let runId = try #require(report.string("runId"))
        let violations = try auditEvents(h, ["--run", runId]).filter { $0["kind"] as? String == "violation" }
        #expect(violations.contains { ($0["detail"] as? [String: Any])?["syscall"] as? String == "io_setup" }, "\(violations)")
    }

    @Test("a profile that allows the AIO calls gets a working io_setup inside, with no violation")
    func allowedByProfile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-aio-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let profile = dir.appendingPathComponent("aio.json").path
        try #"{"extends":"default","seccomp":{"allow":["io_setup","io_submit","io_getevents","io_pgetevents","io_cancel","io_destroy"]}}"#
            .write(toFile: profile, atomically: true, encoding: .utf8)
        let r = try Harness().probe("io-setup", options: ["--profile", profile])
        let report = try r.report()
        #expect(r.status == 77, "io_setup works when the profile allows it: \(report.string("stdout") ?? "")")
        #expect(report.violationSyscalls.isEmpty, "\(report["violations"] ?? "none")")
    }
}
