import Foundation
import Glibc
import Synchronization
import Testing
@testable import StockadeLinux

/// The user namespaces that carry the id maps of idmapped mounts (image layers, the workspace,
/// writable volumes) are made by a short-lived child per run. Runs are set up on several threads at
/// once: a child forked by one thread inherits what the others have open at that moment, so nothing
/// may wait on a descriptor another run's child can hold. (It once did: two runs' children each held
/// the other's hold pipe open and waited for its end, and `verify --image` hung for good.)
@Suite("id-mapped user namespaces made on many threads at once")
struct IdMapNamespaceTests {
    @Test("8 threads make 40 namespaces each: every call returns, and no child is left behind")
    func concurrentNamespaces() throws {
        guard getuid() == 0 else { return }
        let lease = try IdRangeLease.acquire()
        let map = "0 \(lease.base) 65536\n"
        let done = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        let threads = 8, rounds = 40
        // Children other suites keep for the whole test process (a scratch PostgreSQL's watchdog) are
        // not this test's.
        let before = Set(Self.children())
        func ours() -> [pid_t] { Self.children().filter { !before.contains($0) } }
        for _ in 0..<threads {
            Thread {
                for _ in 0..<rounds {
                    do {
                        let fd = try IdMappedUserNamespace.make(uidMap: map, gidMap: map, stage: .workspace, purpose: "the test")
                        // Positive check: the descriptor is a user namespace carrying the map.
                        var st = stat()
                        if fstat(fd, &st) != 0 { failures.withLock { $0.append("fstat: \(errno)") } }
                        close(fd)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                    done.add(1, ordering: .relaxed)
                }
            }.start()
        }
        var waited = 0
        while done.load(ordering: .relaxed) < threads * rounds && waited < 600 { usleep(100_000); waited += 1 }
        let finished = done.load(ordering: .relaxed)
        if finished < threads * rounds {
            // Unblock what is stuck so the suite can go on: the children are ours.
            let stuck = ours()
            for pid in stuck { kill(pid, SIGKILL) }
            Issue.record("deadlocked: \(finished) of \(threads * rounds) namespaces made in 60 s; children left waiting: \(stuck)")
            return
        }
        #expect(failures.withLock { $0 }.isEmpty)
        let left = ours()
        #expect(left.isEmpty, "children left behind: \(left)")
    }

    /// The processes whose parent is this test process.
    static func children() -> [pid_t] {
        let me = getpid()
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == me
        }
    }
}
