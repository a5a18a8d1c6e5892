import StockadePolicy

/// One change a worker made to its `/workspace`, relative to the real workspace.
///
/// Modes are permission bits normalised the way git sees them: `0o644` or `0o755` (only the owner
/// execute bit `0o100` decides), plus any setuid, setgid or sticky bit (`0o7000`) kept as found so
/// the path guard can reject it.
public enum WorkspaceChange: Sendable, Equatable {
    /// A regular file that does not exist in the real workspace.
    case created(path: String, content: [UInt8], mode: UInt32)
    /// A regular file whose content or mode differs from the real workspace's.
    case modified(path: String, old: [UInt8], new: [UInt8], oldMode: UInt32, newMode: UInt32)
    /// A regular file of the real workspace that the worker removed.
    case deleted(path: String, old: [UInt8], oldMode: UInt32)
    /// Something a diff cannot carry safely; the supervisor rejects the diff. `kind` is
    /// `symlink`, `fifo`, `socket`, `block-device`, `char-device` or `unknown` for what the worker
    /// left, or `workspace-symlink` (and the like) when the worker replaced or removed a
    /// non-regular entry of the real workspace.
    case special(path: String, kind: String)

    /// The workspace-relative path of the change.
    public var path: String {
        switch self {
        case .created(let path, _, _), .modified(let path, _, _, _, _), .deleted(let path, _, _),
             .special(let path, _):
            path
        }
    }

    /// The git-style permission bits for a raw `st_mode`: `0o755` when the owner may execute,
    /// else `0o644`, plus the setuid, setgid and sticky bits as found.
    public static func normalizedMode(_ rawMode: UInt32) -> UInt32 {
        (rawMode & 0o100 != 0 ? 0o755 : 0o644) | (rawMode & 0o7000)
    }
}

/// Bounds the workspace scanner enforces while it reads the overlay upper directory (and the parts
/// of the real workspace it must read to describe deletions and modifications).
public struct ScanLimits: Sendable, Equatable {
    /// Most directory entries looked at, upper and lower together.
    public var maxEntries: Int
    /// Largest single file read, old or new content.
    public var maxFileBytes: Int64
    /// Largest sum of all content read.
    public var maxTotalBytes: Int64
    /// Most components in a path.
    public var maxDepth: Int
    /// Longest path, in UTF-8 bytes.
    public var maxPathLength: Int

    public init(maxEntries: Int, maxFileBytes: Int64, maxTotalBytes: Int64, maxDepth: Int, maxPathLength: Int) {
        self.maxEntries = maxEntries
        self.maxFileBytes = maxFileBytes
        self.maxTotalBytes = maxTotalBytes
        self.maxDepth = maxDepth
        self.maxPathLength = maxPathLength
    }

    /// The limits of a profile's `bundles` section: a workspace diff is bounded like a bundle.
    public init(_ bounds: BundleBounds) {
        self.init(maxEntries: bounds.maxFiles, maxFileBytes: bounds.maxFileBytes,
                  maxTotalBytes: bounds.maxTotalBytes, maxDepth: bounds.maxPathDepth,
                  maxPathLength: bounds.maxPathLength)
    }
}

/// Which extended-attribute namespace the overlay used for its opaque markers: `trusted.overlay.`
/// when mounted by real root, `user.overlay.` when mounted with `userxattr` (required inside a user
/// namespace, where `trusted.` xattrs cannot be written).
public enum OverlayXattrNamespace: String, Sendable, CaseIterable {
    case user = "user.overlay."
    case trusted = "trusted.overlay."
}
