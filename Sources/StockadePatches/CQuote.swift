/// git's C-style quoting of names: `"a/\303\251\t"`. Names with `"`, `\`, control bytes, DEL or any byte
/// >= 0x80 are quoted, exactly as git does with the default `core.quotePath`.
enum CQuote {
    static func needsQuoting(_ name: [UInt8]) -> Bool {
        name.contains { $0 < 0x20 || $0 == 0x7F || $0 >= 0x80 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }
    }

    /// The name, quoted when git would quote it.
    static func quoteIfNeeded(_ name: [UInt8]) -> [UInt8] {
        needsQuoting(name) ? quote(name) : name
    }

    static func quote(_ name: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "\"")]
        out.reserveCapacity(name.count + 2)
        for byte in name {
            switch byte {
            case 0x07: out += [0x5C, UInt8(ascii: "a")]
            case 0x08: out += [0x5C, UInt8(ascii: "b")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0B: out += [0x5C, UInt8(ascii: "v")]
            case 0x0C: out += [0x5C, UInt8(ascii: "f")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case UInt8(ascii: "\""): out += [0x5C, UInt8(ascii: "\"")]
            case 0x5C: out += [0x5C, 0x5C]
            case let b where b < 0x20 || b >= 0x7F:
                out += [0x5C, 0x30 + (b >> 6), 0x30 + ((b >> 3) & 7), 0x30 + (b & 7)]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
        return out
    }

    /// Unquotes a name that starts at `text[start]` with `"`. Returns the bytes and the index after the
    /// closing quote, or nil when the quoting is malformed (unknown escape, octal out of range, no end).
    static func unquote(_ text: ArraySlice<UInt8>, from start: Int) -> (name: [UInt8], end: Int)? {
        guard start < text.endIndex, text[start] == UInt8(ascii: "\"") else { return nil }
        var out: [UInt8] = []
        var i = start + 1
        while i < text.endIndex {
            let byte = text[i]
            if byte == UInt8(ascii: "\"") { return (out, i + 1) }
            if byte != 0x5C { out.append(byte); i += 1; continue }
            i += 1
            guard i < text.endIndex else { return nil }
            let escape = text[i]
            switch escape {
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
            case 0x5C: out.append(0x5C)
            case UInt8(ascii: "0")...UInt8(ascii: "3"):
                guard i + 2 < text.endIndex else { return nil }
                let d1 = text[i + 1], d2 = text[i + 2]
                guard (0x30...0x37).contains(d1), (0x30...0x37).contains(d2) else { return nil }
                out.append((escape - 0x30) << 6 | (d1 - 0x30) << 3 | (d2 - 0x30))
                i += 2
            default: return nil
            }
            i += 1
        }
        return nil
    }

    /// A printable, unambiguous rendering of any name, for messages and verdicts.
    static func display(_ name: [UInt8]) -> String {
        String(decoding: needsQuoting(name) ? quote(name) : name, as: UTF8.self)
    }
}
