import Glibc
import StockadeAudit
import StockadeAuditPostgres
import StockadeAuditSQLite
import StockadeBundles
import StockadePatches
import StockadePolicy

/// How much work each component benchmark does.
struct Scale {
    var warmup: Int
    var repetitions: Int
    var singleRecords: Int
    var diffBytes: Int
    var bundleFiles: Int
    var paths: Int

    static let full = Scale(warmup: 2, repetitions: 11, singleRecords: 300, diffBytes: 50 << 20, bundleFiles: 100, paths: 1_000_000)
    static let quick = Scale(warmup: 1, repetitions: 5, singleRecords: 100, diffBytes: 10 << 20, bundleFiles: 20, paths: 200_000)
}

// MARK: - Audit

/// Events per second through `SQLiteAuditStore`: one `record` per transaction, and `recordMany` batches of
/// 1000, on a fresh database in `directory` (the store's own settings: WAL, synchronous=FULL).
func benchAudit(directory: String, label: String, scale: Scale) -> [Row] {
    let path = directory + "/audit-bench.sqlite"
    for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
    let store: SQLiteAuditStore
    do {
        store = try SQLiteAuditStore(path: path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime)
    } catch {
        fail("cannot open the audit store at \(path): \(error)")
    }
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    return benchAudit(store, label: label, scale: scale, singleNote: "each a BEGIN IMMEDIATE … COMMIT with WAL fsync")
}

/// The same figures on a PostgreSQL store (`--postgres URL`; an empty database is best, the rows stay).
func benchAuditPostgres(url text: String, scale: Scale) -> [Row] {
    let store: PostgresAuditStore
    do {
        guard case .postgres(let url) = try StoreURL.parse(text) else { fail("--postgres takes a postgres:// URL, not \(text)") }
        var environment: [String: String] = [:]
        for name in ["PGPASSWORD", "STOCKADE_STORE_PASSWORD_FILE"] { if let value = getenv(name) { environment[name] = String(cString: value) } }
        store = try PostgresAuditStore(url: url, environment: environment, supervisorPid: getpid(),
                                       supervisorStart: ProcessIdentity.currentStartTime, hostId: "bench")
    } catch {
        fail("cannot open the PostgreSQL audit store: \(error)")
    }
    return benchAudit(store, label: "postgres", scale: scale,
                      singleNote: "each 8 round trips over the URL's socket: BEGIN, advisory lock, head, run, last runSeq, insert, head, COMMIT (synchronous_commit off)")
}

