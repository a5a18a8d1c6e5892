import Foundation
import Testing
@testable import StockadeLinux

@Suite("which process the kernel's log names as the OOM killer's victim")
struct OOMEvidenceTests {
    static let run = "stockade/01TESTRUN"
    /// Lines count from 5 s; the log must be complete from 5.5 s (the run's start, or its last
    /// seconds when longer; the supervisor allows its clock some slack for the lines).
    static let since: UInt64 = 5_000_000
    static let start: UInt64 = 5_500_000

    /// Records as /dev/kmsg gives them: "priority,sequence,microseconds,flags;message".
    static func record(_ at: UInt64, _ message: String, seq: Int = 0) -> KernelLog.Read {
        .record(ArraySlice(Array("3,\(seq),\(at),-;\(message)\n".utf8)))
    }

    static func decide(_ reads: [KernelLog.Read], pids: [Int32] = [4242, 4241]) -> Bool? {
        var rest = reads[...]
        return OOMEvidence.scan(pids: pids, cgroupName: run, window: .init(sinceMicros: since, completeFromMicros: start)) { rest.popFirst() ?? .end }
    }

    static let before = record(1_000_000, "Linux version 6.1.0")
    static let killedMain = record(6_000_000, "Memory cgroup out of memory: Killed process 4242 (stockade-probe) total-vm:140000kB")
    static let summaryMain = record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task_memcg=/\(run),task=stockade-probe,pid=4242,uid=0")
    static let killedOther = record(6_000_000, "Memory cgroup out of memory: Killed process 4300 (sh) total-vm:2000kB")

    @Test("the victim's own line, in either form, answers yes")
    func named() {
        #expect(Self.decide([Self.before, Self.killedMain]) == true)
        #expect(Self.decide([Self.before, Self.summaryMain]) == true)
        // Init (the second pid) counts too: its death ends the namespace.
        #expect(Self.decide([Self.before, Self.record(6_000_000, "Memory cgroup out of memory: Killed process 4241 (stockade-init) ")]) == true)
    }

