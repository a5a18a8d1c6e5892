import Glibc

// stockade-bench: component figures and the in-process drivers for Benchmarks/run.sh.
//
//   stockade-bench components --disk DIR --tmpfs DIR [--quick] [--only audit|paths|diff|bundle] [--postgres URL]
//   stockade-bench batch --stockade BIN --floor BIN --work DIR [--quick]
//   stockade-bench rss --stockade BIN --work DIR [--workers 100] [--sleep 5]
//   stockade-bench serve --server BIN --stockade BIN --work DIR [--quick]
//
// Each prints rows of one markdown table (see Row.header()); progress goes to stderr.

func option(_ name: String, in args: [String]) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

func required(_ name: String, in args: [String]) -> String {
    guard let value = option(name, in: args) else { fail("missing \(name) VALUE") }
    return value
}

func progress(_ text: String) {
    writeError("stockade-bench: \(text)\n")
}

func makeDirectory(_ path: String) {
    if mkdir(path, 0o755) != 0 && errno != EEXIST { fail("cannot create \(path): \(String(cString: strerror(errno)))") }
}

// MARK: - components

func components(_ args: [String]) {
    let scale = args.contains("--quick") ? Scale.quick : Scale.full
    let disk = required("--disk", in: args)
    let tmpfs = required("--tmpfs", in: args)
    makeDirectory(disk)
    makeDirectory(tmpfs)
    // `--only audit|paths|diff|bundle` runs one group (to profile it, or to re-measure one row).
    let only = option("--only", in: args)
    func wanted(_ group: String) -> Bool { only == nil || only == group }
    if let only, !["audit", "paths", "diff", "bundle"].contains(only) {
        fail("--only takes audit, paths, diff or bundle, not \(only)")
    }
    if wanted("audit") {
        progress("audit store on disk")
        benchAudit(directory: disk, label: "disk", scale: scale).forEach(emit)
        progress("audit store on tmpfs")
        benchAudit(directory: tmpfs, label: "tmpfs", scale: scale).forEach(emit)
        // `--postgres URL`: the same on a PostgreSQL store (the script does not start a server).
        if let url = option("--postgres", in: args) {
            progress("audit store on PostgreSQL")
            benchAuditPostgres(url: url, scale: scale).forEach(emit)
        }
    }
    if wanted("paths") {
        progress("path guard")
        benchPathGuard(scale: scale).forEach(emit)
    }
    if wanted("diff") {
        progress("diff parser")
        benchDiff(scale: scale).forEach(emit)
    }
    if wanted("bundle") {
        progress("bundle reader on tmpfs")
        benchBundle(directory: tmpfs, label: "tmpfs", scale: scale).forEach(emit)
        progress("bundle reader on disk")
        benchBundle(directory: disk, label: "disk", scale: scale).forEach(emit)
    }
}

// MARK: - floor and batch, interleaved

struct FloorResult {
    let perRunUs: [Double]
}

func runFloor(_ binary: String, runs: Int, workDir: String) -> FloorResult {
    let child = spawn([binary, "-n", String(runs), "-w", "5"], stderrPath: workDir + "/floor-stderr.log")
    var samples: [Double] = []
    readLines(child.stdout) { line, _ in
        let text = String(decoding: line, as: UTF8.self)
        let parts = text.split(separator: " ")
        if parts.count == 3, parts[0] == "run", let us = Double(parts[2]) { samples.append(us) }
    }
    let status = waitExit(child.pid)
    if status != 0 || samples.count != runs { fail("the floor program failed (status \(status), \(samples.count) of \(runs) runs); see \(workDir)/floor-stderr.log") }
    return FloorResult(perRunUs: samples)
}

