import ArgumentParser
import Glibc
import Logging
import StockadeLinux
import StockadeSupervisor

struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "Many runs in one supervisor: one JSON request a line in, one JSON report a line out as each finishes.",
        discussion: """
            Each input line is an object with the keys of `stockade run`'s flags: {"id": "t1", "command": ["prog", "arg"], \
            "profile": "default", "memory": "64m", "cpus": 0.5, "pids": 32, "timeout": 10, "network": "none", \
            "env": {"K": "V"}, "volumes": ["/h:/w:ro"], "publish": ["8080:80"], "workspace": "/dir", "request": "/dir", \
            "labels": {"k": "v"}, "name": "n"} (all but command optional). Each output line is the `run --json` report \
            plus the request's id and its input line number (`line`); an id used twice is refused. \
            A line that cannot be read gets a setup-failed report naming the offending key. \
            Exit status: 0 when every line was a valid request, 1 otherwise.
            """
    )

    @OptionGroup var state: StateOptions
    @OptionGroup var remote: HostOptions
    @Option(help: "How many runs at once (admission limit; with --host, how many of this batch's runs are under way on the service at once).") var parallel: Int = 1
    @Argument(help: "File of JSON request lines, or - for standard input.") var file: String

    func validate() throws {
        if !(1...256).contains(parallel) { throw ValidationError("--parallel: expected 1 to 256") }
        if try remote.client() != nil, state.stateDir != nil {
            throw ValidationError("--state-dir: with --host the service's own state directory is used; leave --state-dir out")
        }
    }

    func run() async throws {
        if let client = try remote.client() { return try await run(through: client) }
        guard geteuid() == 0 else {
            Console.error("stockade batch: \(Run.needsRoot)")
            throw ExitCode(1)
        }
        // Watched before the supervisor makes cgroups ahead: an interrupt that comes before the
        // service exists closes it as soon as it does (no run starts; those cgroups go at the end).
        let interrupts = InterruptRelay.watching()
        let supervisor: Supervisor
        do {
            Supervisor.prepareToSpawn(concurrency: parallel, ahead: true)
            // Up to 256 runs at once, each with its pipes and its egress relays: not the usual 1024.
            _ = DescriptorLimit.raise()
            supervisor = try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                                        environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"), store: resolveStore(state, nil),
                                        cgroupsAhead: min(parallel, 4))
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(1)
        }
        let fd: Int32 = file == "-" ? 0 : open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            Console.error("stockade: cannot open \(file): \(String(cString: strerror(errno)))")
            throw ExitCode(1)
        }
        let lines = LineReader(fd: fd, maxLine: 1 << 20)
        // Admission is the service's: `parallel` runs at once and as many waiting; reading the
        // next line waits while both are full, so a long input never piles up in memory.
        let service = RunService(supervisor: supervisor, admission: .init(maxRunning: parallel, maxQueued: parallel))
        // An interrupt cancels every run under way and stops reading requests.
        interrupts.onForced { supervisor.recordForcedExit() }
        interrupts.onCancel { Task { await service.cancelAll() } }
        let invalid = await withTaskGroup(of: Bool.self) { group in
            var invalid = 0
            var lineNumber = 0
            // Ids given so far and their lines: a report must name one request only.
            var seen: [String: Int] = [:]
            while await !service.isClosed, let line = lines.next() {
                lineNumber += 1
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                let number = lineNumber
                var parsed: Result<BatchRequest, BatchRequest.Failure>? = line.count > (1 << 20) ? nil
                    : Result(catching: { () throws(BatchRequest.Failure) in try BatchRequest.parse(line) })
                if case .success(let request)? = parsed, let problem = request.withoutNodesProblem("stockade batch") {
                    parsed = .failure(problem)
                }
                if case .success(let request)? = parsed, let id = request.id {
                    if let first = seen[id] {
                        parsed = .failure(BatchRequest.Failure(id: id, description: "id: \"\(id)\" was already used on line \(first): ids must be unique"))
                    } else {
                        seen[id] = number
                    }
                }
                switch parsed {
                case .success(let request)?:
                    guard let handle = try? await service.submit(request.options, whenFull: .wait) else { break }
                    group.addTask {
                        var report = await handle.report()
                        report.requestId = request.id
                        report.line = number
                        Console.out(report.json())
                        return true
                    }
                case .failure(let failure)?:
                    var report = supervisor.rejectedRequest(reason: "line \(number): \(failure.description)")
                    report.requestId = failure.id
                    report.line = number
                    Console.out(report.json())
                    invalid += 1
                case nil:
                    var report = supervisor.rejectedRequest(reason: "line \(number): longer than 1 MiB")
                    report.line = number
                    Console.out(report.json())
                    invalid += 1
                }
            }
            for await ok in group where !ok { invalid += 1 }
            return invalid
        }
        if fd != 0 { close(fd) }
        supervisor.closeCgroups()
        if await service.isClosed { throw ExitCode(130) }
        if invalid > 0 { throw ExitCode(1) }
    }
}

/// Reads lines from a descriptor with a bound on each line's length (longer
/// lines are returned truncated to maxLine + 1 bytes, so the caller can refuse them).
final class LineReader {
    private let fd: Int32
    private let maxLine: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false

    init(fd: Int32, maxLine: Int) {
        self.fd = fd
        self.maxLine = maxLine
    }

    func next() -> [UInt8]? {
        var line: [UInt8] = []
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0A) {
                if line.count <= maxLine { line += buffer[start..<min(nl, start + maxLine + 1 - line.count)] }
                start = nl + 1
                return line
            }
            if line.count <= maxLine { line += buffer[start..<min(buffer.count, start + maxLine + 1 - line.count)] }
            buffer.removeAll(keepingCapacity: true)
            start = 0
            if eof { return line.isEmpty ? nil : line }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { eof = true; continue }
            buffer = Array(chunk[0..<n])
        }
    }
}