private func benchAudit(_ store: some AuditStore, label: String, scale: Scale, singleNote: String) -> [Row] {
    let runId = "01BENCH\(getpid())-\(time(nil))"
    do {
        try store.beginRun(runId: runId, profile: "default", profileDigest: String(repeating: "ab", count: 32),
                           command: ["/bin/true"], detail: .object(["source": .string("benchmark")]))
    } catch {
        fail("beginRun failed: \(error)")
    }
    // A detail the size of a real violation or limit event.
    let detail: JSONValue = .object(["kind": .string("seccomp"), "syscall": .string("keyctl"), "count": .number(3),
                                     "pid": .number(4242), "cgroup": .string("/sys/fs/cgroup/pids/stockade/" + runId)])
    var failures = 0
    let single = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: Double(scale.singleRecords)) {
        for _ in 0..<scale.singleRecords {
            do { _ = try store.record(runId: runId, kind: "limit.hit", detail: detail) } catch { failures += 1 }
        }
    }
    let batch = Array(repeating: (runId: Optional(runId), kind: "limit.hit", detail: detail), count: 1000)
    let batchesPerRep = 10
    let many = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: Double(1000 * batchesPerRep)) {
        for _ in 0..<batchesPerRep {
            do { try store.recordMany(batch) } catch { failures += 1 }
        }
    }
    // A `/bin/true` run's own writes, as the supervisor makes them: `run.created`, `worker.started`,
    // the outcome events with `run.finished` (durable): three transactions. The per-run store cost.
    let runsPerRep = max(20, scale.singleRecords / 5)
    var runCounter = 0
    let started: JSONValue = .object(["pid": .number(4242), "cgroup": .object(["paths": .array([.string("/sys/fs/cgroup/stockade/x")])]),
                                      "namespaces": .array(["user", "pid", "mount", "net", "ipc", "uts", "cgroup"].map { .string($0) })])
    let perRun = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: Double(runsPerRep)) {
        for _ in 0..<runsPerRep {
            runCounter += 1
            let id = "\(runId)-\(runCounter)"
            do {
                try store.beginRun(runId: id, profile: "default", profileDigest: String(repeating: "ab", count: 32),
                                   command: ["/bin/true"], detail: .object(["source": .string("benchmark")]))
                _ = try store.record(runId: id, kind: "worker.started", detail: started)
                // As the supervisor writes a run with no result bundle or diff: the outcome's events in
                // run.finished's transaction.
                try store.finishRun(runId: id, outcome: "exited", exitStatus: 0,
                                    detail: .object(["durationMs": .number(3), "cpuTimeMs": .number(1), "exitStatus": .number(0)]),
                                    after: [(runId: id, kind: "worker.exited",
                                             detail: .object(["exitCode": .number(0), "outcome": .string("exited"), "signal": .null]))])
            } catch {
                failures += 1
            }
        }
    }
    if failures > 0 { fail("\(failures) audit writes failed") }
    let verification: ChainVerification
    do { verification = try store.verifyChain() } catch { fail("verifyChain failed: \(error)") }
    if !verification.isValid { fail("the audit chain written by the benchmark does not verify: \(verification)") }
    return [
        rateRow("audit `record`, 1 event per transaction (\(label))", single, unit: "events/s", target: nil,
                note: "\(scale.singleRecords) events × \(scale.repetitions) reps; \(singleNote)"),
        rateRow("audit `recordMany`, batches of 1000 (\(label))", many, unit: "events/s", target: 100_000,
                note: "\(batchesPerRep) batches × \(scale.repetitions) reps; chain verified afterwards (\(verification.eventsChecked) events)"),
        rateRow("audit writes of one `/bin/true` run (\(label))", perRun, unit: "runs/s", target: nil,
                note: "run.created, worker.started, then worker.exited with run.finished (durable): 3 transactions a run; \(runsPerRep) runs × \(scale.repetitions) reps; 1000/rate = the store's ms per run"),
    ]
}

// MARK: - Path guard

/// Realistic repository paths: mostly source files a few directories deep, a few hostile ones.
func makePaths(count: Int) -> [[UInt8]] {
    var g = Generator(seed: 42)
    let roots = ["Sources", "src", "lib", "Tests", "docs", "packages", "cmd", "internal", "app", "web"]
    let dirs = ["core", "util", "net", "http", "storage", "model", "views", "components", "api", "cli", "parser",
                "runtime", "sandbox", "audit", "fixtures", "generated", "v2", "linux", "platform", "common"]
    let stems = ["main", "index", "Supervisor", "PathGuard", "README", "config", "handler_test", "service", "types",
                 "DiffParser", "BundleReader", "request-line", "schema.v3", "helpers", "Package", "mod", "init"]
    let exts = [".swift", ".c", ".h", ".ts", ".tsx", ".go", ".rs", ".py", ".md", ".json", ".yaml", ""]
    let hostile = ["../etc/passwd", ".git/config", "a/../../b", "/abs/path", "src/.git/hooks/pre-commit", "x//y",
                   "src/./main.c", "bad\u{1}name"]
    var paths: [[UInt8]] = []
    paths.reserveCapacity(count)
    for i in 0..<count {
        if i % 100 == 99 { paths.append(Array(g.pick(hostile).utf8)); continue }
        var p = g.pick(roots)
        for _ in 0..<g.below(6) { p += "/" + g.pick(dirs) }
        p += "/" + g.pick(stems) + g.pick(exts)
        paths.append(Array(p.utf8))
    }
    return paths
}

