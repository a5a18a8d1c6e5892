import Glibc
import StockadeBundles
import StockadePolicy

/// One input through the strict JSON parser and the bundle manifest decoder. Beyond "does not
/// crash, hang or blow up memory", two invariants:
/// - a value the strict parser accepts serialises to text it accepts again, as an equal value;
/// - a manifest the decoder accepts serialises to a manifest that decodes equal, within its bounds.
func fuzzOne(_ bytes: [UInt8]) {
    let limits = StrictJSON.Limits(maxBytes: 1 << 16, maxDepth: 32)
    if let value = try? StrictJSON.parse(bytes, limits: limits) {
        let text = Array(value.serialized().utf8)
        let again = try? StrictJSON.parse(text, limits: StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 32))
        precondition(again == value, "strict JSON round trip changed the value")
    }
    var bounds = BundleBounds()
    bounds.maxFiles = 64
    bounds.maxPathLength = 64
    bounds.maxPathDepth = 4
    bounds.maxPatches = 4
    bounds.jsonDepth = 16
    bounds.manifestBytes = 1 << 16
    for role in [BundleRole.request, BundleRole.result] {
        if let manifest = try? BundleManifest.parse(bytes, bounds: bounds, role: role) {
            var roomy = bounds
            roomy.manifestBytes = 1 << 20
            let again = try? BundleManifest.parse(manifest.serialized, bounds: roomy, role: role)
            precondition(again == manifest, "manifest round trip changed the manifest")
            precondition(manifest.files.count <= bounds.maxFiles && manifest.declaredBytes <= bounds.maxTotalBytes)
        }
    }
}

#if STOCKADE_FUZZING
/// libFuzzer's entry point (built with `-sanitize=fuzzer` by Fuzz/run-manifest-fuzz.sh).
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

/// SwiftPM links an executable's entry point under this name; libFuzzer's driver takes over.
@_cdecl("stockade_manifest_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzerTestOneInput)
}
#else
/// Without the fuzzer: replays the files given as arguments (a corpus or a crash).
@main
enum ManifestFuzzReplay {
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
