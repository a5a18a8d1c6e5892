import ArgumentParser
import Glibc
import Logging
import StockadePolicy
import StockadeSupervisor

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run one command in a sandbox: prepare, spawn, wait, collect, validate, audit, hand to review.",
        usage: "stockade run [OPTIONS] -- CMD [ARG...]"
    )

    @OptionGroup var state: StateOptions

    @Option(help: "Profile name or path.") var profile: String = "default"
    @Option(help: "Memory limit in bytes (suffixes k, m, g).") var memory: String?
    @Option(help: "CPU limit (fractional).") var cpus: Double?
    @Option(help: "Process limit.") var pids: Int?
    @Option(help: "Wall-clock limit in seconds.") var timeout: Double?
    @Option(help: "none, loopback or proxy.") var network: String?
    @Option(name: .customLong("allow-host"), help: "NAME[:PORT], *.SUFFIX[:PORT] or an IP address the egress proxy admits (ports 80 and 443 when omitted); implies --network proxy.")
    var allowHost: [String] = []
    @Option(help: "Forward host 127.0.0.1:HOSTPORT to the worker's WORKERPORT.") var publish: [String] = []
    @Option(help: "HOSTPATH:WORKERPATH[:ro|rw] (ro when omitted).") var volume: [String] = []
    @Option(help: "KEY=VALUE for the worker's environment.") var env: [String] = []
    @Option(help: "Workspace directory shown copy-on-write at /workspace.") var workspace: String?
    @Option(help: "Request bundle directory shown read-only at /sandbox/request.") var request: String?
    @Option(help: "Imported image (NAME[:TAG] or sha256:DIGEST) whose layers are the worker's read-only root.") var image: String?
    @Option(help: "Directory shown read-only as the worker's root instead of the host's system directories.") var rootfs: String?
    @Flag(help: "Print one JSON report on stdout instead of streaming the worker's output.") var json = false

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func validate() throws {
        if let memory, ByteSize.parse(memory) == nil { throw ValidationError("--memory: expected bytes with an optional k, m or g suffix, found \(memory)") }
        if let cpus, !(cpus >= 0.01 && cpus <= 1024) { throw ValidationError("--cpus: expected a number from 0.01 to 1024") }
        if let pids, !(1...65536).contains(pids) { throw ValidationError("--pids: expected 1 to 65536") }
        if let timeout, !(timeout > 0 && timeout <= 86_400) { throw ValidationError("--timeout: expected seconds from 0 (exclusive) to 86400") }
        if let network, Profile.NetworkMode(rawValue: network) == nil { throw ValidationError("--network: expected none, loopback or proxy, found \(network)") }
        for h in allowHost where EgressRule.parse(h) == nil {
            throw ValidationError("--allow-host: expected NAME[:PORT], *.SUFFIX[:PORT] or an IP address (IPv6 in brackets), found \(h)")
        }
        if !allowHost.isEmpty, let network, network != "proxy" {
            throw ValidationError("--allow-host needs --network proxy, not \(network)")
        }
        for p in publish where ProfileDecoder.parsePublish(p) == nil { throw ValidationError("--publish: expected HOSTPORT:WORKERPORT, found \(p)") }
        for v in volume where ProfileDecoder.parseVolume(v) == nil { throw ValidationError("--volume: expected HOSTPATH:WORKERPATH[:ro|rw], found \(v)") }
        for e in env {
            guard let eq = e.firstIndex(of: "="), ProfileDecoder.isValidEnvName(String(e[..<eq])) else {
                throw ValidationError("--env: expected KEY=VALUE with a valid name, found \(e)")
            }
        }
        if image != nil && rootfs != nil { throw ValidationError("--image and --rootfs: give one") }
        if let rootfs, !rootfs.hasPrefix("/") { throw ValidationError("--rootfs: expected an absolute path, found \(rootfs)") }
        // An image's Entrypoint/Cmd may be the command.
        if command.isEmpty && request == nil && image == nil { throw ValidationError("no command: stockade run [OPTIONS] -- CMD [ARG...]") }
    }

    func options() -> RunOptions {
        var o = RunOptions(command: command.isEmpty ? nil : command)
        o.profile = profile
        o.image = image
        o.rootfs = rootfs
        o.memoryBytes = memory.flatMap(ByteSize.parse)
        o.cpus = cpus
        o.pids = pids
        o.timeoutSeconds = timeout
        o.network = network.flatMap(Profile.NetworkMode.init(rawValue:))
        o.publish = publish.compactMap(ProfileDecoder.parsePublish)
        o.allowHosts = allowHost.compactMap(EgressRule.parse)
        o.volumes = volume.compactMap(ProfileDecoder.parseVolume)
        o.environment = env.compactMap { e in
            e.firstIndex(of: "=").map { (String(e[..<$0]), String(e[e.index(after: $0)...])) }
        }
        o.workspace = workspace
        o.request = request
        return o
    }

    @Sendable static func streamToTerminal(_ fd: Int32, _ bytes: [UInt8]) {
        TerminalOutput.write(bytes, to: fd == 1 ? 1 : 2)
    }

    func run() async throws {
        let logger = Logger(label: "stockade")
        let supervisor: Supervisor
        do {
            Supervisor.prepareToSpawn()
            supervisor = try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                                        environment: ProcessEnvironment.current(), logger: logger)
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(125)
        }
        let stream: (@Sendable (Int32, [UInt8]) -> Void)? = json ? nil : Self.streamToTerminal
        let service = RunService(supervisor: supervisor, admission: .init(maxRunning: 1, maxQueued: 0))
        let handle: RunHandle
        do {
            handle = try await service.submit(options(), onOutput: stream)
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(125)
        }
        Interrupts.install(first: { handle.cancel() }, forced: { supervisor.recordForcedExit() })
        let report = await handle.report()
        if json {
            print(report.json())
        } else {
            Console.error(report.summary)
        }
        throw ExitCode(report.exitStatus)
    }
}