    @Test("a victim's name cannot forge the pid or the cgroup: they are read where the kernel writes them")
    func forgedName() {
        // A child of this run, OOM-killed, named ",pid=4242," (the main process's host pid) by the worker.
        let named = Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task_memcg=/\(Self.run),task=,pid=4242,,pid=4300,uid=1000000000")
        #expect(Self.decide([Self.before, named]) == false)
        // ... or ",uid=0,pid=4242," and the like: the line's end is still the kernel's.
        let trailing = Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/\(Self.run),task=x,pid=4242,uid=,pid=4300,uid=0")
        #expect(Self.decide([Self.before, trailing]) == false)
        // A child of another cgroup whose name carries this run's path is not this run's victim.
        let path = Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/stockade/01OTHER,task=/\(Self.run),pid=4242,uid=0")
        #expect(Self.decide([Self.before, path]) == false)
        // The "Killed process" form counts only at the start of the kernel's message.
        let inside = Self.record(6_000_000, "audit: comm=\"Memory cgroup out of memory: Killed process 4242 (\" denied")
        #expect(Self.decide([Self.before, inside]) == false)
        // The same lines as the kernel writes them for the main process itself still count (control),
        // under a nested hierarchy too (a supervisor in a slice).
        #expect(Self.decide([Self.before, Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/\(Self.run),task=,pid=4300,,pid=4242,uid=0")]) == true)
        // The line exactly as this host's 6.18 kernel wrote it for a run (its pool cgroup's name).
        let host = Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/stockade/p-4026531836-30791-2702810-1,task_memcg=/stockade/p-4026531836-30791-2702810-1,task=perl,pid=31132,uid=1114164712")
        var rest = [Self.before, host][...]
        #expect(OOMEvidence.scan(pids: [31132], cgroupName: "stockade/p-4026531836-30791-2702810-1", window: .init(sinceMicros: Self.since, completeFromMicros: Self.start)) {
            rest.popFirst() ?? .end
        } == true)
        #expect(Self.decide([Self.before, Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/a.slice/\(Self.run),task_memcg=/a.slice/\(Self.run),task=perl,pid=4242,uid=0")]) == true)
    }

    @Test("a log that holds the whole window and names another process answers no")
    func another() {
        #expect(Self.decide([Self.before, Self.killedOther]) == false)
        // A summary naming the pid in another run's cgroup is not this run's.
        let elsewhere = Self.record(6_000_000, "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/stockade/01OTHER,task=x,pid=4242,uid=0")
        #expect(Self.decide([Self.before, elsewhere]) == false)
        // A line from before the window names a recycled pid, not this run's process.
        let old = Self.record(4_000_000, "Memory cgroup out of memory: Killed process 4242 (old) ")
        #expect(Self.decide([old, Self.killedOther]) == false)
    }

    @Test("the supervisor's window: lines from two seconds before the spawn; complete from the spawn, or from ten seconds before the end of a longer run")
    func window() {
        let s: UInt64 = 1_000_000_000  // nanoseconds per second
        // A short run: the log must reach back to its spawn.
        #expect(OOMEvidence.Window(spawnedAtNanos: 100 * s, endedAtNanos: 103 * s)
                == OOMEvidence.Window(sinceMicros: 98_000_000, completeFromMicros: 100_000_000))
        // A long run: only its last ten seconds.
        #expect(OOMEvidence.Window(spawnedAtNanos: 100 * s, endedAtNanos: 4000 * s)
                == OOMEvidence.Window(sinceMicros: 98_000_000, completeFromMicros: 3_990_000_000))
        // Exactly ten seconds, and a clock this close to boot, do not wrap.
        #expect(OOMEvidence.Window(spawnedAtNanos: 100 * s, endedAtNanos: 110 * s).completeFromMicros == 100_000_000)
        #expect(OOMEvidence.Window(spawnedAtNanos: s, endedAtNanos: 2 * s) == OOMEvidence.Window(sinceMicros: 0, completeFromMicros: 1_000_000))
        // An end before the spawn (never seen; the clocks are one) is taken as the spawn.
        #expect(OOMEvidence.Window(spawnedAtNanos: 100 * s, endedAtNanos: 50 * s).completeFromMicros == 100_000_000)
    }

    @Test("where the log's oldest record is newer than the time it must reach back to, records may be gone: cannot tell")
    func overwritten() {
        // A fork bomb's OOM report (every task of its cgroup) rolled the ring past the time that matters.
        let flood = (0..<50).map { Self.record(7_000_000 + UInt64($0), "[ \($0)]  0  \($0)  1000  2  0  0  sh") }
        #expect(Self.decide(flood + [Self.killedOther]) == nil)
        // ... unless the victim's own line survived.
        #expect(Self.decide(flood + [Self.killedMain]) == true)
        // The oldest record from the slack before that time is not enough: the records that
        // matter may be the ones gone.
        #expect(Self.decide([Self.record(5_200_000, "z"), Self.killedOther]) == false)
        #expect(Self.decide([Self.record(5_600_000, "z"), Self.killedOther]) == nil)
    }

    @Test("a long run's log may have rolled past its start: it must hold only the seconds before the end")
    func longRun() {
        // The run started at 100 s and its main process ended at 4000 s; the oldest record kept is
        // from 3000 s. Lines count from 98 s, and the log must be complete from 3990 s.
        let decide = { (reads: [KernelLog.Read]) -> Bool? in
            var rest = reads[...]
            return OOMEvidence.scan(pids: [4242], cgroupName: Self.run, window: .init(sinceMicros: 98_000_000, completeFromMicros: 3_990_000_000)) {
                rest.popFirst() ?? .end
            }
        }
        let oldest = Self.record(3_000_000_000, "eth0: link up")
        #expect(decide([oldest, Self.record(3_999_000_000, "Memory cgroup out of memory: Killed process 4300 (sh) ")]) == false)
        #expect(decide([oldest, Self.record(3_999_000_000, "Memory cgroup out of memory: Killed process 4242 (perl) ")]) == true)
        #expect(decide([Self.record(3_995_000_000, "x"), Self.killedOther]) == nil)
    }

    @Test("records overwritten while the log is read (EPIPE) leave a gap: cannot tell, unless the gap is before the window")
    func lostWhileReading() {
        #expect(Self.decide([Self.before, .lost, Self.record(7_000_000, "x"), Self.killedOther]) == nil)
        #expect(Self.decide([Self.before, .lost, Self.record(2_000_000, "y"), Self.killedOther]) == false)
        #expect(Self.decide([Self.before, .lost, Self.killedMain]) == true)
    }

    @Test("an unreadable or empty log cannot tell")
    func unreadable() {
        #expect(Self.decide([.failed]) == nil)
        #expect(Self.decide([]) == nil)
        #expect(Self.decide([Self.before, .failed]) == nil)
    }

    @Test("the host's own log: a pid no process can hold is no victim, and \"no\" only while the log reaches back far enough")
    func hostLog() throws {
        guard let oldest = KernelLog.oldestRecordMicros() else { return }  // no /dev/kmsg here
        // A pid above pid_max was never any victim: a log complete from then on says no.
        #expect(OOMEvidence.killedByOOM(pids: [Int32.max], cgroupName: "stockade/none", window: .init(sinceMicros: 0, completeFromMicros: .max)) == false)
        // A time before the oldest record kept (the ring has rolled since): cannot tell.
        if oldest > 0 {
            #expect(OOMEvidence.killedByOOM(pids: [Int32.max], cgroupName: "stockade/none", window: .init(sinceMicros: 0, completeFromMicros: oldest - 1)) == nil)
        }
    }
}
