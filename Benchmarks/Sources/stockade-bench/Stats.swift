import Glibc

/// Monotonic nanoseconds.
func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Median and p10/p90 of a sample, nearest rank on the sorted values.
struct Summary {
    let count: Int
    let median: Double
    let p10: Double
    let p90: Double
    let mean: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        count = sorted.count
        func rank(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            let i = Int((p / 100 * Double(sorted.count - 1)).rounded())
            return sorted[min(max(i, 0), sorted.count - 1)]
        }
        median = rank(50)
        p10 = rank(10)
        p90 = rank(90)
        mean = sorted.isEmpty ? .nan : sorted.reduce(0, +) / Double(sorted.count)
    }
}

/// Runs `body` `warmup` times unmeasured, then `repetitions` times, and returns the throughput of each
/// measured repetition: `units` (what one call of `body` processes) per second.
func throughput(warmup: Int, repetitions: Int, units: Double, _ body: () -> Void) -> Summary {
    for _ in 0..<warmup { body() }
    var rates: [Double] = []
    for _ in 0..<repetitions {
        let start = nowNanos()
        body()
        let elapsed = Double(nowNanos() - start) / 1e9
        rates.append(units / elapsed)
    }
    return Summary(rates)
}

/// Formats a rate with a unit, e.g. `1.23 M paths/s`.
func rate(_ value: Double, _ unit: String) -> String {
    if value >= 10_000_000 { return fmt(value / 1_000_000, 1) + " M " + unit }
    if value >= 1_000_000 { return fmt(value / 1_000_000, 2) + " M " + unit }
    if value >= 10_000 { return fmt(value / 1_000, 1) + " k " + unit }
    return fmt(value, 0) + " " + unit
}

func fmt(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "n/a" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = String(rounded)
    if decimals == 0, text.hasSuffix(".0") { text.removeLast(2) }
    if decimals > 0, let dot = text.firstIndex(of: ".") {
        let have = text.distance(from: dot, to: text.endIndex) - 1
        if have < decimals { text += String(repeating: "0", count: decimals - have) }
    }
    return text
}

/// One row of the results table: what was measured, the median with its spread, the target and
/// whether the median meets it.
struct Row {
    let name: String
    let median: String
    let spread: String
    let target: String
    let verdict: String
    let note: String

    static func header() -> String {
        "| measurement | median | p10 – p90 | target | met? | notes |\n|---|---|---|---|---|---|"
    }

    var line: String { "| \(name) | \(median) | \(spread) | \(target) | \(verdict) | \(note) |" }
}

func emit(_ row: Row) {
    writeAll(1, row.line + "\n")
}

/// Row for a throughput whose target is a minimum rate.
func rateRow(_ name: String, _ s: Summary, unit: String, scale: Double = 1, target: Double?, targetText: String? = nil,
             note: String = "") -> Row {
    let verdict: String
    if let target { verdict = s.median * scale >= target ? "met" : "not met" } else { verdict = "–" }
    return Row(name: name, median: rate(s.median * scale, unit),
               spread: rate(s.p10 * scale, unit) + " – " + rate(s.p90 * scale, unit),
               target: targetText ?? target.map { "≥ " + rate($0, unit) } ?? "–", verdict: verdict, note: note)
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run generates the same inputs.
struct Generator {
    var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

func fail(_ message: String) -> Never {
    writeError("stockade-bench: \(message)\n")
    exit(1)
}

/// Writes all of `text` to `fd` (unbuffered, so rows and progress interleave in order).
func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        bytes = bytes.dropFirst(n)
    }
}

func writeError(_ text: String) {
    writeAll(2, text.hasSuffix("\n") ? text : text + "\n")
}
