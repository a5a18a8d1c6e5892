@preconcurrency import Dispatch
import Glibc
import Synchronization

/// SIGINT and SIGTERM to a command that runs workers: the first cancels (the worker is killed,
/// its cgroup emptied, the report printed with outcome `cancelled`, exit 130); a second one
/// ends the process at once, after `forced` has recorded what it can.
final class Interrupts: Sendable {
    private let sources: [any DispatchSourceSignal]
    private let count = Mutex(0)

    private init(sources: [any DispatchSourceSignal]) {
        self.sources = sources
    }

    /// Keeps the watcher alive for the whole command.
    nonisolated(unsafe) private static var installed: Interrupts?

    static func install(first: @escaping @Sendable () -> Void, forced: @escaping @Sendable () -> Void) {
        let queue = DispatchQueue(label: "stockade.interrupts")
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            // Delivered to the source instead of ending the process.
            signal(sig, SIG_IGN)
            sources.append(DispatchSource.makeSignalSource(signal: sig, queue: queue))
        }
        let watcher = Interrupts(sources: sources)
        for source in sources {
            source.setEventHandler { [watcher] in
                let n = watcher.count.withLock { c -> Int in
                    c += 1
                    return c
                }
                if n == 1 {
                    Console.error("stockade: interrupted: cancelling (interrupt again to exit at once)")
                    first()
                } else if n == 2 {
                    forced()
                    _exit(130)
                }
            }
            source.resume()
        }
        installed = watcher
    }
}
