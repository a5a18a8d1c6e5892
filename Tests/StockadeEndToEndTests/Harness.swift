import Foundation
import Testing

/// Runs the built `stockade` binary as a user would, in a fresh state directory.
struct Harness {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String

        /// The `--json` report.
        func report() throws -> [String: Any] {
            let data = Data(stdout.utf8)
            return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "a JSON object on stdout: \(stdout) \(stderr)")
        }
    }

    /// The build directory holding `stockade` and `stockade-probe` (next to the test bundle).
    static let binDirectory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while url.path != "/" {
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("stockade").path) { return url.path }
            url = url.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    static var stockade: String { binDirectory + "/stockade" }
    static var probe: String { binDirectory + "/stockade-probe" }

    /// Sandboxed runs need root (to map ids and create cgroups) and user namespaces.
    static let canSandbox: Bool = {
        guard getuid() == 0 else { return false }
        let max = (try? String(contentsOfFile: "/proc/sys/user/max_user_namespaces", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        return max > 0 && FileManager.default.fileExists(atPath: "/proc/self/ns/user")
    }()

    let stateDirectory: String

    init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        stateDirectory = dir.path
    }

    /// `stockade ARGS` with `--state-dir` added after the subcommand(s) that take it.
    func stockade(_ args: [String], environment: [String: String] = [:], stdin: String? = nil) throws -> Result {
        try Harness.exec(Harness.stockade, args, environment: environment.merging(["STOCKADE_STATE_DIR": stateDirectory]) { $1 }, stdin: stdin)
    }

    /// `stockade run --json [OPTIONS] -- CMD...`, the probe mounted at /probe/stockade-probe.
    func run(_ options: [String] = [], _ command: [String], environment: [String: String] = [:]) throws -> Result {
        try stockade(["run", "--json", "--volume", "\(Harness.probe):/probe/stockade-probe:ro"] + options + ["--"] + command,
                     environment: environment)
    }

    func probe(_ name: String, _ args: [String] = [], options: [String] = []) throws -> Result {
        try run(options, ["/probe/stockade-probe", name] + args)
    }

    /// The same probe unsandboxed: the positive control.
    static func probeUnsandboxed(_ name: String, _ args: [String] = []) throws -> Result {
        try exec(probe, [name] + args)
    }

    static func exec(_ path: String, _ args: [String], environment: [String: String] = [:], stdin: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            try process.run()
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        } else {
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
        // A hung `stockade` fails its test and is killed, instead of holding the whole suite.
        let watchdog = Watchdog(pid: process.processIdentifier, seconds: Harness.deadlineSeconds)
        defer {
            watchdog.finish()
            if let diagnosis = watchdog.diagnosis {
                Issue.record("stockade \(args.prefix(3).joined(separator: " ")) did not exit within \(Harness.deadlineSeconds) s and was killed: \(diagnosis)")
            }
        }
        // Read both pipes concurrently so neither fills while the other is drained.
        let errData = LockedData()
        let reader = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errData.done { usleep(1000) }
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData.value, as: UTF8.self))
    }
}

extension Harness {
    /// No `stockade` command of the suite takes a minute; one that takes this long is hung.
    static let deadlineSeconds = 240
}

/// Kills `pid` with SIGKILL if `finish()` is not called within `seconds`, after noting what each of
/// its threads and its children were waiting in (the workers die with it: parent-death signal).
final class Watchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    private var note: String?

    init(pid: pid_t, seconds: Int) {
        Thread { [self] in
            for _ in 0..<(seconds * 10) {
                if self.isDone { return }
                usleep(100_000)
            }
            let text = Watchdog.describe(pid)
            self.lock.lock()
            let fire = !self.done
            if fire { self.note = text }
            self.lock.unlock()
            if fire { kill(pid, SIGKILL) }
        }.start()
    }

    private var isDone: Bool { lock.lock(); defer { lock.unlock() }; return done }
    func finish() { lock.lock(); done = true; lock.unlock() }
    var diagnosis: String? { lock.lock(); defer { lock.unlock() }; return note }

    /// Each thread's state and kernel wait channel, and the same for every direct child.
    static func describe(_ pid: pid_t) -> String {
        func threads(_ pid: pid_t) -> String {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            return tasks.sorted().map { tid in
                let wchan = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/wchan", encoding: .utf8)) ?? "?"
                let comm = ((try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8)) ?? "?")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                return "\(tid) \(comm) in \(wchan)"
            }.joined(separator: ", ")
        }
        var lines = ["pid \(pid): \(threads(pid))"]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let child = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, Int32(fields[1]) == pid else { continue }
            lines.append("child \(child): \(threads(child))")
        }
        return lines.joined(separator: "; ")
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var finished = false
    func set(_ d: Data) { lock.lock(); data = d; finished = true; lock.unlock() }
    var done: Bool { lock.lock(); defer { lock.unlock() }; return finished }
    var value: Data { lock.lock(); defer { lock.unlock() }; return data }
}

extension Dictionary where Key == String, Value == Any {
    func string(_ key: String) -> String? { self[key] as? String }
    func int(_ key: String) -> Int? { (self[key] as? NSNumber)?.intValue }
    var violationSyscalls: [String] {
        ((self["violations"] as? [[String: Any]]) ?? []).compactMap { $0["syscall"] as? String }
    }
}
