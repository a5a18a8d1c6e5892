import ArgumentParser
import Glibc
import Logging
import StockadeClient
import StockadePolicy
import StockadeSupervisor
import Synchronization

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run one command in a sandbox: prepare, spawn, wait, collect, validate, audit, hand to review.",
        usage: "stockade run [OPTIONS] -- CMD [ARG...]"
    )

    @OptionGroup var state: StateOptions
    @OptionGroup var remote: HostOptions

    @Option(help: "Profile name or path.") var profile: String = "default"
    @Option(parsing: .unconditional, help: "Memory limit: bytes or a size such as 512k, 64m, 64MiB, 1.5g (binary units; at least 4m).")
    var memory: String?
    @Option(parsing: .unconditional, help: "CPU limit (fractional, at most the host's CPU count).") var cpus: Double?
    @Option(parsing: .unconditional, help: "Process limit (1 to 65536).") var pids: Int?
    @Option(parsing: .unconditional, help: "Wall-clock limit: seconds or a duration such as 10s, 1.5s, 5m, 1h.") var timeout: String?
    @Option(help: "none, loopback or proxy.") var network: String?
    @Option(name: .customLong("allow-host"), help: "NAME[:PORT], *.SUFFIX[:PORT] or an IP address the egress proxy admits (ports 80 and 443 when omitted); implies --network proxy.")
    var allowHost: [String] = []
    @Option(help: "Forward host 127.0.0.1:HOSTPORT to the worker's WORKERPORT (needs a network: not with --network none).")
    var publish: [String] = []
    @Option(help: "HOSTPATH:WORKERPATH[:ro|rw] (ro when omitted).") var volume: [String] = []
    @Option(help: "KEY=VALUE for the worker's environment.") var env: [String] = []
    @Option(help: "A file of KEY=VALUE lines for the worker's environment (docker's format: # comments, KEY alone passes this process's value).")
    var envFile: [String] = []
    @Option(help: "KEY=VALUE recorded with the run (repeatable); shown and filtered by `audit runs`.") var label: [String] = []
    @Option(help: "A name for the run, recorded with it and shown by `audit runs`.") var name: String?
    @Flag(name: [.short, .long], help: "Pass this process's standard input to the worker (through a pipe; never a terminal).")
    var interactive = false
    @Option(help: "Workspace directory shown copy-on-write at /workspace.") var workspace: String?
    @Option(help: "Request bundle directory shown read-only at /sandbox/request.") var request: String?
    @Option(help: "Imported image (NAME[:TAG] or sha256:DIGEST) whose layers are the worker's read-only root.") var image: String?
    @Option(help: "Directory shown read-only as the worker's root instead of the host's system directories.") var rootfs: String?
    @Flag(help: "Print one JSON report on stdout instead of streaming the worker's output.") var json = false

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    /// The flags as plain values. What `run` does is `RunFlags`'s: the hand reader (`FastRun`) builds
    /// one without this type's property wrappers, whose first construction alone costs a one-shot
    /// `run` a generic instantiation and protocol-conformance scan per wrapper kind.
    var flags: RunFlags {
        RunFlags(stateDir: state.stateDir, host: remote.host, profile: profile, memory: memory, cpus: cpus, pids: pids,
                 timeout: timeout, network: network, allowHost: allowHost, publish: publish, volume: volume, env: env,
                 envFile: envFile, label: label, name: name, interactive: interactive, workspace: workspace, request: request,
                 image: image, rootfs: rootfs, json: json, command: command)
    }

    func validate() throws {
        try flags.validate()
    }

    func run() async throws {
        try await flags.run()
    }

    /// Said before anything is touched, so the one line says what to do.
    static let needsRoot = "needs root: each worker runs under host ids of its own (a user namespace mapping beyond the caller's uid) in a cgroup of its own, which only root may set up; run it as root (e.g. with sudo)"

    @Sendable static func streamToTerminal(_ fd: Int32, _ bytes: [UInt8]) {
        TerminalOutput.write(bytes, to: fd == 1 ? 1 : 2)
    }
}

