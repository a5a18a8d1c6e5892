import Crypto
import Foundation
import StockadeAudit
import StockadePolicy
import StockadeSupervisor
@testable import StockadeVerify
import Testing

/// The repository's documents, kept true where a test can check them: every flag the CLI's help
/// prints, every outcome, report key, bundle rule, profile key and audit event kind the code knows
/// is in docs/CONTRACT.md; every control `stockade verify` runs is in docs/THREAT-MODEL.md; the
/// README names only documents a clone has.
@Suite("the documents match the code")
struct DocumentationTests {
    /// The package root: this file is `Tests/StockadeEndToEndTests/DocumentationTests.swift`.
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func text(_ relative: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(relative), encoding: .utf8)
    }

    /// Every subcommand path, as the help output lists them (the table below must be a subset,
    /// so a help format the parser no longer understands fails instead of checking nothing).
    static let expectedCommands: Set<[String]> = [
        [], ["run"], ["batch"], ["verify"], ["gc"], ["profile"], ["profile", "check"], ["profile", "show"],
        ["audit"], ["audit", "events"], ["audit", "runs"], ["audit", "verify"],
        ["audit", "backup"], ["audit", "export"], ["audit", "import"],
        ["review"], ["review", "list"], ["review", "show"], ["review", "accept"], ["review", "reject"],
        ["serve"], ["token"], ["token", "create"], ["token", "list"], ["token", "revoke"],
    ]

    static func help(_ path: [String]) throws -> String {
        let result = try Harness.exec(Harness.stockade, path + ["--help"])
        #expect(result.status == 0, "stockade \(path.joined(separator: " ")) --help exits 0: \(result.stderr)")
        return result.stdout + result.stderr
    }

    /// The names in a help text's SUBCOMMANDS section.
    static func subcommands(in help: String) -> [String] {
        var names: [String] = []
        var inSection = false
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("SUBCOMMANDS:") { inSection = true; continue }
            guard inSection else { continue }
            if line.trimmingCharacters(in: .whitespaces).isEmpty || !line.hasPrefix("  ") { break }
            // A name is indented by two spaces; a wrapped description line by more.
            let rest = line.dropFirst(2)
            guard let first = rest.first, first.isLetter, first.isLowercase else { continue }
            names.append(String(rest.prefix { $0 != " " }))
        }
        return names
    }

    /// Every command path with its help text, found by walking the SUBCOMMANDS sections from the root.
    static func allHelp() throws -> [[String]: String] {
        var found: [[String]: String] = [:]
        var queue: [[String]] = [[]]
        while let path = queue.popLast() {
            guard found[path] == nil, path.count <= 3 else { continue }
            let text = try help(path)
            found[path] = text
            for name in subcommands(in: text) where name != "help" { queue.append(path + [name]) }
        }
        return found
    }

    static func flags(in help: String) -> Set<String> {
        let regex = try! NSRegularExpression(pattern: "--[a-z][a-z0-9-]*")
        let range = NSRange(help.startIndex..., in: help)
        return Set(regex.matches(in: help, range: range).compactMap { Range($0.range, in: help).map { String(help[$0]) } })
    }

    @Test("every flag each command's --help prints is in docs/CONTRACT.md, and so is every command",
          .timeLimit(.minutes(2)))
    func flagsAreDocumented() throws {
        let contract = try Self.text("docs/CONTRACT.md")
        let helps = try Self.allHelp()
        let missingCommands = Self.expectedCommands.subtracting(helps.keys)
        #expect(missingCommands.isEmpty, "commands the help walk did not find: \(missingCommands.sorted { $0.joined() < $1.joined() })")
        var missing: [String] = []
        for (path, text) in helps.sorted(by: { $0.key.joined(separator: " ") < $1.key.joined(separator: " ") }) {
            let command = (["stockade"] + path).joined(separator: " ")
            if !path.isEmpty && !contract.contains("`\(command)") && !contract.contains(command + " ") {
                missing.append("the command `\(command)`")
            }
            for flag in Self.flags(in: text).sorted() where !Self.mentions(contract, flag) {
                missing.append("\(flag) (from `\(command) --help`)")
            }
        }
        #expect(missing.isEmpty, "docs/CONTRACT.md does not mention: \(missing.joined(separator: ", "))")
    }

    /// `flag` appears as a whole word: `--state` must not be satisfied by `--state-dir`.
    static func mentions(_ text: String, _ flag: String) -> Bool {
        var search = text.startIndex..<text.endIndex
        while let found = text.range(of: flag, range: search) {
            let next = found.upperBound < text.endIndex ? text[found.upperBound] : " "
            if !(next.isLetter || next.isNumber || next == "-") { return true }
            search = found.upperBound..<text.endIndex
        }
        return false
    }

    @Test("every outcome, report key and bundle rejection rule is in docs/CONTRACT.md")
    func reportIsDocumented() throws {
        let contract = try Self.text("docs/CONTRACT.md")
        for outcome in RunReport.Outcome.allCases {
            #expect(contract.contains("`\(outcome.rawValue)`"), "outcome \(outcome.rawValue) is not in docs/CONTRACT.md")
        }
        // Every setup stage a report can name, in the paragraph that lists them.
        let stages = try #require(contract.range(of: "`setupError.stage` names what failed").map { String(contract[$0.lowerBound...].prefix(2000)) })
        for stage in SetupStage.allCases {
            #expect(stages.contains("`\(stage.rawValue)`"), "setup stage \(stage.rawValue) is not listed in docs/CONTRACT.md")
        }
        var report = RunReport(runId: "R", profile: "p", outcome: .exited)
        report.requestId = "id"
        report.line = 1
        report.stdoutBase64 = ""
        report.stderrBase64 = ""
        report.setupError = RunReport.SetupError(stage: .usage, errno: 0, message: "m")
        guard case .object(let keys) = report.jsonValue else {
            Issue.record("the report is not a JSON object")
            return
        }
        for key in keys.keys.sorted() {
            #expect(contract.contains("`\(key)`"), "report key \(key) is not in docs/CONTRACT.md")
        }
        for nested in ["result", "review", "setupError"] {
            guard case .object(let inner)? = keys[nested] else { continue }
            for key in inner.keys.sorted() {
                #expect(contract.contains("`\(key)`") || contract.contains("\"\(key)\""), "report key \(nested).\(key) is not in docs/CONTRACT.md")
            }
        }
        for rule in ["size_mismatch", "hash_mismatch", "unlisted_file", "missing_file", "duplicate_path", "symlink",
                     "special_file", "hardlink", "too_many_files", "too_large", "bad_path", "bad_manifest"] {
            #expect(contract.contains("`\(rule)`"), "bundle rule \(rule) is not in docs/CONTRACT.md")
        }
    }

    @Test("every key of a resolved profile is in docs/CONTRACT.md")
    func profileKeysAreDocumented() throws {
        let contract = try Self.text("docs/CONTRACT.md")
        var profile = Profile()
        profile.volumes = [Profile.Volume(source: "/s", target: "/t")]
        profile.tmpfs = [Profile.Tmpfs(target: "/t", sizeBytes: 1 << 20)]
        profile.secrets = [Profile.Secret(env: "A", source: .file("/f")), Profile.Secret(env: "B", source: .environment("C"))]
        profile.seccomp.base = .docker(path: "/d.json")
        var missing: [String] = []
        func walk(_ value: JSONValue, _ path: String) {
            switch value {
            case .object(let object):
                for (key, child) in object.sorted(by: { $0.key < $1.key }) {
                    let field = path.isEmpty ? key : "\(path).\(key)"
                    // environment.set holds variable names, not keys of the format.
                    if path == "environment.set" { continue }
                    // A parent is documented through its children (`user.uid` documents `user`).
                    if !(contract.contains("`\(field)") || contract.contains("`\(key)`") || contract.contains("\"\(key)\"")) {
                        missing.append(field)
                    }
                    walk(child, field)
                }
            case .array(let items):
                for item in items { walk(item, path) }
            default:
                break
            }
        }
        walk(profile.jsonValue, "")
        #expect(missing.isEmpty, "profile keys not in docs/CONTRACT.md: \(missing)")
    }

    /// Event kinds as the code writes them: `kind: "…"` arguments, the ledger's typed `kind: .case`
    /// arguments (an `AuditEventKind` case, read as its stored name), the supervisor's `recordQuietly`
    /// and outcome-event helpers, and the two kinds the ledger builds from a bundle's status.
    static func auditKinds() throws -> Set<String> {
        var kinds: Set<String> = ["bundle.accepted", "bundle.rejected"]
        let patterns = [#"kind: "([a-z][a-z.-]*[a-z])""#, #"recordQuietly\((?:context|scope), "([a-z][a-z.-]*[a-z])""#,
                        #"\((?:context|scope)\.runId, "([a-z][a-z.-]*[a-z])""#]
        let typedKind = try NSRegularExpression(pattern: #"kind: \.([a-z][A-Za-z]*)\b"#)
        let caseNames = Dictionary(uniqueKeysWithValues: AuditEventKind.allCases.map { (String(describing: $0), $0.rawValue) })
        let regexes = try patterns.map { try NSRegularExpression(pattern: $0) }
        var scanned = 0
        for directory in ["Sources/StockadeAudit", "Sources/StockadeSupervisor", "Sources/StockadeVerify", "Sources/StockadeCLI", "Sources/StockadeServer"] {
            let url = root.appendingPathComponent(directory)
            for name in try FileManager.default.contentsOfDirectory(atPath: url.path) where name.hasSuffix(".swift") {
                let source = try String(contentsOf: url.appendingPathComponent(name), encoding: .utf8)
                scanned += 1
                for regex in regexes {
                    for match in regex.matches(in: source, range: NSRange(source.startIndex..., in: source)) {
                        if let range = Range(match.range(at: 1), in: source) { kinds.insert(String(source[range])) }
                    }
                }
                for match in typedKind.matches(in: source, range: NSRange(source.startIndex..., in: source)) {
                    if let range = Range(match.range(at: 1), in: source), let kind = caseNames[String(source[range])] { kinds.insert(kind) }
                }
            }
        }
        #expect(scanned > 10, "the audit kind scan read the sources")
        // The store builds these from the role-checked status: keep the list above in step.
        let ledger = try text("Sources/StockadeAudit/AuditLedger.swift")
        let states = try text("Sources/StockadeAudit/AuditStates.swift")
        #expect(ledger.contains("kind: status.eventKind") && states.contains("case .accepted: .bundleAccepted")
                    && states.contains("case .rejected: .bundleRejected"), "bundle event kinds are still built from the status")
        return kinds
    }

    @Test("every audit event kind the code writes is in docs/CONTRACT.md")
    func auditKindsAreDocumented() throws {
        let contract = try Self.text("docs/CONTRACT.md")
        let kinds = try Self.auditKinds()
        for kind in ["run.created", "worker.started", "violation", "kill", "worker.exited", "run.finished", "verification"] {
            #expect(kinds.contains(kind), "the scan found \(kind): the source scan still works")
        }
        let missing = kinds.sorted().filter { !contract.contains("`\($0)`") }
        #expect(missing.isEmpty, "audit event kinds (and violation kinds) not in docs/CONTRACT.md: \(missing)")
    }

    @Test("the kinds `audit events --kind` accepts are exactly the kinds the code writes")
    func knownKindsMatchTheCode() throws {
        let violationKinds: Set = ["seccomp", "pids", "memory", "egress"]
        #expect(Set(AuditEventKind.known) == (try Self.auditKinds()).subtracting(violationKinds))
    }

    @Test("every control stockade verify runs is in docs/THREAT-MODEL.md")
    func controlsAreDocumented() throws {
        let threats = try Self.text("docs/THREAT-MODEL.md")
        let missing = ControlCatalog.all.map(\.id).filter { !threats.contains("`\($0)`") }
        #expect(missing.isEmpty, "controls not in docs/THREAT-MODEL.md: \(missing)")
    }

    @Test("the README names only documents a clone has")
    func readmeStandsAlone() throws {
        let readme = try Self.text("README.md")
        #expect(!readme.contains("../shared/"), "README.md points outside the repository")
        let regex = try NSRegularExpression(pattern: #"\]\(([^)#:]+)(#[^)]*)?\)"#)
        for match in regex.matches(in: readme, range: NSRange(readme.startIndex..., in: readme)) {
            guard let range = Range(match.range(at: 1), in: readme) else { continue }
            let target = String(readme[range])
            #expect(FileManager.default.fileExists(atPath: Self.root.appendingPathComponent(target).path),
                    "README.md links to \(target), which the repository does not have")
        }
        for document in ["docs/CONTRACT.md", "docs/THREAT-MODEL.md", "docs/ARCHITECTURE.md"] {
            #expect(readme.contains("(\(document))"), "README.md links \(document)")
        }
    }

    @Test("the worked example's request manifest lists the example's files with their real sizes and hashes")
    func workedExampleIsExact() throws {
        let contract = try Self.text("docs/CONTRACT.md")
        let scriptStart = try #require(contract.range(of: "```sh\n#!/bin/sh\nset -eu\nout=/sandbox/result\n"))
        let scriptBody = contract[contract.index(scriptStart.lowerBound, offsetBy: 6)...]
        let scriptEnd = try #require(scriptBody.range(of: "```"))
        let script = String(scriptBody[..<scriptEnd.lowerBound])
        let files: [String: [UInt8]] = ["run.sh": Array(script.utf8), "input/numbers.txt": Array("3\n1\n2\n".utf8)]

        let manifestMarker = try #require(contract.range(of: "`req/manifest.json`"))
        let afterMarker = contract[manifestMarker.upperBound...]
        let open = try #require(afterMarker.range(of: "```json\n"))
        let close = try #require(afterMarker[open.upperBound...].range(of: "```"))
        let manifestText = String(afterMarker[open.upperBound..<close.lowerBound])
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(manifestText.utf8)) as? [String: Any])
        let listed = try #require(manifest["files"] as? [[String: Any]])
        #expect(Set(listed.compactMap { $0["path"] as? String }) == Set(files.keys))
        for entry in listed {
            let path = try #require(entry["path"] as? String)
            let bytes = try #require(files[path])
            #expect((entry["size"] as? NSNumber)?.intValue == bytes.count, "size of \(path)")
            #expect(entry["sha256"] as? String == Self.sha256(bytes), "sha256 of \(path)")
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    @Test("the shipped systemd unit starts stockade serve with flags it has, and delegates its cgroup subtree")
    func systemdUnit() throws {
        let unit = try Self.text("packaging/stockade.service")
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }.map(String.init))
        #expect(exec.contains("/stockade serve "), "\(exec)")
        let help = try Harness.exec(Harness.stockade, ["serve", "--help"])
        for flag in exec.split(separator: " ").filter({ $0.hasPrefix("--") }) {
            #expect(help.stdout.contains(String(flag)), "\(flag) is not a flag of stockade serve")
        }
        #expect(unit.contains("Delegate=yes") && unit.contains("KillSignal=SIGTERM"))
    }
}