func benchPathGuard(scale: Scale) -> [Row] {
    let paths = makePaths(count: scale.paths)
    let bytes = paths.reduce(0) { $0 + $1.count }
    var rejected = 0
    let s = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: Double(paths.count)) {
        var r = 0
        for p in paths where PathGuard.checkName(p) != .ok { r += 1 }
        rejected = r
    }
    let expected = paths.count / 100
    if rejected < expected { fail("the path guard passed hostile paths: \(rejected) rejected, at least \(expected) expected") }
    return [rateRow("path guard `PathGuard.checkName`", s, unit: "paths/s", target: 1_000_000,
                    note: "\(paths.count) paths (avg \(bytes / max(paths.count, 1)) bytes, 1% hostile: \(rejected) rejected) × \(scale.repetitions) reps")]
}

// MARK: - Diff parser

/// A git diff of about `targetBytes`: modified files with several hunks each, new and deleted files, renames.
func makeDiff(targetBytes: Int, maxFiles: Int) -> (bytes: [UInt8], files: Int, hunks: Int) {
    var g = Generator(seed: 7)
    let words = ["let", "value", "return", "self", "guard", "else", "throw", "error", "count", "bytes", "func",
                 "struct", "var", "for", "in", "if", "path", "limit", "report", "audit"]
    func line() -> String {
        var s = String(repeating: " ", count: 4 * g.below(3))
        for _ in 0..<(6 + g.below(8)) { s += g.pick(words) + " " }
        return s + "// \(g.next() % 100_000)"
    }
    let hunksPerFile = 24
    let approxFileBytes = 13_000  // measured: about 13 kB per generated file
    let files = min(maxFiles, max(1, targetBytes / approxFileBytes))
    var out: [UInt8] = []
    out.reserveCapacity(targetBytes + targetBytes / 8)
    var hunks = 0
    for f in 0..<files {
        let name = "Sources/Module\(f % 50)/File\(f).swift"
        switch f % 20 {
        case 0:  // a new file
            let n = 40
            out += Array("diff --git a/\(name) b/\(name)\nnew file mode 100644\nindex 0000000..1234567\n--- /dev/null\n+++ b/\(name)\n@@ -0,0 +1,\(n) @@\n".utf8)
            for _ in 0..<n { out += Array(("+" + line() + "\n").utf8) }
            hunks += 1
        case 1:  // a deleted file
            let n = 30
            out += Array("diff --git a/\(name) b/\(name)\ndeleted file mode 100644\nindex 1234567..0000000\n--- a/\(name)\n+++ /dev/null\n@@ -1,\(n) +0,0 @@\n".utf8)
            for _ in 0..<n { out += Array(("-" + line() + "\n").utf8) }
            hunks += 1
        case 2:  // a rename with a change
            let newName = "Sources/Renamed\(f % 50)/File\(f).swift"
            out += Array("diff --git a/\(name) b/\(newName)\nsimilarity index 90%\nrename from \(name)\nrename to \(newName)\nindex 1234567..89abcde 100644\n--- a/\(name)\n+++ b/\(newName)\n@@ -10,7 +10,8 @@ struct Thing {\n".utf8)
            for _ in 0..<3 { out += Array((" " + line() + "\n").utf8) }
            out += Array(("-" + line() + "\n").utf8)
            out += Array(("+" + line() + "\n+" + line() + "\n").utf8)
            for _ in 0..<3 { out += Array((" " + line() + "\n").utf8) }
            hunks += 1
        default:  // modified: hunks of 3 context, 1 removed, 2 added, 3 context
            out += Array("diff --git a/\(name) b/\(name)\nindex 1234567..89abcde 100644\n--- a/\(name)\n+++ b/\(name)\n".utf8)
            for h in 0..<hunksPerFile {
                let oldStart = 1 + h * 20
                out += Array("@@ -\(oldStart),7 +\(oldStart + h),8 @@ func f\(h)() {\n".utf8)
                for _ in 0..<3 { out += Array((" " + line() + "\n").utf8) }
                out += Array(("-" + line() + "\n").utf8)
                out += Array(("+" + line() + "\n+" + line() + "\n").utf8)
                for _ in 0..<3 { out += Array((" " + line() + "\n").utf8) }
            }
            hunks += hunksPerFile
        }
    }
    return (out, files, hunks)
}

