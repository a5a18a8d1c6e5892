import StockadePolicy

/// Bounds on a diff, enforced while it is parsed: a diff comes from the worker and is hostile.
public struct DiffLimits: Sendable, Equatable {
    /// Total bytes of the diff text.
    public var maxDiffBytes: Int
    /// File sections (`diff --git` headers).
    public var maxFiles: Int
    /// Hunks over the whole diff.
    public var maxHunks: Int
    /// Bytes in one line, newline excluded.
    public var maxLineBytes: Int
    /// Inflated bytes of one `GIT binary patch` literal, and bytes of one file the applier reads or writes.
    public var maxFileBytes: Int

    public init(maxDiffBytes: Int = 256 << 20, maxFiles: Int = 10_000, maxHunks: Int = 1_000_000,
                maxLineBytes: Int = 1 << 20, maxFileBytes: Int = 64 << 20) {
        self.maxDiffBytes = maxDiffBytes
        self.maxFiles = maxFiles
        self.maxHunks = maxHunks
        self.maxLineBytes = maxLineBytes
        self.maxFileBytes = maxFileBytes
    }

    public static let `default` = DiffLimits()

    /// Limits that follow a profile's bundle bounds: a diff is never larger than the bundle that carries it.
    public init(bounds: BundleBounds) {
        self.init(maxDiffBytes: Int(clamping: bounds.maxTotalBytes), maxFiles: bounds.maxFiles,
                  maxFileBytes: Int(clamping: bounds.maxFileBytes))
    }
}

/// One line of a hunk. `missingNewline` is set when `\ No newline at end of file` follows it.
public struct HunkLine: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case context, removed, added }
    public var kind: Kind
    /// The line without its marker and newline. A parsed line is a slice of the diff's own bytes:
    /// no allocation per line (a 50 MB diff has about a million of them).
    public var text: ArraySlice<UInt8>
    public var missingNewline: Bool

    public init(_ kind: Kind, _ text: [UInt8], missingNewline: Bool = false) {
        self.init(kind, slice: text[...], missingNewline: missingNewline)
    }

    public init(_ kind: Kind, slice text: ArraySlice<UInt8>, missingNewline: Bool = false) {
        self.kind = kind
        self.text = text
        self.missingNewline = missingNewline
    }
}

/// `@@ -oldStart,oldCount +newStart,newCount @@` and its lines, whose counts the parser has checked.
public struct Hunk: Sendable, Equatable {
    public var oldStart: Int
    public var oldCount: Int
    public var newStart: Int
    public var newCount: Int
    public var lines: [HunkLine]
    /// 1-based line of the `@@` header in the diff text.
    public var diffLine: Int
}

/// A `GIT binary patch`: the whole new content (`literal`) and, when given, the whole old content.
public struct BinaryPatch: Sendable, Equatable {
    public var newContent: [UInt8]
    public var oldContent: [UInt8]?
}

/// One file section of a git diff. Names are raw bytes after C-unquoting with the `a/` or `b/` prefix
/// removed: they may be anything, and only ``PathGuard`` decides whether they are acceptable.
public struct FilePatch: Sendable, Equatable {
    /// Names from `diff --git a/X b/Y`; nil when the header is ambiguous (unquoted names with spaces).
    public var gitOldName: [UInt8]?
    public var gitNewName: [UInt8]?
    /// Names from `--- a/X` and `+++ b/Y`; nil when absent or `/dev/null`.
    public var minusName: [UInt8]?
    public var plusName: [UInt8]?
    public var minusIsDevNull = false
    public var plusIsDevNull = false
    public var renameFrom: [UInt8]?
    public var renameTo: [UInt8]?
    public var copyFrom: [UInt8]?
    public var copyTo: [UInt8]?
    /// Octal modes as written; `newFileMode`/`deletedFileMode` are separate from `old mode`/`new mode`.
    public var oldMode: UInt32?
    public var newMode: UInt32?
    public var newFileMode: UInt32?
    public var deletedFileMode: UInt32?
    /// The mode on an `index a..b MODE` line.
    public var indexMode: UInt32?
    public var hunks: [Hunk] = []
    public var binary: BinaryPatch?
    /// 1-based line of the `diff --git` header.
    public var diffLine: Int

    public init(diffLine: Int) { self.diffLine = diffLine }

    public var isCreation: Bool { newFileMode != nil }
    public var isDeletion: Bool { deletedFileMode != nil }
    public var isRename: Bool { renameFrom != nil || renameTo != nil }
    public var isCopy: Bool { copyFrom != nil || copyTo != nil }

    /// The name of the file read (nil for a creation).
    public var sourcePath: [UInt8]? {
        if isCreation { return nil }
        return renameFrom ?? copyFrom ?? minusName ?? gitOldName
    }

    /// The name of the file written (nil for a deletion).
    public var targetPath: [UInt8]? {
        if isDeletion { return nil }
        return renameTo ?? copyTo ?? plusName ?? gitNewName
    }

    /// Every name in every header of this section, with where it came from, for the path guard.
    public var allNames: [(origin: String, name: [UInt8])] {
        var names: [(String, [UInt8])] = []
        if let gitOldName { names.append(("diff --git a/", gitOldName)) }
        if let gitNewName { names.append(("diff --git b/", gitNewName)) }
        if let minusName { names.append(("---", minusName)) }
        if let plusName { names.append(("+++", plusName)) }
        if let renameFrom { names.append(("rename from", renameFrom)) }
        if let renameTo { names.append(("rename to", renameTo)) }
        if let copyFrom { names.append(("copy from", copyFrom)) }
        if let copyTo { names.append(("copy to", copyTo)) }
        return names
    }

    /// Every mode written in this section, with the header it came from.
    public var allModes: [(origin: String, mode: UInt32)] {
        var modes: [(String, UInt32)] = []
        if let oldMode { modes.append(("old mode", oldMode)) }
        if let newMode { modes.append(("new mode", newMode)) }
        if let newFileMode { modes.append(("new file mode", newFileMode)) }
        if let deletedFileMode { modes.append(("deleted file mode", deletedFileMode)) }
        if let indexMode { modes.append(("index", indexMode)) }
        return modes
    }
}

/// A parsed diff: file sections in order.
public struct PatchSet: Sendable, Equatable {
    public var files: [FilePatch]
    public init(files: [FilePatch]) { self.files = files }
}
