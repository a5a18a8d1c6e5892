import Foundation
import Testing

/// The spawn helper is its own small program, `stockade-spawn`, executed next to `stockade`: every
/// worker's init is a copy of it, not of the supervisor. Without it, `stockade` forks its helpers;
/// with one that someone else could replace, it runs nothing.
@Suite("the spawn helper binary", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct SpawnHelperTests {
    static var helper: String { Harness.binDirectory + "/stockade-spawn" }

    /// Starts `stockade run ... -- /bin/sh -c 'sleep 5'` with `binary` and returns it once its worker's init
    /// is up, with that init's pid (a child of the supervisor named stockade-init).
    static func startSleeper(_ binary: String, state: String, marker: String) throws -> (Process, pid_t) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        // The marker is in the supervisor's environment, which no worker is given (the plan, and so
        // the init's copy of it, holds the worker's command line: the marker is not there).
        process.arguments = ["run", "--state-dir", state, "--", "/bin/sleep", "5"]
        process.environment = ProcessInfo.processInfo.environment.merging(["STK_TEST_MARKER": marker]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        for _ in 0..<200 {
            if let init_ = children(of: process.processIdentifier).first(where: { comm($0) == "stockade-init" }) {
                return (process, init_)
            }
            usleep(25_000)
        }
        process.terminate()
        throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "no stockade-init appeared under \(binary)"])
    }

    static func children(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { candidate in
            guard let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
                  let close = stat.range(of: ")", options: .backwards) else { return false }
            let fields = stat[close.upperBound...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == pid
        }
    }

    static func comm(_ pid: pid_t) -> String {
        ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether `needle` is anywhere in `pid`'s writable memory (read through /proc/PID/mem, as root).
    static func memoryContains(_ pid: pid_t, _ needle: String) throws -> Bool {
        let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
        let mem = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/\(pid)/mem"))
        defer { try? mem.close() }
        let pattern = Data(needle.utf8)
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].hasPrefix("rw") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16),
                  end - start <= 512 << 20 else { continue }
            do {
                try mem.seek(toOffset: start)
                if let data = try mem.read(upToCount: Int(end - start)), data.range(of: pattern) != nil { return true }
            } catch { continue }  // a guard page or an unreadable mapping
        }
        return false
    }

    @Test("each worker's init is a copy of stockade-spawn: none of the supervisor's binary, memory, environment or command line")
    func initIsTheHelpersCopy() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.helper), "build it: swift build --product stockade-spawn")
        let state = try Harness().stateDirectory
        let marker = "stk-marker-\(UUID().uuidString)"
        let (process, initPid) = try Self.startSleeper(Harness.stockade, state: state, marker: marker)
        defer { process.terminate(); process.waitUntilExit() }
        let supervisor = process.processIdentifier
        let stockadeExe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(supervisor)/exe")
        let helperExe = URL(fileURLWithPath: Self.helper).resolvingSymlinksInPath().path
        // Positive controls: the supervisor maps its binary and holds the marker.
        #expect(try String(contentsOfFile: "/proc/\(supervisor)/maps", encoding: .utf8).contains(stockadeExe + "\n"))
        #expect(try Self.memoryContains(supervisor, marker), "the marker should be in the supervisor's memory")

        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(initPid)/exe") == helperExe)
        let maps = try String(contentsOfFile: "/proc/\(initPid)/maps", encoding: .utf8)
        let mapped = Set(maps.split(separator: "\n").compactMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst(5).first.map(String.init) })
        #expect(mapped.contains(helperExe) && !mapped.contains(stockadeExe), "the init maps the supervisor's binary: \(maps)")
        #expect(maps.split(separator: "\n").count < 40, "an init of a small C program has a few mappings, not \(maps.split(separator: "\n").count)")
        #expect(try !Self.memoryContains(initPid, marker), "the init holds a copy of the supervisor's memory")
        #expect(try Data(contentsOf: URL(fileURLWithPath: "/proc/\(initPid)/environ")).isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: "/proc/\(initPid)/cmdline")).allSatisfy { $0 == 0 })
    }

    /// A directory beside the build's with `stockade` linked into it (same filesystem, so a hard link),
    /// so /proc/self/exe, and where it looks for stockade-spawn, is there; removed by `remove()`.
    struct LonelyStockade {
        let directory: String
        var binary: String { directory + "/stockade" }
        /// Where that `stockade` looks for its spawn helper.
        var helper: String { directory + "/stockade-spawn" }
        let state: String

        init() throws {
            let parent = URL(fileURLWithPath: Harness.binDirectory).resolvingSymlinksInPath().deletingLastPathComponent().path
            directory = parent + "/stk-helper-test-\(UUID().uuidString.prefix(8))"
            state = try Harness().stateDirectory
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            if link(Harness.stockade, binary) != 0 { try FileManager.default.copyItem(atPath: Harness.stockade, toPath: binary) }
        }

        /// `stockade run --json -- /bin/sh -c 'echo ran'` with this `stockade`.
        func runEcho() throws -> Harness.Result {
            try Harness.exec(binary, ["run", "--json", "--state-dir", state, "--", "/bin/sh", "-c", "echo ran"])
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test("without stockade-spawn beside it, stockade forks its helpers and runs as before")
    func forkedHelpersWithoutTheBinary() throws {
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        let r = try lonely.runEcho()
        #expect(r.status == 0 && r.stdout.contains("ran\\n"), "\(r.stdout) \(r.stderr)")
        // The log says which: forked here, executed beside the build's own stockade.
        let logged = try Harness.exec(lonely.binary, ["run", "--state-dir", lonely.state, "--", "/bin/true"], environment: ["STOCKADE_LOG": "debug"])
        #expect(logged.stderr.contains("spawn.helpers") && logged.stderr.contains("forked (no stockade-spawn beside this executable)"), "\(logged.stderr)")
        let executed = try Harness.exec(Harness.stockade, ["run", "--state-dir", lonely.state, "--", "/bin/true"], environment: ["STOCKADE_LOG": "debug"])
        #expect(executed.stderr.contains("executed \(Self.helper)") || executed.stderr.contains("executed " + URL(fileURLWithPath: Self.helper).resolvingSymlinksInPath().path),
                "\(executed.stderr)")
        let (process, initPid) = try Self.startSleeper(lonely.binary, state: lonely.state, marker: "x")
        defer { process.terminate(); process.waitUntilExit() }
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(initPid)/exe") == lonely.binary)
    }

    @Test("a supervisor started with supplementary groups hands none to its workers, its helper executed or forked")
    func noSupplementaryGroups() throws {
        let groups = ["/usr/bin/setpriv", "--groups", "4242,4243"]
        let status = ["/bin/sh", "-c", "grep '^Groups:' /proc/self/status"]
        // The positive control: started this way, a process holds both groups.
        let control = try Harness.exec(groups[0], Array(groups.dropFirst()) + status)
        #expect(control.status == 0 && control.stdout.contains("4242") && control.stdout.contains("4243"), "\(control.stdout) \(control.stderr)")
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        for binary in [Harness.stockade, lonely.binary] {
            let r = try Harness.exec(groups[0], Array(groups.dropFirst()) + [binary, "run", "--json", "--state-dir", lonely.state, "--"] + status)
            let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout) \(r.stderr)")
            let line = (report["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            // Unmapped in the worker's user namespace, an inherited group would show as 65534.
            #expect(line == "Groups:", "\(binary): the worker holds \(line)")
        }
    }

    /// The mount points and per-mount options of `pid`'s mount namespace, in /proc/PID/mountinfo's order.
    static func mounts(_ pid: pid_t) throws -> [(point: String, options: String)] {
        try String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8).split(separator: "\n").map { line in
            let fields = line.split(separator: " ")
            return (fields.count > 5 ? String(fields[4]) : "", fields.count > 5 ? String(fields[5]) : "")
        }
    }

    @Test("every spawn helper, executed or forked, holds a mount namespace of its own: a sealed tmpfs root, the host's /proc (with what is mounted beneath it) and /dev/null; an init's copy carries none of the host's other mounts")
    func minimalMountNamespace() throws {
        let mounts = Self.mounts
        let ownNamespace = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        // The positive control: this process, in the host's namespace, sees mounts outside /proc.
        #expect(try mounts(getpid()).contains { !$0.point.hasPrefix("/proc") && $0.point != "/" && $0.point != "/dev/null" })
        let hostProc = try mounts(getpid()).map(\.point).filter { $0 == "/proc" || $0.hasPrefix("/proc/") }
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        for binary in [Harness.stockade, lonely.binary] {
            let (process, _) = try Self.startSleeper(binary, state: lonely.state, marker: "x")
            defer { process.terminate(); process.waitUntilExit() }
            let helpers = Self.children(of: process.processIdentifier).filter { Self.comm($0) == "stockade-spawn" }
            #expect(!helpers.isEmpty, "no stockade-spawn under \(binary)")
            for helper in helpers {
                let seen = try mounts(helper)
                // Its root, /proc with whatever the host mounts beneath it, /dev/null: nothing else.
                #expect(seen.map(\.point) == ["/"] + hostProc + ["/dev/null"], "\(binary): helper \(helper) sees \(seen.map(\.point))")
                #expect(seen.first?.options.split(separator: ",").contains("ro") == true, "the helper's root is writable: \(seen)")
                #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(helper)/ns/mnt") != ownNamespace)
            }
        }
    }

    @Test("a one-shot run's helper, executed or forked, makes that run's network namespace as it starts and no other: once the worker is up it holds the host's alone, and the worker's is a fresh one")
    func oneShotNetworkNamespaceOnce() throws {
        let hostNet = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        for binary in [Harness.stockade, lonely.binary] {
            let (process, init_) = try Self.startSleeper(binary, state: lonely.state, marker: "x")
            defer { process.terminate(); process.waitUntilExit() }
            let workerNet = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(init_)/ns/net")
            #expect(workerNet.hasPrefix("net:[") && workerNet != hostNet, "\(binary): the worker's network namespace is \(workerNet)")
            let helpers = Self.children(of: process.processIdentifier).filter { Self.comm($0) == "stockade-spawn" }
            #expect(helpers.count == 1, "\(binary): helpers \(helpers)")
            for helper in helpers {
                // The descriptors it holds on network namespaces: its way home (the host's), and with a
                // replacement made after the spawn (batch, serve) a second, fresh one. The run's own is
                // closed once the spawn is answered, a moment after the init appears: waited for (up to
                // 3 s, the worker sleeps 5), so a loaded machine does not catch the helper before it.
                func held() throws -> [String] {
                    try FileManager.default.contentsOfDirectory(atPath: "/proc/\(helper)/fd")
                        .compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(helper)/fd/\($0)") }
                        .filter { $0.hasPrefix("net:[") }
                }
                var seen = try held()
                for _ in 0..<300 where seen != [hostNet] {
                    usleep(10_000)
                    seen = try held()
                }
                #expect(seen == [hostNet], "\(binary): helper \(helper) holds \(seen), the host's is \(hostNet)")
            }
        }
    }

    @Test("what the host mounts under /proc stays under every helper's /proc: a mount on an empty /proc directory is kept and runs go on; a /proc/sys made read-only still keeps an init from mounting a fresh proc, so the run fails closed at its mounts")
    func hostProcRestrictionsKept() throws {
        let state = try Harness().stateDirectory
        // Each in a mount namespace of the test's own, so the host's /proc is never touched.
        func inOwnNamespace(_ setup: String, _ command: String) -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
            process.arguments = ["-m", "--propagation", "private", "/bin/sh", "-c",
                                 setup + " && exec \"$0\" run --json --state-dir \"$1\" -- /bin/sh -c \"$2\"", Harness.stockade, state, command]
            process.standardOutput = Pipe()
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            return process
        }
        func report(_ process: Process) throws -> [String: Any] {
            let data = (process.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(String(decoding: data, as: UTF8.self))")
        }
        let mounted = inOwnNamespace("mount -t tmpfs -o size=4k stk-test /proc/sys/fs/binfmt_misc", "sleep 2; echo ran")
        try mounted.run()
        var helperProc: [String] = []
        for _ in 0..<80 where helperProc.isEmpty {
            usleep(25_000)
            if let helper = Self.children(of: mounted.processIdentifier).first(where: { Self.comm($0) == "stockade-spawn" }),
               let seen = try? Self.mounts(helper) {
                helperProc = seen.map(\.point).filter { $0.hasPrefix("/proc") }
            }
        }
        #expect(helperProc == ["/proc", "/proc/sys/fs/binfmt_misc"], "the helper's /proc: \(helperProc)")
        let ran = try report(mounted)
        #expect(ran["outcome"] as? String == "exited" && ((ran["stdout"] as? String) ?? "").contains("ran"), "\(ran)")

        let sealed = inOwnNamespace("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys", "echo ran")
        try sealed.run()
        let refused = try report(sealed)
        let setup = (refused["setupError"] as? [String: Any]) ?? [:]
        let stage = (setup["stage"] as? String) ?? "", message = (setup["message"] as? String) ?? ""
        #expect(refused["outcome"] as? String == "setup-failed" && stage == "mounts", "\(refused)")
        #expect(message.contains("proc"), "\(refused)")
        #expect(!((refused["stdout"] as? String) ?? "").contains("ran"))
    }

    @Test("a stockade-spawn writable by others is refused: the run fails closed naming it and how to fix it; once fixed it runs")
    func replaceableHelperRefused() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.helper))
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        let planted = lonely.helper
        try FileManager.default.copyItem(atPath: Self.helper, toPath: planted)
        for mode in [0o775, 0o757] {
            #expect(chmod(planted, mode_t(mode)) == 0)
            let r = try lonely.runEcho()
            #expect(r.status == 125, "mode \(String(mode, radix: 8)): \(r.stdout) \(r.stderr)")
            #expect(!r.stdout.contains("ran\\n"), "a worker ran with a replaceable helper")
            // The report's setupError (stdout, --json) and the log line (stderr) both say it.
            let said = r.stdout + r.stderr
            #expect(r.stdout.contains("\"stage\":\"spawn-helper\"") && said.contains(planted) &&
                    said.contains("writable by its group or by others") && said.contains("chmod 0755"), "\(said)")
        }
        // The positive control: the same file, mode 0755, runs.
        #expect(chmod(planted, 0o755) == 0)
        let fixed = try lonely.runEcho()
        #expect(fixed.status == 0 && fixed.stdout.contains("ran\\n"), "\(fixed.stdout) \(fixed.stderr)")
    }

    @Test("a stockade-spawn that is a link, a FIFO, set-user-ID, in a directory others may write, from another build or silent is refused, fail closed")
    func otherHelpersRefused() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.helper))
        let lonely = try LonelyStockade()
        defer { lonely.remove() }
        let planted = lonely.helper
        func refused(_ what: String, _ expected: String) throws {
            let r = try lonely.runEcho()
            let said = r.stdout + r.stderr
            #expect(r.status == 125 && !r.stdout.contains("ran\\n"), "\(what): \(r.status) \(said)")
            #expect(r.stdout.contains("\"stage\":\"spawn-helper\"") && said.contains(expected), "\(what): \(said)")
        }
        // A link to the real helper (which would pass every check of the file itself).
        #expect(symlink(Self.helper, planted) == 0)
        try refused("a symbolic link", "is a symbolic link")
        try FileManager.default.removeItem(atPath: planted)
        // A FIFO: opening it must not wait for a writer.
        #expect(mkfifo(planted, 0o755) == 0)
        try refused("a FIFO", "is not a regular file")
        try FileManager.default.removeItem(atPath: planted)
        try FileManager.default.copyItem(atPath: Self.helper, toPath: planted)
        #expect(chmod(planted, 0o4755) == 0)
        try refused("set-user-ID", "set-user-ID")
        #expect(chmod(planted, 0o755) == 0)
        #expect(chmod(lonely.directory, 0o775) == 0)
        try refused("a group-writable directory", "writable by its group or by others")
        #expect(chmod(lonely.directory, 0o755) == 0)
        // Another build: the same program with its build stamps (__DATE__ __TIME__) changed.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.helper)))
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].map { Array($0.utf8) }
        var stamps = 0
        var i = 0
        while i + 20 <= bytes.count {
            // "Mmm dd yyyy hh:mm:ss": flip the last second digit.
            if bytes[i + 14] == 58, bytes[i + 17] == 58, bytes[i + 3] == 32, (48...57).contains(bytes[i + 19]),
               months.contains(Array(bytes[i..<i + 3])) {
                bytes[i + 19] = bytes[i + 19] == 57 ? 48 : bytes[i + 19] + 1
                stamps += 1
                i += 20
            } else {
                i += 1
            }
        }
        #expect(stamps >= 6, "the helper's build stamps were not found")
        try FileManager.default.removeItem(atPath: planted)
        try Data(bytes).write(to: URL(fileURLWithPath: planted))
        #expect(chmod(planted, 0o755) == 0)
        try refused("another build", "from another build than this stockade")
        // Another program that holds the socket and never answers (sleep, its first argument the
        // supervisor's pid): the start gives up after 10 s instead of hanging.
        try FileManager.default.removeItem(atPath: planted)
        try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: planted)
        #expect(chmod(planted, 0o755) == 0)
        try refused("a program that never answers", "did not answer within 10 s")
        // The positive control: the real helper, copied as it is, serves.
        try FileManager.default.removeItem(atPath: planted)
        try FileManager.default.copyItem(atPath: Self.helper, toPath: planted)
        let fine = try lonely.runEcho()
        #expect(fine.status == 0 && fine.stdout.contains("ran\\n"), "\(fine.stdout) \(fine.stderr)")
    }

    @Test("stockade in a directory whose name is not UTF-8 still finds the stockade-spawn beside it")
    func helperBesideNonUTF8Directory() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.helper))
        let parent = URL(fileURLWithPath: Harness.binDirectory).resolvingSymlinksInPath().deletingLastPathComponent().path
        let state = try Harness().stateDirectory
        // The shell handles the name's bytes; the supervisor's init is looked up host-side by its parent.
        let script = """
            d=$(printf '%s/stk-\\377-%s' "$1" "$$"); mkdir "$d" || exit 3
            trap 'rm -rf "$d"' EXIT
            ln "$2" "$d/stockade" 2>/dev/null || cp "$2" "$d/stockade"; cp "$3" "$d/stockade-spawn"
            "$d/stockade" run --state-dir "$4" -- /bin/sleep 3 >/dev/null 2>&1 & sup=$!
            for i in $(seq 100); do
                for p in $(pgrep -P $sup -x stockade-init); do readlink "/proc/$p/exe" | od -An -c | tr -d ' \n'; echo; exit 0; done
                sleep 0.05
            done
            exit 4
            """
        let r = try Harness.exec("/bin/sh", ["-c", script, "sh", parent, Harness.stockade, Self.helper, state])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        // od -c shows the byte 0xff as 377: the init is the helper in the odd directory, not a fork of stockade.
        #expect(r.stdout.contains("stk-377-") && r.stdout.contains("stockade-spawn"), "\(r.stdout)")
    }

    @Test("stockade-spawn run by hand refuses, exit 2, and says what it is")
    func helperByHand() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.helper))
        for args in [[String](), ["1", "0", "t"], ["\(getpid())", "0", "t"], ["\(getpid())", "x", "t"], ["\(getpid())", "0"]] {
            let r = try Harness.exec(Self.helper, args)
            #expect(r.status == 2 && r.stderr.contains("started by it"), "\(args): \(r.status) \(r.stderr)")
        }
    }
}
