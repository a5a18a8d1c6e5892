import Foundation
import Testing

@Suite("cancellation by SIGTERM and SIGINT, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct CancellationTests {
    /// Starts `stockade ARGS` in the background; returns the process and its stdout pipe.
    static func start(_ h: Harness, _ args: [String], stdin: String? = nil) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.stockade)
        process.arguments = args
        process.environment = ["STOCKADE_STATE_DIR": h.stateDirectory, "PATH": "/usr/bin:/bin"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            try process.run()
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        } else {
            try process.run()
        }
        return (process, out)
    }

    /// Waits until a worker running `marker` in its command line is alive (the run has started).
    static func waitForWorker(_ marker: String, count: Int = 1) -> Bool {
        for _ in 0..<150 {
            let live = workerProcesses().filter { ((try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) ?? "").contains(marker) }
            if live.count >= count { return true }
            usleep(100_000)
        }
        return false
    }

    @Test("SIGTERM to stockade run mid-run: the worker is killed, the report says cancelled, exit 130, the trail has the kill")
    func sigtermCancels() throws {
        let h = try Harness()
        let (process, out) = try Self.start(h, ["run", "--json", "--timeout", "60", "--", "/bin/sh", "-c", "echo started; exec sleep 993"])
        #expect(Self.waitForWorker("993"), "the worker started")
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 130)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let report = try #require((try? JSONSerialization.jsonObject(with: data)) as? [String: Any], "\(String(decoding: data, as: UTF8.self))")
        #expect(report["outcome"] as? String == "cancelled")
        #expect(report["stdout"] as? String == "started\n")
        #expect(Self.waitForWorkerGone("993"), "the worker is gone")
        let runId = try #require(report["runId"] as? String)
        let events = try auditEvents(h, ["--run", runId])
        #expect(events.contains { $0["kind"] as? String == "kill" && ($0["detail"] as? [String: Any])?["reason"] as? String == "cancelled" })
        let finished = events.first { $0["kind"] as? String == "run.finished" }
        #expect(finished != nil)
        let runs = try h.stockade(["audit", "runs", "--json"])
        #expect(runs.stdout.contains("\"cancelled\""), "\(runs.stdout)")
        // The run's cgroup is gone (its hierarchies stay).
        for path in try runCgroupPaths(h, runId) {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) is still there")
            #expect(FileManager.default.fileExists(atPath: (path as NSString).deletingLastPathComponent))
        }
    }

    /// The run cgroups named for process `pid` (`p-<pid namespace>-<pid>-<start>-<n>`) anywhere in the
    /// cgroup hierarchies: every v1 hierarchy's `stockade/`, or v2's, wherever the process was.
    static func runCgroups(ofProcess pid: Int32) -> [String] {
        var found: [String] = []
        func walk(_ dir: String, depth: Int) {
            guard depth <= 6, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names {
                let path = dir + "/" + name
                var st = stat()
                guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { continue }
                if name.hasPrefix("p-") && name.contains("-\(pid)-") { found.append(path) } else { walk(path, depth: depth + 1) }
            }
        }
        walk("/sys/fs/cgroup", depth: 0)
        return found
    }

    /// Starts `stockade ARGS` 80 times and sends each SIGINT after 0, 0.5, 1 … 39.5 ms: the window a
    /// start's interrupt handling guards (from the cgroup made ahead to the run's submission) is a few
    /// milliseconds wide, some 15 ms after the start of a debug build. Each must end by the signal
    /// itself (before anything was made) or cancelled (130), with no worker running `marker` and no
    /// cgroup of it left.
    static func interruptSweep(_ h: Harness, _ args: [String], marker: String) throws {
        for step in 0..<80 {
            let delayMillis = Double(step) / 2
            let (process, _) = try start(h, args)
            usleep(UInt32(delayMillis * 1000))
            kill(process.processIdentifier, SIGINT)
            process.waitUntilExit()
            let byTheSignal = process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGINT
            #expect(byTheSignal || process.terminationStatus == 130, "\(delayMillis) ms: \(process.terminationReason) \(process.terminationStatus)")
            #expect(waitForWorkerGone(marker), "\(delayMillis) ms: the worker is gone")
            let left = runCgroups(ofProcess: process.processIdentifier)
            #expect(left.isEmpty, "interrupted after \(delayMillis) ms, its cgroups stayed: \(left)")
        }
    }

    @Test("an interrupt at any moment of a local run's start ends it with nothing of it left: no worker, no cgroup")
    func interruptDuringStart() throws {
        let h = try Harness()
        _ = try h.run([], ["/bin/true"])  // the state directory made and migrated: the runs below start quicker
        try Self.interruptSweep(h, ["run", "--json", "--timeout", "60", "--", "/bin/sleep", "991"], marker: "991")
    }

    @Test("an interrupt at any moment of a batch's start ends it with nothing of it left: no worker, no cgroup")
    func interruptDuringBatchStart() throws {
        let h = try Harness()
        let requests = h.stateDirectory + "/requests.jsonl"
        try #"{"id":"a","command":["/bin/sleep","990"],"timeout":60}"#.appending("\n").write(toFile: requests, atomically: true, encoding: .utf8)
        _ = try h.run([], ["/bin/true"])
        try Self.interruptSweep(h, ["batch", "--parallel", "2", requests], marker: "990")
    }

    static func waitForWorkerGone(_ marker: String) -> Bool {
        for _ in 0..<50 {
            if workerProcesses().allSatisfy({ !((try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) ?? "").contains(marker) }) { return true }
            usleep(100_000)
        }
        return false
    }

    @Test("SIGINT to stockade batch cancels every run under way, each gets a cancelled report, exit 130")
    func sigintCancelsBatch() throws {
        let h = try Harness()
        let line = #"{"id":"x","command":["/bin/sleep","992"],"timeout":60}"#
        let (process, out) = try Self.start(h, ["batch", "--parallel", "2", "-"], stdin: line.replacingOccurrences(of: "\"x\"", with: "\"a\"") + "\n" + line.replacingOccurrences(of: "\"x\"", with: "\"b\"") + "\n")
        #expect(Self.waitForWorker("992", count: 2), "both workers started")
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        #expect(process.terminationStatus == 130)
        let lines = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        let outcomes = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }.compactMap { $0["outcome"] as? String }
        #expect(outcomes == ["cancelled", "cancelled"], "\(lines)")
        #expect(Self.waitForWorkerGone("992"))
    }
}