func benchDiff(scale: Scale) -> [Row] {
    let limits = DiffLimits.default
    let diff = makeDiff(targetBytes: scale.diffBytes, maxFiles: limits.maxFiles)
    var parsedFiles = 0
    var error: PatchError?
    let megabytes = Double(diff.bytes.count) / 1e6
    let s = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: megabytes) {
        do throws(PatchError) {
            parsedFiles = try DiffParser.parse(diff.bytes, limits: limits).files.count
        } catch let e {
            error = e
        }
    }
    if let error { fail("the generated diff did not parse: \(error)") }
    if parsedFiles != diff.files { fail("the parser found \(parsedFiles) files in a diff of \(diff.files)") }
    return [rateRow("diff parse `DiffParser.parse`", s, unit: "MB/s", target: 200,
                    note: "\(fmt(megabytes, 1)) MB git diff, \(diff.files) files, \(diff.hunks) hunks, default limits, × \(scale.repetitions) reps")]
}

// MARK: - Bundle reader

/// Removes every entry of a flat-or-nested directory tree (the copies the benchmark made).
func removeTree(_ path: String) {
    guard let dir = opendir(path) else { return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        if name == "." || name == ".." { continue }
        let child = path + "/" + name
        if entry.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
    }
    closedir(dir)
    rmdir(path)
}

func benchBundle(directory: String, label: String, scale: Scale) -> [Row] {
    let root = directory + "/bundle-bench"
    removeTree(root)
    mkdir(root, 0o755)
    let bundlePath = root + "/bundle"
    // 1 MiB files of pseudo-random bytes, spread over a few directories.
    var g = Generator(seed: 99)
    var files: [(path: String, contents: [UInt8])] = []
    for i in 0..<scale.bundleFiles {
        var contents = [UInt8](repeating: 0, count: 1 << 20)
        contents.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for w in 0..<words.count { words[w] = g.next() }
        }
        files.append((path: "data/part\(i % 10)/blob\(i).bin", contents: contents))
    }
    do {
        try BundleWriter.write(files: files, to: bundlePath)
    } catch {
        fail("cannot write the benchmark bundle: \(error)")
    }
    let totalMB = Double(scale.bundleFiles << 20) / 1e6
    files = []
    var bounds = BundleBounds()
    bounds.maxTotalBytes = max(bounds.maxTotalBytes, Int64(scale.bundleFiles + 1) << 20)
    var bad: BundleVerdict?

    let plain = throughput(warmup: scale.warmup, repetitions: scale.repetitions, units: totalMB) {
        let verdict = BundleReader.read(path: bundlePath, bounds: bounds, role: .result)
        if case .accepted = verdict {} else { bad = verdict }
    }
    var copyIndex = 0
    // The copy's destination is made and removed outside the timed call. The removal frees about 110
    // inodes just before the next timed copy allocates as many: on an ext4 without a journal those
    // count as recently deleted for 5-35 s (see run.sh), a small cost inside this MB/s figure. Keeping
    // every copy instead would leave 1.4 GB of dirty pages to be written back during later sections.
    var copyRates: [Double] = []
    for rep in 0..<(scale.warmup + scale.repetitions) {
        copyIndex += 1
        let destination = root + "/copy\(copyIndex)"
        mkdir(destination, 0o755)
        let start = nowNanos()
        let verdict = BundleReader.read(path: bundlePath, bounds: bounds, role: .result, copyTo: destination)
        let elapsed = Double(nowNanos() - start) / 1e9
        if case .accepted = verdict {} else { bad = verdict }
        if rep >= scale.warmup { copyRates.append(totalMB / elapsed) }
        removeTree(destination)
    }
    if let bad { fail("the bundle reader did not accept the benchmark bundle: \(bad)") }
    removeTree(root)
    let note = "\(fmt(totalMB, 0)) MB in \(scale.bundleFiles) files of 1 MiB, page cache warm, × \(scale.repetitions) reps"
    return [
        rateRow("bundle read + SHA-256, no copy (\(label))", plain, unit: "MB/s", target: 1000, targetText: "≥ 1 GB/s", note: note),
        rateRow("bundle read + SHA-256 + copy (\(label))", Summary(copyRates), unit: "MB/s", target: 1000, targetText: "≥ 1 GB/s",
                note: note + "; copy into a fresh directory on the same filesystem, no fsync"),
    ]
}
