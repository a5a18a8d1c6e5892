import NIOCore
import Synchronization

/// Bounds the streams one principal holds open at once (`GET /v1/events`, a followed log): each
/// polls the store or a file several times a second for as long as it lasts, so without a bound one
/// token could load the service with as many as `--max-connections` allows. A slot is taken before
/// the answer and given back once, whichever comes first: the stream's end or its connection's close.
public final class StreamSlots: Sendable {
    /// `--max-streams-per-token`'s default and range.
    public static let defaultPerPrincipal = 32
    public static let range = 1...1024
    let perPrincipal: Int

    init(perPrincipal: Int = StreamSlots.defaultPerPrincipal) {
        self.perPrincipal = perPrincipal
    }

    private let held = Mutex<[String: Int]>([:])

    /// A slot of `principal`'s, or nil when it holds `perPrincipal` already.
    func take(_ principal: String) -> Slot? {
        let taken = held.withLock { all -> Bool in
            guard all[principal, default: 0] < perPrincipal else { return false }
            all[principal, default: 0] += 1
            return true
        }
        return taken ? Slot(slots: self, principal: principal) : nil
    }

    fileprivate func give(_ principal: String) {
        held.withLock { all in
            let left = (all[principal] ?? 1) - 1
            all[principal] = left > 0 ? left : nil
        }
    }

    /// One slot, given back once however often `release` is called.
    final class Slot: Sendable {
        private let slots: StreamSlots
        private let principal: String
        private let released = Atomic<Bool>(false)

        fileprivate init(slots: StreamSlots, principal: String) {
            self.slots = slots
            self.principal = principal
        }

        func release() {
            if !released.exchange(true, ordering: .acquiringAndReleasing) { slots.give(principal) }
        }

        /// Given back when `channel` closes too, in case the answer's body is never run.
        func release(onClose channel: any Channel) {
            channel.closeFuture.whenComplete { [self] _ in release() }
        }
    }
}