/// `stockade run`'s flags as plain values, from either reader: ArgumentParser's `Run` (`Run.flags`) or
/// the hand reader `FastRun`. The command itself: validation, the run options, the run.
struct RunFlags {
    var stateDir: String?
    var host: String?
    var profile = "default"
    var memory: String?
    var cpus: Double?
    var pids: Int?
    var timeout: String?
    var network: String?
    var allowHost: [String] = []
    var publish: [String] = []
    var volume: [String] = []
    var env: [String] = []
    var envFile: [String] = []
    var label: [String] = []
    var name: String?
    var interactive = false
    var workspace: String?
    var request: String?
    var image: String?
    var rootfs: String?
    var json = false
    var command: [String] = []

    /// The service to call (`--host`, else `$STOCKADE_HOST`), or nil to run in this process.
    func client() throws -> ServiceClient? {
        try HostOptions.client(host: host)
    }

    var stateDirectory: String {
        StateDirectory.resolve(explicit: stateDir, environment: ProcessEnvironment.current())
    }

    func validate() throws {
        if image != nil && rootfs != nil { throw ValidationError("--image and --rootfs: give one") }
        if let rootfs, !rootfs.hasPrefix("/") { throw ValidationError("--rootfs: expected an absolute path, found \(rootfs)") }
        _ = try options(readingFiles: false)
        // An image's Entrypoint/Cmd may be the command.
        if command.isEmpty && request == nil && image == nil { throw ValidationError("no command: stockade run [OPTIONS] -- CMD [ARG...]") }
        if try client() != nil {
            if interactive {
                throw ValidationError("-i/--interactive: the service's API takes no standard input; run without --host on the service's host, or hand the input over as a file (--request DIR or --workspace DIR)")
            }
            if stateDir != nil {
                throw ValidationError("--state-dir: with --host the service's own state directory is used; leave --state-dir out")
            }
        }
    }

    /// The flags as run options; every error names its flag and what it must be. Files are read
    /// once only (`readingFiles`), after validation: an `--env-file` may be a pipe.
    func options(readingFiles: Bool) throws -> RunOptions {
        var o = RunOptions(command: command.isEmpty ? nil : command)
        do throws(RunValues.Invalid) {
            o.profile = profile
            o.image = image
            o.rootfs = rootfs
            o.memoryBytes = try memory.map { (text) throws(RunValues.Invalid) in try RunValues.memory(text, field: "--memory") }
            o.cpus = try cpus.map { (value) throws(RunValues.Invalid) in try RunValues.cpus(value, field: "--cpus") }
            o.pids = try pids.map { (value) throws(RunValues.Invalid) in try RunValues.pids(Int64(value), field: "--pids") }
            o.timeoutSeconds = try timeout.map { (text) throws(RunValues.Invalid) in try RunValues.timeout(text, field: "--timeout") }
            if let network {
                guard let mode = Profile.NetworkMode(rawValue: network) else {
                    throw RunValues.Invalid(description: "--network: must be none, loopback or proxy, found \(network)")
                }
                o.network = mode
            }
            o.allowHosts = try allowHost.map { (text) throws(RunValues.Invalid) in try RunValues.allowHost(text, field: "--allow-host") }
            try RunValues.allowHosts(o.network, count: allowHost.count, fields: ("--network", "--allow-host"))
            for p in publish { o.publish.append(try RunValues.publish(p, field: "--publish")) }
            try RunValues.network(o.network, publishing: !publish.isEmpty, fields: ("--network", "--publish"))
            for v in volume {
                guard let parsed = ProfileDecoder.parseVolume(v) else {
                    throw RunValues.Invalid(description: "--volume: must be HOSTPATH:WORKERPATH[:ro|rw], found \(v)")
                }
                o.volumes.append(parsed)
            }
            // --env-file first, then --env: a flag given on the command line wins, as in docker.
            for file in envFile where readingFiles {
                o.environment += try EnvFile.read(file, hostEnvironment: ProcessEnvironment.current())
            }
            for e in env {
                guard let eq = e.firstIndex(of: "="), ProfileDecoder.isValidEnvName(String(e[..<eq])) else {
                    throw RunValues.Invalid(description: "--env: must be KEY=VALUE with a valid name, found \(e)")
                }
                o.environment.append((String(e[..<eq]), String(e[e.index(after: eq)...])))
            }
            for l in label {
                let (key, value) = try RunValues.label(l, field: "--label")
                o.labels[key] = value
            }
            o.name = try name.map { (text) throws(RunValues.Invalid) in try RunValues.name(text, field: "--name") }
        } catch {
            throw ValidationError(error.description)
        }
        o.workspace = workspace
        o.request = request
        if interactive { o.input = 0 }
        return o
    }

