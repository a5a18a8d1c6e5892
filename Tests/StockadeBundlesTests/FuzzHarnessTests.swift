import Foundation
import Testing

/// The repository root, from this file's path (Tests/StockadeBundlesTests/...).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

private let fuzzingWanted = ProcessInfo.processInfo.environment["STOCKADE_SKIP_FUZZ"] == nil

/// Both libFuzzer harnesses (Fuzz/), briefly, as CI runs them: the strict JSON
/// and manifest parser (no crash, accepted manifests survive a round trip), and
/// the diff parser with the path guard (no crash, no name the guard lets
/// through that its own name check refuses).
// The diff harness first builds the package with the fuzzer and address sanitizer (a separate
// build directory, every dependency again): minutes on 2 cores, more when the machine is busy.
@Suite("libFuzzer harnesses", .enabled(if: fuzzingWanted, "STOCKADE_SKIP_FUZZ is set"), .timeLimit(.minutes(15)))
struct FuzzHarnessTests {
    @Test("ten seconds of coverage-guided fuzzing find nothing", arguments: ["run-manifest-fuzz.sh", "run-diff-fuzz.sh"])
    func briefFuzz(script: String) throws {
        let path = repositoryRoot + "/Fuzz/" + script
        try #require(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [path, "10"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(log.suffix(4000))")
        #expect(log.contains("stat::number_of_executed_units") || log.contains("Done "), "\(log.suffix(2000))")
    }
}
