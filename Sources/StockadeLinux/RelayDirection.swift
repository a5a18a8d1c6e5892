import Glibc

/// One direction of a relayed connection on non-blocking sockets (the port forwarder, the egress
/// proxy): a 64 KiB buffer read only when empty, so a side that does not read holds the other
/// back instead of growing memory; end of file is passed on as a half-close.
struct RelayDirection {
    enum Step { case moved(Int), failed, overBudget, malformed(String) }
    let from: Int32
    let to: Int32
    var buffer = [UInt8](repeating: 0, count: 65536)
    var start = 0
    var end = 0
    var eof = false
    var done = false
    /// When set, how many more bytes may be forwarded; what is read beyond them is dropped (and
    /// still charged to the budget), counted in `dropped`, not in what `step` reports as moved.
    var forwardLimit: Int64?
    /// When set, a chunked request body being forwarded: each read is decoded and sent re-chunked
    /// (`ChunkedBody.encode`); what is read after its end is dropped as beyond `forwardLimit` (which
    /// becomes 0 there); a byte that cannot be part of it stops the relay, nothing of its read sent.
    var chunked: ChunkedBody?
    var dropped: Int64 = 0

    init(from: Int32, to: Int32) {
        self.from = from
        self.to = to
    }

    var readInterest: Int16 { !eof && start == end ? Int16(POLLIN) : 0 }
    var writeInterest: Int16 { start < end ? Int16(POLLOUT) : 0 }

    /// The poll entry for `fd` with `events`; a socket with nothing asked of it is left out (a
    /// negative fd), since poll reports a hang-up whatever is asked: a peer that shut down both
    /// ways while the other side does not read would otherwise wake the relay at once, forever.
    static func watch(_ fd: Int32, _ events: Int16) -> pollfd {
        pollfd(fd: events == 0 ? -1 : fd, events: events, revents: 0)
    }

    /// Reads what is there (charging it to the budget), writes what it can.
    mutating func step(_ spend: (Int) -> Bool) -> Step {
        if done { return .moved(0) }
        var read = 0
        if start == end && !eof {
            // Room kept for a re-chunked read's framing, which is longer than the data it carries.
            let room = chunked == nil ? buffer.count : buffer.count - 32
            let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, room, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                guard spend(n) else { return .overBudget }
                start = 0
                end = n
                read = n
                if chunked != nil {
                    var data: [UInt8] = []
                    data.reserveCapacity(n)
                    let outcome = chunked!.scan(buffer[0..<n], data: &data)
                    let encoded: [UInt8]
                    switch outcome {
                    case .more:
                        encoded = ChunkedBody.encode(data[...], last: false)
                    case .ended(let length):
                        encoded = ChunkedBody.encode(data[...], last: true)
                        chunked = nil
                        forwardLimit = 0
                        dropped += Int64(n - length)
                    case .malformed(_, let reason):
                        end = 0
                        return .malformed(reason)
                    }
                    // The budget is charged for what goes out where the framing makes it more than
                    // what came in (a byte a read is sent as six).
                    if encoded.count > n { guard spend(encoded.count - n) else { return .overBudget } }
                    buffer.replaceSubrange(0..<encoded.count, with: encoded)
                    end = encoded.count
                    read = encoded.count
                } else if let limit = forwardLimit {
                    let kept = Int(min(Int64(n), limit))
                    forwardLimit = limit - Int64(kept)
                    dropped += Int64(n - kept)
                    end = kept
                    read = kept
                }
            } else if n == 0 {
                eof = true
            } else if errno != EAGAIN && errno != EINTR {
                return .failed
            }
        }
        if start < end {
            let n = buffer[start..<end].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n > 0 {
                start += n
            } else if n < 0 && errno != EAGAIN && errno != EINTR {
                return .failed
            }
        }
        if eof && start == end {
            _ = shutdown(to, Int32(SHUT_WR))
            done = true
        }
        return .moved(read)
    }
}
