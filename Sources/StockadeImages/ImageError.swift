/// Why an image could not be imported, found or removed: the code, the entry or blob it is
/// about, and what to do.
public struct ImageError: Error, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// `oci-layout`, `index.json`, a manifest or a config is missing, malformed or unsupported.
        public static let badLayout = Self(rawValue: "bad_layout")
        /// A descriptor names no blob of the layout, or one outside `blobs/`.
        public static let badDescriptor = Self(rawValue: "bad_descriptor")
        /// A blob's SHA-256 or size differs from its descriptor.
        public static let digestMismatch = Self(rawValue: "digest_mismatch")
        /// A layer entry breaks the path, link, type or ownership rules.
        public static let badEntry = Self(rawValue: "bad_entry")
        /// A layer or the image is over a bound (bytes, entries, path length, layers).
        public static let overBound = Self(rawValue: "over_bound")
        /// The layer is not an archive libarchive reads.
        public static let badArchive = Self(rawValue: "bad_archive")
        /// The cache under the state directory could not be written or read.
        public static let cache = Self(rawValue: "cache")
        /// No image of that name.
        public static let notFound = Self(rawValue: "not_found")
        public static let badName = Self(rawValue: "bad_name")
    }

    public let code: Code
    /// The layer entry, blob or file the error is about.
    public let entry: String?
    public let errno: Int32?
    public let message: String

    public init(_ code: Code, entry: String? = nil, errno: Int32? = nil, _ message: String) {
        self.code = code
        self.entry = entry
        self.errno = errno
        self.message = message
    }

    public var description: String { message }
}
