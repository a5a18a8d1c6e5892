import StockadePolicy

/// The path rules every bundle entry obeys, and how worker-chosen names are shown.
///
/// A bundle path is relative, valid UTF-8 without NUL, control characters (C0, DEL, C1) or
/// backslashes, has no empty, `.` or `..` component, and stays within the bounds' length (bytes)
/// and depth (components).
package enum BundlePath {
    /// Why `bytes` is not a valid bundle path, or nil when it is.
    package static func problem(_ bytes: some Collection<UInt8>, bounds: BundleBounds) -> String? {
        if bytes.isEmpty { return "the path is empty" }
        if bytes.count > bounds.maxPathLength {
            return "the path is \(bytes.count) bytes long, more than the limit of \(bounds.maxPathLength)"
        }
        if bytes.first == UInt8(ascii: "/") { return "the path is absolute; bundle paths are relative to the bundle root" }
        var components = 0
        var componentLength = 0
        var dots = 0
        var previous: UInt8 = 0
        for byte in bytes {
            if byte == UInt8(ascii: "/") {
                if let issue = componentProblem(length: componentLength, dots: dots) { return issue }
                components += 1
                componentLength = 0
                dots = 0
                continue
            }
            if byte < 0x20 || byte == 0x7F { return "the path holds the control byte \(hex(byte))" }
            if byte == UInt8(ascii: "\\") { return "the path holds a backslash" }
            // C1 controls U+0080...U+009F are encoded as C2 80...C2 9F.
            if previous == 0xC2 && byte >= 0x80 && byte <= 0x9F { return "the path holds the control character U+00\(hex(byte).dropFirst(2))" }
            if byte == UInt8(ascii: ".") { dots += 1 }
            componentLength += 1
            previous = byte
        }
        if let issue = componentProblem(length: componentLength, dots: dots) { return issue }
        components += 1
        if components > bounds.maxPathDepth {
            return "the path has \(components) components, more than the limit of \(bounds.maxPathDepth)"
        }
        if String(validating: bytes, as: UTF8.self) == nil { return "the path is not valid UTF-8" }
        return nil
    }

    private static func componentProblem(length: Int, dots: Int) -> String? {
        if length == 0 { return "the path has an empty component" }
        if length == dots && dots <= 2 { return "the path has a '\(String(repeating: ".", count: dots))' component" }
        return nil
    }

    /// The key under which two paths collide on a case-insensitive or normalising filesystem.
    /// (Swift compares strings by canonical equivalence, so NFC and NFD forms share a key.)
    package static func collisionKey(_ path: String) -> String { path.lowercased() }

    /// A worker-chosen name made safe to show in a report, a log or a terminal: control bytes,
    /// backslashes and bytes of invalid UTF-8 become `\xNN`; at most 512 bytes are shown.
    package static func display(_ bytes: some Collection<UInt8>) -> String {
        let shown = bytes.prefix(512)
        var out = ""
        if let text = String(validating: shown, as: UTF8.self) {
            for scalar in text.unicodeScalars {
                let v = scalar.value
                if v < 0x20 || v == 0x7F || (0x80...0x9F).contains(v) || v == 0x5C || v == 0x2028 || v == 0x2029
                    || (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v) {
                    for byte in String(scalar).utf8 { out += "\\x" + hex(byte).dropFirst(2) }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        } else {
            for byte in shown {
                if byte < 0x20 || byte >= 0x7F || byte == 0x5C {
                    out += "\\x" + hex(byte).dropFirst(2)
                } else {
                    out.unicodeScalars.append(Unicode.Scalar(byte))
                }
            }
        }
        if bytes.count > shown.count { out += "…" }
        return out
    }

    package static func display(_ path: String) -> String { display(Array(path.utf8)) }

    static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return "0x" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0xF)])
    }
}
