extension BundleError.Code {
    // Run directory and garbage collection.
    /// A run id that is not a plain file name (empty, `/`, leading dot, control bytes, too long).
    public static let invalidRunId = Self(rawValue: "invalid_run_id")
    /// `<state>/runs/<id>` already exists: run ids must be unique.
    public static let runDirectoryExists = Self(rawValue: "run_directory_exists")
    /// Creating, opening or locking a run directory failed.
    public static let runDirectoryFailed = Self(rawValue: "run_directory_failed")
    /// Removing a finished run directory failed part-way.
    public static let garbageCollectionFailed = Self(rawValue: "garbage_collection_failed")
    /// `--older-than` text that is not a duration.
    public static let invalidDuration = Self(rawValue: "invalid_duration")

    // Workspace (overlay upper) scanning.
    /// The scan met more directory entries than `ScanLimits.maxEntries`.
    public static let workspaceTooManyEntries = Self(rawValue: "workspace_too_many_entries")
    /// One file is larger than `ScanLimits.maxFileBytes`.
    public static let workspaceFileTooLarge = Self(rawValue: "workspace_file_too_large")
    /// All content read together is larger than `ScanLimits.maxTotalBytes`.
    public static let workspaceTooLarge = Self(rawValue: "workspace_too_large")
    /// A path deeper than `ScanLimits.maxDepth` or longer than `ScanLimits.maxPathLength`.
    public static let workspacePathTooLong = Self(rawValue: "workspace_path_too_long")
    /// A file name that is not valid UTF-8.
    public static let workspaceBadName = Self(rawValue: "workspace_bad_name")
    /// The upper directory uses an overlay feature the scanner does not interpret
    /// (redirects, metacopy, xattr whiteouts): its content is not self-describing.
    public static let workspaceUnsupportedOverlay = Self(rawValue: "workspace_unsupported_overlay")
    /// An entry changed between two looks at it, or could not be read.
    public static let workspaceScanFailed = Self(rawValue: "workspace_scan_failed")
}
