import Foundation
import Testing

/// The README's two commands set up a fresh Debian machine themselves: `bin/stockade` and `bin/stockade-test`
/// (and `.ci/run`, which calls the latter) install what scripts/packages.txt lists and dpkg says is missing.
/// The install step runs here with `STOCKADE_APT=echo`, so the test shows what it would do without doing it.
@Suite("the set-up scripts")
struct SetupScriptTests {
    static let script = DocumentationTests.root.appendingPathComponent("scripts/ensure-packages.sh").path

    static func ensure(packages: [String]) throws -> Harness.Result {
        let list = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-packages-\(UUID().uuidString)").path
        try (["# a comment line"] + packages).joined(separator: "\n").appending("\n").write(toFile: list, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: list) }
        return try Harness.exec("/bin/sh", [script], environment: ["STOCKADE_PACKAGES": list, "STOCKADE_APT": "echo"])
    }

    static let isDebian = FileManager.default.isExecutableFile(atPath: "/usr/bin/dpkg-query")

    @Test("a missing package is installed after one apt-get update; present ones are not installed again",
          .enabled(if: isDebian, "needs dpkg-query (Debian)"), .timeLimit(.minutes(1)))
    func installsWhatIsMissing() throws {
        let r = try Self.ensure(packages: ["coreutils", "stockade-no-such-package", "bash", "stockade-nor-this-one"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "update\ninstall -y stockade-no-such-package stockade-nor-this-one\n")
        #expect(r.stderr.contains("missing Debian packages: stockade-no-such-package stockade-nor-this-one"))
    }

    @Test("with every package installed it does nothing at all", .enabled(if: isDebian, "needs dpkg-query (Debian)"),
          .timeLimit(.minutes(1)))
    func nothingMissing() throws {
        let r = try Self.ensure(packages: ["coreutils", "bash"])
        #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r.stdout) \(r.stderr)")
    }

    @Test("close-build-dir closes what others may write, leaves a link's target alone, and refuses a file of another user, naming it",
          .enabled(if: getuid() == 0, "needs root to give a file to another user"), .timeLimit(.minutes(1)))
    func closeBuildDirectory() throws {
        let script = DocumentationTests.root.appendingPathComponent("scripts/close-build-dir.sh").path
        let tree = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-close-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: tree) }
        try FileManager.default.createDirectory(atPath: tree + "/obj/sub", withIntermediateDirectories: true)
        try "x".write(toFile: tree + "/obj/sub/a.o", atomically: false, encoding: .utf8)
        try "y".write(toFile: tree + "/target", atomically: false, encoding: .utf8)
        chmod(tree + "/obj/sub", 0o777)
        chmod(tree + "/obj/sub/a.o", 0o664)
        chmod(tree + "/target", 0o666)
        symlink("../target", tree + "/obj/link")
        let r = try Harness.exec("/bin/sh", [script, tree + "/obj"])
        #expect(r.status == 0, "\(r.stderr)")
        func mode(_ path: String) -> mode_t {
            var st = stat()
            return stat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
        }
        #expect(mode(tree + "/obj/sub") == 0o755 && mode(tree + "/obj/sub/a.o") == 0o644)
        #expect(mode(tree + "/target") == 0o666, "a link's target outside the tree is not the tree's")

        chown(tree + "/obj/sub/a.o", 65534, 65534)
        let refused = try Harness.exec("/bin/sh", [script, tree + "/obj"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("\(tree)/obj/sub/a.o is owned by another user"), "\(refused.stderr)")
    }

    @Test("one list of packages: the launcher, the test script and CI all go through it, and none names a package itself")
    func oneList() throws {
        let list = try DocumentationTests.text("scripts/packages.txt")
        let packages = list.split(separator: "\n").filter { !$0.hasPrefix("#") }.map(String.init)
        #expect(packages.contains("libseccomp-dev") && packages.contains("git"))
        for file in ["bin/stockade", "bin/stockade-test"] {
            let text = try DocumentationTests.text(file)
            #expect(text.contains("scripts/ensure-packages.sh"), "\(file) runs the install step")
            for package in packages { #expect(!text.contains(package + " "), "\(file) names \(package) itself") }
            let mode = try FileManager.default.attributesOfItem(atPath: DocumentationTests.root.appendingPathComponent(file).path)[.posixPermissions] as? Int
            #expect((mode ?? 0) & 0o111 != 0, "\(file) is executable")
        }
        let ci = try DocumentationTests.text(".ci/run")
        // CI installs through the same script (its matrix adds a list of its own), never apt-get itself.
        #expect(ci.contains("bin/stockade-test") && ci.contains("scripts/ensure-packages.sh") && !ci.contains("apt-get install") && !ci.contains("libseccomp"))
        let readme = try DocumentationTests.text("README.md")
        #expect(readme.contains("bin/stockade run -- /bin/sh -c 'echo hello from the sandbox'\nbin/stockade-test\n"),
                "the README's quick start is the two scripts")
    }
}
