import StockadePolicy

/// Which side of a run a bundle comes from. Only a request may carry `command` and `env`.
public enum BundleRole: String, Sendable, Equatable {
    case request
    case result
}

/// Why a bundle was refused: the rule it broke, the entry that broke it, and what to do.
public struct BundleRejection: Sendable, Equatable, CustomStringConvertible {
    /// The broken rule. Raw values are the report's and the audit's words for it.
    public enum Rule: String, Sendable, Equatable, CaseIterable {
        case sizeMismatch = "size_mismatch"
        case hashMismatch = "hash_mismatch"
        case unlistedFile = "unlisted_file"
        case missingFile = "missing_file"
        case duplicatePath = "duplicate_path"
        case symlink
        case specialFile = "special_file"
        case hardlink
        case tooManyFiles = "too_many_files"
        case tooLarge = "too_large"
        case badPath = "bad_path"
        case badManifest = "bad_manifest"
    }

    public let rule: Rule
    /// The bundle-relative path of the offending entry (`manifest.json` for the manifest),
    /// with control bytes and invalid UTF-8 shown as `\xNN`; nil when no single entry is at fault.
    public let entry: String?
    public let message: String

    public init(rule: Rule, entry: String?, message: String) {
        self.rule = rule
        self.entry = entry
        self.message = message
    }

    /// The bundle error that carries this rejection (its code's raw value is the rule's).
    public var error: BundleError { BundleError(BundleError.Code(rawValue: rule.rawValue), path: entry, message) }

    /// The rejection an error stands for, or nil when the error is the supervisor's own failure
    /// (the destination could not be written, a read failed) rather than a broken bundle rule.
    public init?(_ error: BundleError) {
        guard let rule = Rule(rawValue: error.code.rawValue) else { return nil }
        self.init(rule: rule, entry: error.path, message: error.message)
    }

    public var description: String { entry.map { "\(rule.rawValue): \($0): \(message)" } ?? "\(rule.rawValue): \(message)" }
}

/// What the reader established about an accepted bundle.
public struct VerifiedBundle: Sendable, Equatable {
    public let manifest: BundleManifest
    /// Sum of the listed files' sizes, as read (equal to the declared sizes).
    public let totalBytes: Int64
    public let fileCount: Int
    /// Lowercase hex SHA-256 of the manifest.json bytes that were parsed (and copied).
    public let manifestSHA256: String

    public init(manifest: BundleManifest, totalBytes: Int64, fileCount: Int, manifestSHA256: String) {
        self.manifest = manifest
        self.totalBytes = totalBytes
        self.fileCount = fileCount
        self.manifestSHA256 = manifestSHA256
    }
}

/// The reader's answer. `failed` is the supervisor's own trouble (the destination cannot be
/// written, a bundle file cannot be read for a reason the worker cannot cause): the bundle was
/// neither accepted nor judged, and nothing the reader copied is left behind.
public enum BundleVerdict: Sendable, Equatable {
    case accepted(VerifiedBundle)
    case rejected(BundleRejection)
    case failed(BundleError)
}

extension BundleError.Code {
    // One code per rejection rule, so that manifest decoding can throw the module's error.
    public static let sizeMismatch = Self(rawValue: "size_mismatch")
    public static let hashMismatch = Self(rawValue: "hash_mismatch")
    public static let unlistedFile = Self(rawValue: "unlisted_file")
    public static let missingFile = Self(rawValue: "missing_file")
    public static let duplicatePath = Self(rawValue: "duplicate_path")
    public static let symlink = Self(rawValue: "symlink")
    public static let specialFile = Self(rawValue: "special_file")
    public static let hardlink = Self(rawValue: "hardlink")
    public static let tooManyFiles = Self(rawValue: "too_many_files")
    public static let tooLarge = Self(rawValue: "too_large")
    public static let badPath = Self(rawValue: "bad_path")
    public static let badManifest = Self(rawValue: "bad_manifest")
    /// The bundle's own files could not be read (EIO, EACCES without root, a vanished root).
    public static let bundleUnreadable = Self(rawValue: "bundle_unreadable")
    /// The verified copy could not be written to the destination.
    public static let copyFailed = Self(rawValue: "copy_failed")
    /// BundleWriter could not write a bundle.
    public static let writeFailed = Self(rawValue: "write_failed")
}
