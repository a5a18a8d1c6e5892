/// What one import may cost: every bound is checked while reading, so a decompression bomb or a
/// layer of a million empty files stops at the bound, not at the end of the disk.
public struct ImageBounds: Sendable, Equatable {
    /// Largest `index.json`, manifest or config.
    public var maxJSONBytes = 1 << 20
    public var maxJSONDepth = 32
    public var maxLayers = 64
    /// Largest compressed layer blob.
    public var maxLayerBlobBytes: Int64 = 4 << 30
    /// Uncompressed bytes of regular files, per layer and for the whole image.
    public var maxLayerBytes: Int64 = 4 << 30
    public var maxImageBytes: Int64 = 8 << 30
    /// Entries (files, directories, links, whiteouts), per layer and for the whole image.
    public var maxLayerEntries = 200_000
    public var maxImageEntries = 500_000
    /// Longest entry path in bytes, and longest symlink target.
    public var maxPathBytes = 4096
    /// Most components in an entry's path: each costs a directory open per entry, so depth, not
    /// only the count of entries, bounds an import's work.
    public var maxPathComponents = 256
    /// Directories opened to place entries, for the whole import. An entry goes into the directory
    /// of the one before it without an open when it is the same, so a layer in any tar tool's order
    /// opens about one a directory; entries alternating between deep directories open their whole
    /// depth each, and this bounds that work (about a minute of CPU) rather than the depth alone
    /// (some 15 minutes at the entry bound).
    public var maxDirectoryOpens = 8_000_000

    public init() {}
}
