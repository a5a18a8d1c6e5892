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
        /// Set once a wait has failed: runs are no longer held.
        var open = false
    }
    private let state = Mutex(State())
    /// Holds a run cancelled before it starts too, as a supervisor busy planning it would be.
    private let holdCancelled: Bool

    init(holdCancelled: Bool = false) {
        self.holdCancelled = holdCancelled
    }

    var started: [String] { state.withLock { $0.started } }
    var peak: Int { state.withLock { $0.peak } }

    func run(_ options: RunOptions, _ cancellation: RunCancellation, _ runId: String) async -> RunReport {
        if cancellation.isCancelled && !holdCancelled { return RunReport(runId: runId, profile: "default", outcome: .cancelled) }
        state.withLock { s in
            s.running += 1
            s.peak = max(s.peak, s.running)
            s.started.append(options.command?.first ?? "")
        }
        await withCheckedContinuation { gate in
            let hold = state.withLock { s in
                if !s.open { s.gates[options.command?.first ?? ""] = gate }
                return !s.open
            }
            if !hold { gate.resume() }
        }
        state.withLock { $0.running -= 1 }
        return RunReport(runId: runId, profile: "default", outcome: cancellation.isCancelled ? .cancelled : .exited)
    }

    /// Lets the run named `name` finish, once it has started. Waits at most ten seconds; past that
    /// (a run that never starts) it records what it waited for and lets every run finish, so the
    /// test fails instead of hanging on a report.
    func release(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) async {
        let found = await poll { self.state.withLock { $0.gates.removeValue(forKey: name) } }
        guard let gate = found else {
            Issue.record("run \(name) never started (started: \(started))", sourceLocation: sourceLocation)
            return releaseAll()
        }
        gate.resume()
    }

    /// Waits, at most ten seconds, until `count` runs have started.
    func waitStarted(_ count: Int, sourceLocation: SourceLocation = #_sourceLocation) async {
        let reached = await poll { self.state.withLock { $0.started.count >= count } ? true : nil }
        if reached == nil {
            Issue.record("\(count) runs never started (started: \(started))", sourceLocation: sourceLocation)
            releaseAll()
        }
    }

    /// Opens every gate now and lets any run that starts later through at once.
    private func releaseAll() {
        let gates = state.withLock { s in
            defer { s.gates = [:]; s.open = true }
            return Array(s.gates.values)
        }
        for gate in gates { gate.resume() }
    }

    private func poll<T>(_ probe: () -> T?) async -> T? {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline && !Task.isCancelled {
            if let value = probe() { return value }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return probe()
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
        // One slot freed at a time, so the order the runs start in is the order they were given
        // their slots: submission order.
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

    @Test("a queued run that is cancelled leaves the queue at once: its report comes while every slot is still held, its place is free for another submission, and the runs behind it keep their order")
    func cancelledLeavesTheQueue() async throws {
        let held = HeldRuns()
        let service = service(held, running: 1, queued: 2)
        let a = try await service.submit(RunOptions(command: ["a"]))
        let b = try await service.submit(RunOptions(command: ["b"]))
        let c = try await service.submit(RunOptions(command: ["c"]))
        await held.waitStarted(1)
        // Positive control: the queue is full.
        await #expect(throws: RunServiceError.queueFull(running: 1, queued: 2, limit: 2)) { _ = try await service.submit(RunOptions(command: ["x"])) }
        b.cancel()
        // Its report arrives though "a" still holds the only slot.
        // (Polled with a deadline: a report that never comes fails the test instead of hanging it.)
        let deadline = ContinuousClock.now + .seconds(10)
        while b.currentState != .finished && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
        #expect(b.currentState == .finished, "the cancelled queued run did not end while the slot was held")
        if b.currentState == .finished { #expect(await b.report().outcome == .cancelled) }
        #expect(await service.load == (running: 1, queued: 1))
        let d = try await service.submit(RunOptions(command: ["d"]))
        #expect(held.started == ["a"])
        await held.release("a")
        await held.waitStarted(2)
        #expect(held.started == ["a", "c"])
        await held.release("c")
        await held.waitStarted(3)
        #expect(held.started == ["a", "c", "d"])
        await held.release("d")
        for handle in [a, c, d] { #expect(await handle.report().outcome == .exited) }
        #expect(await service.load == (running: 0, queued: 0))
    }

    @Test("cancelled queued runs leave through one lane, one at a time: a second one cancelled while the lane is busy keeps its place (never ahead of an earlier run) until the lane frees")
    func oneLane() async throws {
        let held = HeldRuns(holdCancelled: true)
        let service = service(held, running: 1, queued: 4)
        var handles: [RunHandle] = []
        for name in ["a", "b", "c", "d", "e"] { handles.append(try await service.submit(RunOptions(command: [name]))) }
        await held.waitStarted(1)
        handles[3].cancel()
        await held.waitStarted(2)
        #expect(held.started == ["a", "d"], "the cancelled run d took the lane")
        #expect(await service.load == (running: 1, queued: 3))
        handles[2].cancel()
        try await Task.sleep(for: .milliseconds(50))
        #expect(held.started == ["a", "d"], "c went through a lane that was busy")
        #expect(await service.load == (running: 1, queued: 3), "c keeps its place while the lane is busy")
        await held.release("d")
        await held.waitStarted(3)
        #expect(held.started == ["a", "d", "c"], "the freed lane takes the cancelled c")
        #expect(await service.load == (running: 1, queued: 2))
        await held.release("c")
        await held.release("a")
        await held.waitStarted(4)
        #expect(held.started.last == "b", "the slot goes to the oldest run, b")
        await held.release("b")
        await held.waitStarted(5)
        await held.release("e")
        let outcomes = await handles.asyncMap { await $0.report().outcome }
        #expect(outcomes == [.exited, .exited, .cancelled, .cancelled, .exited])
        #expect(await service.load == (running: 0, queued: 0))
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

extension Array where Element: Sendable {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        for element in self { out.append(await transform(element)) }
        return out
    }
}
