import Synchronization
import Testing
@testable import StockadeSupervisor

/// A runner that holds each run until the test lets it go, and counts how many run at once.
final class HeldRuns: Sendable {
    private struct State {
        var running = 0
        var peak = 0
        var started: [String] = []
        var gates: [String: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    var started: [String] { state.withLock { $0.started } }
    var peak: Int { state.withLock { $0.peak } }

    func run(_ options: RunOptions, _ cancellation: RunCancellation, _ runId: String) async -> RunReport {
        if cancellation.isCancelled { return RunReport(runId: runId, profile: "default", outcome: .cancelled) }
        state.withLock { s in
            s.running += 1
            s.peak = max(s.peak, s.running)
            s.started.append(options.command?.first ?? "")
        }
        await withCheckedContinuation { gate in state.withLock { $0.gates[options.command?.first ?? ""] = gate } }
        state.withLock { $0.running -= 1 }
        return RunReport(runId: runId, profile: "default", outcome: cancellation.isCancelled ? .cancelled : .exited)
    }

    /// Lets the run named `name` finish, once it has started.
    func release(_ name: String) async {
        while true {
            if let gate = state.withLock({ $0.gates.removeValue(forKey: name) }) { return gate.resume() }
            await Task.yield()
        }
    }

    func waitStarted(_ count: Int) async {
        while state.withLock({ $0.started.count }) < count { await Task.yield() }
    }
}

@Suite("the run service's admission", .timeLimit(.minutes(1)))
struct RunServiceTests {
    func service(_ held: HeldRuns, running: Int, queued: Int) -> RunService {
        RunService(admission: .init(maxRunning: running, maxQueued: queued)) { options, _, cancellation, runId in
            await held.run(options, cancellation, runId)
        }
    }

    @Test("at most maxRunning run at once; queued runs start in order as others finish")
    func admissionOrder() async throws {
        let held = HeldRuns()
        let service = service(held, running: 2, queued: 3)
        var handles: [RunHandle] = []
        for name in ["a", "b", "c", "d", "e"] {
            handles.append(try await service.submit(RunOptions(command: [name])))
        }
        await held.waitStarted(2)
        #expect(Set(held.started) == ["a", "b"])
        #expect(handles[2].currentState == .queued)
        await held.release("a")
        await held.waitStarted(3)
        #expect(held.started.last == "c")
        // One slot freed at a time: two freed together start d and e on tasks of their own, in
        // either order.
        await held.release("b")
        await held.waitStarted(4)
        #expect(held.started.last == "d")
        await held.release("c")
        await held.waitStarted(5)
        #expect(held.started.last == "e")
        for name in ["d", "e"] { await held.release(name) }
        for handle in handles { #expect(await handle.report().outcome == .exited) }
        #expect(held.peak == 2)
        #expect(Array(held.started.suffix(3)) == ["c", "d", "e"])
    }

    @Test("a submission past running + queued is refused with queueFull, and admitted once a run finishes")
    func queueFull() async throws {
        let held = HeldRuns()
        let service = service(held, running: 1, queued: 1)
        let first = try await service.submit(RunOptions(command: ["a"]))
        _ = try await service.submit(RunOptions(command: ["b"]))
        do {
            _ = try await service.submit(RunOptions(command: ["c"]))
            Issue.record("a third run was admitted past one running and one queued")
        } catch {
            guard case .queueFull(let running, let queued, let limit) = error else { Issue.record("\(error)"); return }
            #expect(running + queued == 2 && limit == 1)
        }
        await held.waitStarted(1)
        await held.release("a")
        _ = await first.report()
        _ = try await service.submit(RunOptions(command: ["c"]))
        await held.release("b")
        await held.release("c")
    }

    @Test("a queued run that is cancelled never starts; cancelAll cancels the running ones and closes the service")
    func cancellation() async throws {
        let held = HeldRuns()
        let service = service(held, running: 1, queued: 2)
        let running = try await service.submit(RunOptions(command: ["a"]))
        let queued = try await service.submit(RunOptions(command: ["b"]))
        await held.waitStarted(1)
        queued.cancel()
        await held.release("a")
        #expect(await running.report().outcome == .exited)
        #expect(await queued.report().outcome == .cancelled)
        #expect(held.started == ["a"])

        let third = try await service.submit(RunOptions(command: ["c"]))
        await held.waitStarted(2)
        await service.cancelAll()
        await held.release("c")
        #expect(await third.report().outcome == .cancelled)
        await #expect(throws: RunServiceError.closed) { _ = try await service.submit(RunOptions(command: ["d"])) }
    }
}
