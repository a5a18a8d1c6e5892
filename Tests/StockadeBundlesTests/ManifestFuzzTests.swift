import Foundation
import Testing

/// The repository root, from this file's path (Tests/StockadeBundlesTests/...).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

private let fuzzerUsable: Bool = {
    FileManager.default.isExecutableFile(atPath: repositoryRoot + "/Fuzz/run-manifest-fuzz.sh")
        && ProcessInfo.processInfo.environment["STOCKADE_SKIP_FUZZ"] == nil
}()

@Suite("libFuzzer on the manifest parser", .enabled(if: fuzzerUsable, "Fuzz/run-manifest-fuzz.sh is missing or STOCKADE_SKIP_FUZZ is set"),
       .timeLimit(.minutes(5)))
struct ManifestFuzzTests {
    @Test("ten seconds of coverage-guided fuzzing find no crash and no round-trip mismatch")
    func briefFuzz() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [repositoryRoot + "/Fuzz/run-manifest-fuzz.sh", "10"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(log.suffix(4000))")
        #expect(log.contains("Done") || log.contains("stat::number_of_executed_units"), "\(log.suffix(2000))")
    }
}
