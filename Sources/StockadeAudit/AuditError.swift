/// The one public error of this module: what failed (`code`), where (`path` or entry, when there is one),
/// the errno when a syscall failed, and a message that says what to do about it.
public struct AuditError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
    }

    public let code: Code
    public let path: String?
    public let errno: Int32?
    public let message: String

    public init(_ code: Code, path: String? = nil, errno: Int32? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.message = message
    }

    public var description: String {
        var text = path.map { "\($0): \(message)" } ?? message
        if let errno { text += " (errno \(errno))" }
        return text
    }
}

extension AuditError.Code {
    /// The database file could not be created or opened.
    public static let openFailed = Self(rawValue: "open-failed")
    /// The file is not an SQLite database, or it is corrupt.
    public static let notADatabase = Self(rawValue: "not-a-database")
    /// Another process held the database lock for longer than the busy timeout.
    public static let busy = Self(rawValue: "busy")
    /// The disk or filesystem refused a read or write (read-only, full, I/O error).
    public static let storage = Self(rawValue: "storage")
    /// A schema constraint refused a row (duplicate key, unknown reference).
    public static let constraint = Self(rawValue: "constraint")
    /// Any other SQLite failure.
    public static let sqlite = Self(rawValue: "sqlite")
    /// Any other PostgreSQL failure (the server's message and SQLSTATE are in the message).
    public static let postgres = Self(rawValue: "postgres")
    /// The store's server cannot be reached, or the connection broke: nothing further was written.
    public static let unreachable = Self(rawValue: "store-unreachable")
    /// The schema could not be brought up to date, or was written by a newer Stockade.
    public static let migration = Self(rawValue: "migration")
    /// A caller passed a value outside the documented set (role, status, verdict).
    public static let invalidArgument = Self(rawValue: "invalid-argument")
    /// No run with this id exists.
    public static let unknownRun = Self(rawValue: "unknown-run")
    /// A run with this id already exists.
    public static let duplicateRun = Self(rawValue: "duplicate-run")
    /// No diff with this id exists.
    public static let unknownDiff = Self(rawValue: "unknown-diff")
    /// The run or diff is not in the state the operation needs (e.g. deciding a diff twice).
    public static let invalidState = Self(rawValue: "invalid-state")
    /// A stored row cannot be decoded (hand-edited or corrupt).
    public static let corruptRow = Self(rawValue: "corrupt-row")
    /// A checkpoint document is not one: unreadable, not JSON, a field missing, unknown or malformed.
    public static let invalidCheckpoint = Self(rawValue: "invalid-checkpoint")
    /// A checkpoint's signature does not verify with the trusted key, or another key signed it.
    public static let badSignature = Self(rawValue: "bad-signature")
    /// A checkpoint key file is missing, unsafe (a symlink, another owner, readable by others) or malformed.
    public static let keyFile = Self(rawValue: "key-file")
    /// This host's identity cannot be determined, or `$STOCKADE_HOST_ID` is not a usable id.
    public static let hostIdentity = Self(rawValue: "host-identity")
    /// The run queue: another live process is registered under this node name.
    public static let nodeInUse = Self(rawValue: "node-in-use")
    /// The run queue: this node's registration was replaced by another process of the same name.
    public static let nodeReplaced = Self(rawValue: "node-replaced")
    /// The run queue: the run is not claimed by this node (never was, or was taken after its lease expired).
    public static let notClaimed = Self(rawValue: "not-claimed")
    /// An audit export (`stockade audit import`) is not one, or not whole: a line, key or value is wrong,
    /// the chain does not hold, or the end line is missing or does not match.
    public static let invalidExport = Self(rawValue: "invalid-export")
    /// `stockade audit import` was pointed at a store that already holds rows.
    public static let storeNotEmpty = Self(rawValue: "store-not-empty")
    /// The chain of the store being exported or backed up does not hold.
    public static let brokenChain = Self(rawValue: "broken-chain")
}
