import Glibc
import StockadePatches

/// One input through the diff parser and the path guard: neither may crash,
/// hang or accept a name the guard's own name check refuses.
func fuzzOne(_ bytes: [UInt8]) {
    guard let set = try? DiffParser.parse(bytes, limits: DiffLimits(maxDiffBytes: 1 << 20, maxFiles: 64, maxHunks: 256,
                                                                     maxLineBytes: 1 << 16, maxFileBytes: 1 << 20)) else { return }
    guard case .ok = PathGuard.check(set) else { return }
    for file in set.files {
        for (origin, name) in file.allNames {
            guard case .ok = PathGuard.checkName(name) else {
                fatalError("the guard passed a set whose \(origin) name its name check refuses: \(name)")
            }
        }
    }
}

#if STOCKADE_FUZZING
/// libFuzzer's entry point (built with `-sanitize=fuzzer` by Fuzz/run-diff-fuzz.sh).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    fuzzOne(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// SwiftPM links an executable's entry point under this name; libFuzzer's
/// driver takes over from there.
@_cdecl("stockade_diff_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzerTestOneInput)
}
#else
/// Without the fuzzer: replays the files given as arguments (a corpus or a crash).
@main
enum DiffFuzzReplay {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else { continue }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buffer, 1, buffer.count, file)
                if n <= 0 { break }
                bytes += buffer[0..<n]
            }
            fclose(file)
            fuzzOne(bytes)
        }
    }
}
#endif
