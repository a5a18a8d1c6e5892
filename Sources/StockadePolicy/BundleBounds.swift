/// Bounds the bundle reader enforces while reading (profile section `bundles`).
/// Every bound has a safe default; a profile may tighten or loosen them.
public struct BundleBounds: Sendable, Equatable, Codable {
    /// Largest `manifest.json`, in bytes.
    public var manifestBytes: Int64 = 1 << 20
    /// Deepest JSON nesting the manifest parser accepts.
    public var jsonDepth: Int = 32
    /// Most files a bundle may list (and hold).
    public var maxFiles: Int = 10_000
    /// Largest single file, in bytes.
    public var maxFileBytes: Int64 = 64 << 20
    /// Largest sum of all file sizes, in bytes.
    public var maxTotalBytes: Int64 = 256 << 20
    /// Longest relative path, in bytes.
    public var maxPathLength: Int = 1024
    /// Most components in a relative path.
    public var maxPathDepth: Int = 32
    /// Most patches a result bundle may declare.
    public var maxPatches: Int = 64

    public init() {}
}