    func run() async throws {
        // Through the service: its user runs the worker; this process needs only the socket.
        if let client = try client() { return try run(through: client) }
        try await runHere()
    }

    /// The run in this process: root, a supervisor of its own, the report when the worker ends.
    func runHere() async throws {
        guard geteuid() == 0 else {
            Console.error("stockade run: \(Run.needsRoot)")
            throw ExitCode(125)
        }
        let logger = Logger(label: "stockade")
        // The spawn helper first: an env file may hold secrets, which it must not carry.
        Supervisor.prepareToSpawn(oneRun: true)
        let options: RunOptions
        do {
            options = try self.options(readingFiles: true)
        } catch {
            Console.error("stockade run: \(error)")
            throw ExitCode(125)
        }
        // Watched from before anything is made for the run (its cgroup is made ahead, next): an
        // interrupt that comes before the run is submitted cancels it once it is, and its cgroup goes
        // as a cancelled run's does, instead of staying behind until a later supervisor's stale scan.
        let interrupts = InterruptRelay.watching()
        let supervisor: Supervisor
        do {
            let directory = stateDirectory
            let catalog = ProfileCatalog.standard()
            // The run's profile, root skeleton, seccomp program and cgroup are made while the store opens
            // and the run is planned and recorded.
            let ahead = RunAhead(options, catalog: catalog, stateDirectory: directory)
            supervisor = try Supervisor(stateDirectory: directory, catalog: catalog,
                                        environment: ProcessEnvironment.current(), logger: logger, store: resolveStore(stateDirectory: directory, nil),
                                        shortLived: true, ahead: ahead)
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(125)
        }
        interrupts.onForced { supervisor.recordForcedExit() }
        let stream: (@Sendable (Int32, [UInt8]) -> Void)? = json ? nil : Run.streamToTerminal
        let service = RunService(supervisor: supervisor, admission: .init(maxRunning: 1, maxQueued: 0))
        let handle: RunHandle
        do {
            handle = try await service.submit(options, onOutput: stream)
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(125)
        }
        interrupts.onCancel { handle.cancel() }
        let report = await handle.report()
        if json {
            print(report.json())
        } else {
            Console.error(report.summary)
        }
        // The report comes first; the run's cgroup is removed before the process ends.
        supervisor.closeCgroups()
        throw ExitCode(report.exitStatus)
    }
}

/// What an interrupt of a local `run` or `batch` reaches, from the moment it is watched (before
/// anything is made for a run): the first one cancels what `onCancel` names, at once when it is named
/// after the interrupt came; a second one records what `onForced` names before the process ends.
final class InterruptRelay: Sendable {
    private struct State {
        var interrupted = false
        var cancel: (@Sendable () -> Void)?
        var forced: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    /// Watches SIGINT and SIGTERM (`Interrupts`) for this relay.
    static func watching() -> InterruptRelay {
        let relay = InterruptRelay()
        Interrupts.install(first: { relay.cancel() }, forced: { relay.forced() })
        return relay
    }

    private func cancel() {
        state.withLock { s -> (@Sendable () -> Void)? in
            s.interrupted = true
            return s.cancel
        }?()
    }

    private func forced() {
        state.withLock { $0.forced }?()
    }

    func onCancel(_ body: @escaping @Sendable () -> Void) {
        let interrupted = state.withLock { s -> Bool in
            s.cancel = body
            return s.interrupted
        }
        if interrupted { body() }
    }

    func onForced(_ body: @escaping @Sendable () -> Void) {
        state.withLock { $0.forced = body }
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
