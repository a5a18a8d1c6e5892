import ArgumentParser
import Glibc
import Logging
import StockadePolicy
import StockadeSupervisor
import StockadeVerify

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Prove each control on this host with the built-in probes; exit 0 only if every applicable control holds.",
        discussion: "Each probe runs inside a real sandboxed run under the profile and once unsandboxed as a positive control. Verdicts: enforced (the control's own mechanism stopped the probe, and the evidence says which: the filter recorded the call, the pids counter moved, the OOM kill), not-enforced (the probe did it, or the call got past the filter), not-applicable (the profile grants it), inconclusive (the host cannot do it either, the probe could not tell, or another mechanism stopped it before this control was reached). The verification and its probe runs are kept in the audit trail; the probe runs' directories are removed. Verdicts are coloured on a terminal (not with NO_COLOR, never in a pipe or with --json). --list prints the catalogue (id, threat class, probe, what it proves, the incident class it guards against). --controls FILE checks a team's required controls per profile (exit 1 when one is not as required). --profiles DIR verifies every profile in DIR and prints profile x control. --format junit|sarif writes reports for CI and code-scanning dashboards."
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, junit, sarif
    }

    @OptionGroup var state: StateOptions
    @Option(help: "Profile name or path (default: default).") var profile: String?
    @Option(help: "Verify every profile (*.json) in this folder and print profile x control.") var profiles: String?
    @Flag(help: "Print one JSON object instead of a table (the same as --format json).") var json = false
    @Option(help: "Output: text (a table, the default), json, junit (JUnit XML) or sarif (SARIF 2.1.0).") var format: Format?
    @Flag(help: "Print the catalogue of controls and exit (with --json or --format json: a JSON array).") var list = false
    @Option(help: "A JSON file of the controls each profile must hold (see docs/CONTRACT.md); exit 1 when one is not as required.")
    var controls: String?
    @Option(help: "Verify only these controls: an id, a prefix ending in *, class:N (repeatable).") var only: [String] = []
    @Option(help: "Run the probes on this imported image's root (stockade image import) instead of the profile's.") var image: String?

    var resolvedFormat: Format { format ?? (json ? .json : .text) }

    func validate() throws {
        if json, let format, format != .json { throw ValidationError("--json and --format \(format.rawValue) disagree") }
        if profile != nil && profiles != nil { throw ValidationError("--profile and --profiles: give one") }
        for selector in only where ControlCatalog.select(selector).isEmpty {
            throw ValidationError("--only: \(selector) names no control (an id, a prefix ending in *, class:N; see stockade verify --list)")
        }
        if list && (resolvedFormat == .junit || resolvedFormat == .sarif) {
            throw ValidationError("--list: text or json only")
        }
    }

    /// The controls to run: every one, or those `--only` names, in catalogue order.
    var selectedControls: [Control] {
        guard !only.isEmpty else { return ControlCatalog.all }
        let ids = Set(only.flatMap { ControlCatalog.select($0).map(\.id) })
        return ControlCatalog.all.filter { ids.contains($0.id) }
    }

    func run() async throws {
        if list {
            Console.out(resolvedFormat == .json ? JSONValue.array(ControlCatalog.all.map(\.catalogueJSON)).serialized() : ControlCatalog.listing())
            return
        }
        // The team's file is read before anything runs: a mistake in it costs no probe run.
        var requirements: ControlRequirements?
        if let controls {
            do {
                let bytes = try Self.read(controls)
                requirements = try ControlRequirements.parse(bytes)
            } catch {
                Console.error("stockade verify: --controls \(controls): \(error)")
                throw ExitCode(2)
            }
        }
        let names: [String]
        do {
            names = try profiles.map(Self.profileFiles) ?? [profile ?? "default"]
        } catch {
            Console.error("stockade verify: --profiles: \(error)")
            throw ExitCode(2)
        }
        guard getuid() == 0 else {
            Console.error("stockade verify: needs root (sandboxed runs map ids and the positive controls try privileged calls)")
            throw ExitCode(1)
        }
        guard let probe = Verifier.probeNextToExecutable() else {
            Console.error("stockade verify: no executable stockade-probe next to this stockade binary: build the stockade-probe product")
            throw ExitCode(1)
        }
        var reports: [VerificationReport] = []
        do {
            Supervisor.prepareToSpawn(concurrency: 4, ahead: true)
            let supervisor = try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                                            environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"), store: resolveStore(state, nil),
                                            cgroupsAhead: 1)
            defer { supervisor.closeCgroups() }
            for name in names {
                var verifier = Verifier(supervisor: supervisor, probePath: probe, profile: name, controls: selectedControls)
                verifier.image = image
                let report = try await verifier.run()
                do {
                    try verifier.record(report)
                } catch let error as Verifier.CleanupFailure {
                    Console.error("stockade verify: recorded, but cannot remove the probe run directories: \(error.underlying)")
                }
                reports.append(report)
            }
        } catch {
            Console.error("stockade verify: \(error)")
            throw ExitCode(1)
        }

        var unmet: [ControlRequirements.Unmet] = []
        var unnamed: [String] = []
        if let requirements {
            for (index, report) in reports.enumerated() {
                if let found = requirements.unmet(in: report, requestedAs: names[index]) { unmet += found } else { unnamed.append(report.profile) }
            }
        }
        let requirementsJSON = controls.map { ControlRequirements.resultJSON(file: $0, unmet: unmet, profilesNotNamed: unnamed) }
        write(reports, requirements: requirementsJSON)
        if controls != nil {
            var lines = unmet.map { "required control not held: \($0)" }
            lines += unnamed.map { "the controls file names no requirements for profile \($0) (and no \"*\")" }
            if !lines.isEmpty {
                // Into the table's stream for a person; beside a machine format, so that stays parseable.
                let text = lines.joined(separator: "\n")
                if resolvedFormat == .text { Console.out("\n" + text) } else { Console.error(text) }
            } else if resolvedFormat == .text {
                Console.out("\nevery required control of \(controls ?? "") holds")
            }
        }
        let passed = reports.allSatisfy(\.passed) && unmet.isEmpty && unnamed.isEmpty
        throw ExitCode(passed ? 0 : 1)
    }

    func write(_ reports: [VerificationReport], requirements: JSONValue?) {
        func adding(_ value: JSONValue) -> JSONValue {
            guard let requirements, case .object(var object) = value else { return value }
            object["requirements"] = requirements
            return .object(object)
        }
        switch resolvedFormat {
        case .json:
            let value = reports.count == 1 && profiles == nil ? reports[0].jsonValue : VerificationFormats.matrixJSON(reports)
            Console.out(adding(value).serialized())
        case .junit:
            Console.out(VerificationFormats.junit(reports))
        case .sarif:
            Console.out(VerificationFormats.sarif(reports, toolVersion: Stockade.configuration.version).serialized(pretty: true))
        case .text:
            if profiles != nil {
                Console.out(VerificationFormats.matrix(reports))
                return
            }
            // Colour only for a person at a terminal: never into a pipe or a file, never in JSON.
            let colored = isatty(STDOUT_FILENO) == 1 && ProcessEnvironment.current()["NO_COLOR"] == nil
            for report in reports {
                if colored {
                    // Every field escaped for the terminal; the colour codes are the only control bytes written.
                    Console.outUnescaped(report.table(colored: true, escape: TerminalOutput.field))
                } else {
                    Console.out(report.table)
                }
            }
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// A small regular file's bytes (the controls file), without following a final symlink.
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw Failure(description: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw Failure(description: "not a regular file") }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Failure(description: "cannot read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            out += buffer[0..<n]
            if out.count > ControlRequirements.maxBytes { throw Failure(description: "larger than \(ControlRequirements.maxBytes) bytes") }
        }
        return out
    }

    /// The profile files in `directory` (`*.json`, regular files), by name.
    static func profileFiles(_ directory: String) throws -> [String] {
        guard let dir = opendir(directory) else { throw Failure(description: "cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".json"), !name.hasPrefix(".") else { continue }
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
            names.append(path)
        }
        guard !names.isEmpty else { throw Failure(description: "\(directory) holds no *.json profile") }
        return names.sorted()
    }
}