/// Worker output shown to an operator: raw to pipes and files, but on a
/// terminal every control character except newline and tab is made visible,
/// so escape sequences cannot drive the operator's terminal.
enum TerminalOutput {
    static func write(_ bytes: [UInt8], to fd: Int32, sanitizing: Bool = true) {
        let out = sanitizing && isatty(fd) == 1 ? sanitize(bytes) : bytes
        var offset = 0
        while offset < out.count {
            let n = out[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }

    /// Control characters made visible: C0 (but newline and tab) as ^X, C1 controls (U+0080–U+009F,
    /// which UTF-8 terminals obey as ESC sequences: U+009B is CSI) and bytes that are not UTF-8 as \xNN.
    static func sanitize(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b < 0x80 {
                if b == 0x0A || b == 0x09 || (b >= 0x20 && b != 0x7F) {
                    out.append(b)
                } else {
                    out += Array("^\(Character(Unicode.Scalar(b ^ 0x40)))".utf8)
                }
                i += 1
                continue
            }
            let length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0
            if length > 0, i + length <= bytes.count,
               let text = String(validating: bytes[i..<(i + length)], as: UTF8.self),
               let scalar = text.unicodeScalars.first, !(0x80...0x9F).contains(scalar.value) {
                out += bytes[i..<(i + length)]
                i += length
            } else {
                out += hex(b)
                i += 1
            }
        }
        return out
    }

    /// One line's field as the operator sees it: every control character, C1 control, invalid
    /// byte and bidirectional override as \xNN, so a worker-chosen name cannot start a new
    /// line, split a tab-separated field or drive the terminal.
    static func field(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            let v = scalar.value
            if v < 0x20 || v == 0x7F || (0x80...0x9F).contains(v) || v == 0x2028 || v == 0x2029
                || (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v) {
                for byte in String(scalar).utf8 { out += String(decoding: hex(byte), as: UTF8.self) }
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func hex(_ byte: UInt8) -> [UInt8] {
        let digits = Array("0123456789ABCDEF".utf8)
        return Array("\\x".utf8) + [digits[Int(byte >> 4)], digits[Int(byte & 0xF)]]
    }
}
