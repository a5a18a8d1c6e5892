/// Lower-case hexadecimal, two digits a byte: how digests are written everywhere (audit chain,
/// bundle manifests, profile digests).
public enum Hex {
    /// Inlinable, so that callers in other modules get it specialised for their digest type (unspecialised,
    /// it iterated through protocol witnesses and was half of the audit store's per-event time).
    @inlinable
    public static func lowercase<D: Sequence<UInt8>>(_ bytes: D) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for byte in bytes {
            out.append(digit(byte >> 4))
            out.append(digit(byte & 0x0F))
        }
        return String(decoding: out, as: UTF8.self)
    }

    @inlinable
    static func digit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? 0x30 + nibble : 0x57 + nibble
    }
}
