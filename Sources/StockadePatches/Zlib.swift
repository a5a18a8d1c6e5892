import CZlib

/// zlib through the system library, with the output size fixed in advance so that a hostile stream
/// cannot make us allocate more than the caller allowed.
enum Zlib {
    /// Inflates `data`, which must decode to exactly `expectedSize` bytes with nothing left over.
    static func inflate(_ data: [UInt8], expectedSize: Int) -> [UInt8]? {
        var output = [UInt8](repeating: 0, count: max(expectedSize, 1))
        var outLength = uLongf(expectedSize)
        var inLength = uLong(data.count)
        let status = output.withUnsafeMutableBufferPointer { out in
            data.withUnsafeBufferPointer { input in
                uncompress2(out.baseAddress, &outLength, input.baseAddress, &inLength)
            }
        }
        guard status == Z_OK, outLength == uLongf(expectedSize), inLength == uLong(data.count) else { return nil }
        output.removeLast(output.count - expectedSize)
        return output
    }

    /// Deflates `data` at the default level.
    static func deflate(_ data: [UInt8]) -> [UInt8] {
        var capacity = compressBound(uLong(data.count))
        var output = [UInt8](repeating: 0, count: Int(capacity))
        let status = output.withUnsafeMutableBufferPointer { out in
            data.withUnsafeBufferPointer { input in
                compress2(out.baseAddress, &capacity, input.baseAddress, uLong(data.count), Z_DEFAULT_COMPRESSION)
            }
        }
        // compressBound is a documented upper bound, so compress2 cannot run out of room.
        precondition(status == Z_OK, "compress2 failed with \(status) despite a compressBound buffer")
        output.removeLast(output.count - Int(capacity))
        return output
    }
}
