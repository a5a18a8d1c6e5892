/// git's base85 (the alphabet of `base85.c`) and its binary-patch line framing: a length byte
/// ('A'...'Z' = 1...26, 'a'...'z' = 27...52) then 5 characters per 4 bytes.
enum Base85 {
    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~".utf8)

    static let decodeTable: [Int16] = {
        var table = [Int16](repeating: -1, count: 256)
        for (index, char) in alphabet.enumerated() { table[Int(char)] = Int16(index) }
        return table
    }()

    /// Decodes one framed line; nil if the length byte, the character count or a character is wrong.
    static func decodeLine(_ line: ArraySlice<UInt8>) -> [UInt8]? {
        guard let first = line.first else { return nil }
        let length: Int
        switch first {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): length = Int(first - UInt8(ascii: "A")) + 1
        case UInt8(ascii: "a")...UInt8(ascii: "z"): length = Int(first - UInt8(ascii: "a")) + 27
        default: return nil
        }
        let body = line.dropFirst()
        guard body.count == (length + 3) / 4 * 5 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(body.count / 5 * 4)
        var index = body.startIndex
        while index < body.endIndex {
            var acc: UInt64 = 0
            for k in 0..<5 {
                let value = decodeTable[Int(body[index + k])]
                guard value >= 0 else { return nil }
                acc = acc * 85 + UInt64(value)
            }
            guard acc <= UInt64(UInt32.max) else { return nil }
            out += [UInt8(truncatingIfNeeded: acc >> 24), UInt8(truncatingIfNeeded: acc >> 16),
                    UInt8(truncatingIfNeeded: acc >> 8), UInt8(truncatingIfNeeded: acc)]
            index += 5
        }
        // Padding bytes of the last group must be zero, so that every input has one encoding.
        guard out[length...].allSatisfy({ $0 == 0 }) else { return nil }
        return Array(out[..<length])
    }

    /// Encodes data as framed lines of at most 52 bytes each, every line ending in "\n".
    static func encodeLines(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var offset = 0
        while offset < data.count {
            let length = min(52, data.count - offset)
            out.append(length <= 26 ? UInt8(ascii: "A") + UInt8(length - 1) : UInt8(ascii: "a") + UInt8(length - 27))
            var group = 0
            while group < length {
                var acc: UInt32 = 0
                for k in 0..<4 {
                    let i = offset + group + k
                    acc = acc << 8 | UInt32(i < offset + length ? data[i] : 0)
                }
                var chars = [UInt8](repeating: 0, count: 5)
                for k in stride(from: 4, through: 0, by: -1) {
                    chars[k] = alphabet[Int(acc % 85)]
                    acc /= 85
                }
                out += chars
                group += 4
            }
            out.append(0x0A)
            offset += length
        }
        return out
    }
}
