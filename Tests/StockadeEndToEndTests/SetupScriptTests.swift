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
        #expect(ci.contains("bin/stockade-test") && !ci.contains("apt-get") && !ci.contains("libseccomp"))
        let readme = try DocumentationTests.text("README.md")
        #expect(readme.contains("bin/stockade run -- /bin/sh -c 'echo hello from the sandbox'\nbin/stockade-test\n"),
                "the README's quick start is the two scripts")
    }
}