func batch(_ args: [String]) {
    let quick = args.contains("--quick")
    let stockade = required("--stockade", in: args)
    let floor = required("--floor", in: args)
    let work = required("--work", in: args)
    makeDirectory(work)
    let runs = quick ? 100 : 200
    let rounds = quick ? 1 : 3
    let parallels = [1, 2, 4, 8]
    var counter = 0
    func freshState() -> String {
        counter += 1
        let dir = work + "/state-\(counter)"
        return dir
    }

    // Warm-up: page cache for the binary and the host's cgroup parents.
    progress("warm-up")
    _ = runFloor(floor, runs: 20, workDir: work)
    _ = runBatch(stockade: stockade, stateDir: freshState(), runs: 20, parallel: 1, command: ["/bin/true"], workDir: work)

    var floorSamples: [Double] = []
    var gapSamples: [Double] = []
    var durationSamples: [Double] = []
    var perRunWall: [Double] = []
    var firstReport: [Double] = []
    var throughputs: [Int: [Double]] = [:]
    var failures = 0
    for round in 0..<rounds {
        progress("round \(round + 1)/\(rounds): floor × \(runs)")
        floorSamples += runFloor(floor, runs: runs, workDir: work).perRunUs.map { $0 / 1000 }
        for p in parallels {
            progress("round \(round + 1)/\(rounds): stockade batch --parallel \(p) × \(runs)")
            let r = runBatch(stockade: stockade, stateDir: freshState(), runs: runs, parallel: p, command: ["/bin/true"], workDir: work)
            failures += r.failed
            let steady = r.runs > 1 ? Double(r.runs - 1) / (r.interArrivalMs.mean * Double(r.runs - 1) / 1000) : .nan
            throughputs[p, default: []].append(steady)
            if p == 1 {
                perRunWall.append(r.wallSeconds * 1000 / Double(runs))
                firstReport.append(r.firstReportMs)
                durationSamples += [r.durationMs.median]
                gapSamples += [r.interArrivalMs.p10, r.interArrivalMs.median, r.interArrivalMs.p90]
            }
            _ = r
        }
    }
    if failures > 0 { writeError("stockade-bench: \(failures) batch runs did not exit 0 (see \(work)/batch-stderr.log)\n") }

    // Per-run figures at --parallel 1 come from one more batch whose every gap is kept.
    progress("stockade batch --parallel 1 × \(runs), every report timed")
    let detail = runBatch(stockade: stockade, stateDir: freshState(), runs: runs, parallel: 1, command: ["/bin/true"], workDir: work)
    let floorSummary = Summary(floorSamples)
    let gaps = detail.interArrivalMs
    let ratio = gaps.median / floorSummary.median
    emit(Row(name: "C floor: one isolated run of /bin/true (in-process loop)", median: fmt(floorSummary.median, 2) + " ms",
             spread: fmt(floorSummary.p10, 2) + " – " + fmt(floorSummary.p90, 2) + " ms", target: "–", verdict: "–",
             note: "\(floorSamples.count) runs over \(rounds) rounds; Benchmarks/floor/floor.c"))
    emit(Row(name: "stockade batch --parallel 1: time per run (report to report)", median: fmt(gaps.median, 2) + " ms",
             spread: fmt(gaps.p10, 2) + " – " + fmt(gaps.p90, 2) + " ms",
             target: "≤ 1.5 × floor (≤ " + fmt(floorSummary.median * 1.5, 2) + " ms)",
             verdict: ratio <= 1.5 ? "met" : "not met",
             note: "\(fmt(ratio, 2)) × floor; \(detail.runs) runs, \(detail.failed) not exited 0; wall/N incl. supervisor start = \(fmt(detail.wallSeconds * 1000 / Double(runs), 2)) ms (rounds: \(perRunWall.map { fmt($0, 2) }.joined(separator: ", ")) ms)"))
    emit(Row(name: "stockade batch --parallel 1: report durationMs (spawn to exit)", median: fmt(detail.durationMs.median, 0) + " ms",
             spread: fmt(detail.durationMs.p10, 0) + " – " + fmt(detail.durationMs.p90, 0) + " ms", target: "–", verdict: "–",
             note: "whole ms as reported; the rest of the per-run time is before spawn and after exit"))
    emit(Row(name: "stockade batch: supervisor start to first report", median: fmt(Summary(firstReport).median, 1) + " ms",
             spread: fmt(Summary(firstReport).p10, 1) + " – " + fmt(Summary(firstReport).p90, 1) + " ms", target: "–", verdict: "–",
             note: "fresh state dir: audit database created and migrated, cgroup driver detected"))
    var best = 0.0
    for p in parallels {
        let s = Summary(throughputs[p] ?? [])
        best = max(best, s.median)
        emit(Row(name: "stockade batch --parallel \(p): throughput", median: fmt(s.median, 0) + " runs/s",
                 spread: fmt((throughputs[p] ?? []).min() ?? .nan, 0) + " – " + fmt((throughputs[p] ?? []).max() ?? .nan, 0) + " runs/s (min – max)",
                 target: p == parallels.last ? "≥ 500 runs/s (best setting)" : "–",
                 verdict: p == parallels.last ? (best >= 500 ? "met" : "not met") : "–",
                 note: "\(runs) × /bin/true per batch, \(rounds) batches; steady state (first report to last)"))
    }
    if floorSummary.median > 0 {
        emit(Row(name: "C floor: throughput, one at a time", median: fmt(1000 / floorSummary.median, 0) + " runs/s", spread: "–",
                 target: "–", verdict: "–", note: "1 / floor median"))
    }
}

// MARK: - rss

func rss(_ args: [String]) {
    let stockade = required("--stockade", in: args)
    let work = required("--work", in: args)
    let workers = Int(option("--workers", in: args) ?? "100") ?? 100
    let sleep = Int(option("--sleep", in: args) ?? "5") ?? 5
    makeDirectory(work)
    progress("baseline: one sleeping worker")
    let one = runRSS(stockade: stockade, stateDir: work + "/state-rss-1", workers: 1, sleepSeconds: 2, workDir: work)
    progress("\(workers) sleeping workers")
    let many = runRSS(stockade: stockade, stateDir: work + "/state-rss-\(workers)", workers: workers, sleepSeconds: sleep, workDir: work)
    let mb = Double(many.hwmkB) / 1024
    emit(Row(name: "supervisor RSS with \(workers) concurrent sleeping workers (VmHWM)", median: fmt(mb, 1) + " MB",
             spread: "peak VmRSS sampled " + fmt(Double(many.peakRSSkB) / 1024, 1) + " MB", target: "≤ 30 MB",
             verdict: mb <= 30 ? "met" : "not met",
             note: "\(many.concurrentMax) workers seen at once, \(many.threads) supervisor threads max, \(many.samples) samples every 20 ms, wall \(fmt(many.wallSeconds, 1)) s for sleep \(sleep), \(many.failed) not exited 0; 1 worker: VmHWM \(fmt(Double(one.hwmkB) / 1024, 1)) MB"))
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "components": components(arguments)
case "batch": batch(arguments)
case "rss": rss(arguments)
case "serve": serve(arguments)
case "header": writeAll(1, Row.header() + "\n")
default:
    writeError("usage: stockade-bench components|batch|rss|serve|header ... (see Benchmarks/run.sh)\n")
    exit(2)
}
