// libFuzzer entry for the strict JSON parser and the bundle manifest decoder.
// Built by Fuzz/run-manifest-fuzz.sh into one module with the sources it needs, so no imports.
//
// Beyond "does not crash, hang or blow up memory", it checks two invariants:
// - a value the strict parser accepts serialises to text it accepts again, as an equal value;
// - a manifest the decoder accepts serialises to a manifest that decodes equal.

@_cdecl("LLVMFuzzerTestOneInput")
public func manifestFuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
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
    return 0
}
