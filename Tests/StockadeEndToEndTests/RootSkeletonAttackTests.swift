import Foundation
import Testing

/// The root skeleton one supervisor shares between the runs of a profile (RootSkeleton.swift), attacked
/// from a worker that is root in its namespace.
@Suite("the shared root skeleton, end to end",
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct RootSkeletonAttackTests {
    /// Tries every way into the root's own files below `$R`: appending to generated files, making
    /// files, directories and links, changing modes, replacing a file and moving a mount point away.
    /// Prints each that worked.
    static let attack = #"""
    for p in "$R/etc/passwd" "$R/etc/hosts" "$R/x" "$R/etc/x" "$R/sandbox/x" "$R/dev/x"; do
      (echo pwned >> "$p") 2>/dev/null && echo "wrote $p"
    done
    ln -s / "$R/etc/link" 2>/dev/null && echo linked
    mkdir "$R/etc/d" 2>/dev/null && echo mkdir
    chmod 777 "$R/etc" 2>/dev/null && echo chmod
    mv "$R/etc/hosts" "$R/etc/hosts.old" 2>/dev/null && echo renamed
    rm -f "$R/etc/passwd" 2>/dev/null && [ ! -e "$R/etc/passwd" ] && echo removed
    rmdir "$R/sandbox/request" 2>/dev/null && echo rmdir
    true
    """#

    @Test("a worker that is root in its namespace cannot change the root its profile's runs share; the next run sees it as made")
    func workerCannotChangeSharedRoot() throws {
        // Positive control: against a writable copy of the same tree, unsandboxed, every attempt works.
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("skeleton-control-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: copy) }
        for dir in ["etc", "sandbox/request", "dev"] { try FileManager.default.createDirectory(atPath: copy + "/" + dir, withIntermediateDirectories: true) }
        for file in ["etc/passwd", "etc/hosts"] { try Data("x\n".utf8).write(to: URL(fileURLWithPath: copy + "/" + file)) }
        let control = try Harness.exec("/bin/sh", ["-c", Self.attack], environment: ["R": copy])
        #expect(control.stdout.split(separator: "\n").count == 12, "control: \(control.stdout) \(control.stderr)")

        let h = try Harness()
        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("skeleton-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: profile) }
        try Data(#"{"extends": "default", "user": {"uid": 0, "gid": 0}}"#.utf8).write(to: URL(fileURLWithPath: profile))
        let look = "id -u; cat /etc/passwd /etc/hosts; ls -a / /etc /sandbox /dev; grep ' / / ' /proc/self/mountinfo"
        func line(_ id: String, _ script: String) throws -> String {
            let object: [String: Any] = ["id": id, "profile": profile, "command": ["/bin/sh", "-c", script]]
            return String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
        }
        let input = try [line("before", look), line("attack", Self.attack + "\necho ok > /tmp/control && cat /tmp/control"), line("after", look)]
            .joined(separator: "\n") + "\n"
        let r = try h.stockade(["batch", "--parallel", "1", "-"], stdin: input)
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let reports = try Dictionary(uniqueKeysWithValues: r.stdout.split(separator: "\n").map { line in
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return (report["id"] as? String ?? "", report)
        })
        let before = try #require(reports["before"]?["stdout"] as? String)
        let attack = try #require(reports["attack"]?["stdout"] as? String)
        let after = try #require(reports["after"]?["stdout"] as? String)
        // The in-sandbox control: the same shell writes where the run may (its own /tmp).
        #expect(attack == "ok\n", "the attack changed the root: \(attack) \(reports["attack"]?["stderr"] ?? "")")
        #expect(before.hasPrefix("0\n") && before.contains("root:x:0:0:") && before == after, "before: \(before)\nafter: \(after)")
        // The root's filesystem itself is read-only (its superblock, after the mount's options).
        let root = try #require(after.split(separator: "\n").first { $0.contains(" / / ") })
        let superOptions = root.split(separator: " - ").last?.split(separator: " ").last ?? ""
        #expect(root.contains(" - tmpfs ") && superOptions.split(separator: ",").first == "ro", "\(root)")
    }
}
