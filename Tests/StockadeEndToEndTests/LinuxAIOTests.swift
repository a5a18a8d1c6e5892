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

    @Test("the compiled filter kept under the state directory is used only when it is the supervisor's own: an allow-all program planted writable by others, or by another owner, is not")
    func plantedProgramIgnored() throws {
        let h = try Harness()
        let first = try h.probe("io-setup")
        let firstOut = try first.report().string("stdout") ?? ""
        #expect(first.status == 0 && firstOut.contains("ENOSYS"), "\(firstOut)")
        let dir = h.stateDirectory + "/seccomp"
        let paths = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".bpf") }.map { dir + "/" + $0 }
        #expect(!paths.isEmpty, "the run kept its compiled filter")
        let originals = try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        /// Each kept program replaced by one instruction, "return ALLOW", its key left as it was.
        func plant(mode: mode_t, owner: uid_t) throws -> Bool {
            for (path, original) in zip(paths, originals) {
                let keyLength = Int(original[8]) | Int(original[9]) << 8 | Int(original[10]) << 16 | Int(original[11]) << 24
                var planted = Data(original.prefix(12))
                planted.append(contentsOf: [8, 0, 0, 0])
                planted.append(original[16..<(16 + keyLength)])
                planted.append(contentsOf: [6, 0, 0, 0, 0, 0, 0xff, 0x7f])
                try planted.write(to: URL(fileURLWithPath: path))
                #expect(chown(path, owner, owner) == 0 && chmod(path, mode) == 0)
            }
            let r = try h.probe("io-setup")
            return r.status == 77 // io_setup worked: the filter let it through
        }
        // Writable by others: not read; the run compiles its filter again and replaces the file.
        #expect(!(try plant(mode: 0o666, owner: 0)))
        for (path, original) in zip(paths, originals) {
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == original, "replaced by the real program")
        }
        // Owned by another user: not read either.
        #expect(!(try plant(mode: 0o600, owner: 4242)))
        // The positive control: the same planted program as the supervisor's own file is read (the
        // state directory is trusted: whoever can write there holds the audit store too).
        #expect(try plant(mode: 0o600, owner: 0), "control: the cache is read when it is the supervisor's own")
        for (path, original) in zip(paths, originals) { try original.write(to: URL(fileURLWithPath: path)) }
        #expect(try h.probe("io-setup").status != 77)
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
