import Foundation
import Glibc
import Logging
@testable import StockadeLinux
import StockadePolicy
import StockadeTestSupport
import Testing
@testable import StockadeSupervisor

@Suite("live logs: written as the output arrives, always a prefix of the final log")
struct LiveLogTests {
    static let secret = "hunter2-top-secret-value"

    static func inode(_ path: String) -> UInt {
        var st = stat()
        return stat(path, &st) == 0 ? UInt(st.st_ino) : 0
    }

    func contents(_ path: String) -> [UInt8] {
        (try? FileReading.read(path, limit: 1 << 20)) ?? []
    }

    /// Feeds `chunks` to a live log, checking after each flush that the file is a prefix of the
    /// final log and holds no piece of the secret; returns the file after `finish`, and the final log.
    func follow(_ chunks: [String], cap: Int) throws -> (file: [UInt8], final: [UInt8], snapshots: [[UInt8]]) {
        let scratch = ScratchDirectory("livelog")
        let redactor = Redactor(secrets: [Self.secret])
        let log = LiveLog(directory: scratch.path, stdoutCap: cap, stderrCap: cap, redactor: redactor, logger: Logger(label: "test"))
        var captured = CapturedOutput()
        for chunk in chunks {
            let bytes = Array(chunk.utf8)
            captured.totalBytes += bytes.count
            let room = cap - captured.bytes.count
            if room > 0 { captured.bytes += bytes.prefix(room) }
        }
        let final = redactor.redact(captured: captured)
        var snapshots: [[UInt8]] = []
        for chunk in chunks {
            log.append(1, Array(chunk.utf8))
            log.flush()
            let now = contents(scratch.path + "/stdout.log")
            snapshots.append(now)
            #expect(final.starts(with: now), "after \(chunk.debugDescription): \(String(decoding: now, as: UTF8.self).debugDescription) is not a prefix of the final log")
        }
        let inode = Self.inode(scratch.path + "/stdout.log")
        log.finish(stdout: final, stderr: [])
        // Completed in place (appended to), not replaced: a reader holding the file sees every byte.
        #expect(Self.inode(scratch.path + "/stdout.log") == inode)
        return (contents(scratch.path + "/stdout.log"), final, snapshots)
    }

    @Test("a secret split across chunks is never written in part: the file is a prefix of the final log after every chunk")
    func secretSplitAcrossChunks() throws {
        let chunks = ["line 1\nline 2 token=hun", "ter2-top-se", "cret-value done\n", "line 3 hunter2-top", "\n"]
        let (file, final, snapshots) = try follow(chunks, cap: 1 << 20)
        let text = String(decoding: file, as: UTF8.self)
        #expect(text == "line 1\nline 2 token=[REDACTED] done\nline 3 hunter2-top\n")
        #expect(file == final)
        // Held back while undecided: nothing of "hun..." was written before the secret was whole.
        #expect(String(decoding: snapshots[0], as: UTF8.self) == "line 1\nline 2 token=")
        #expect(String(decoding: snapshots[1], as: UTF8.self) == "line 1\nline 2 token=")
        for snapshot in snapshots {
            #expect(!String(decoding: snapshot, as: UTF8.self).contains("ter2-top-se"))
        }
        // A beginning that turned out not to be the secret is released by the next chunk.
        #expect(String(decoding: snapshots[4], as: UTF8.self).hasSuffix("line 3 hunter2-top\n"))
    }

    @Test("the cap cuts a secret's beginning: it is never written, and the file ends as the report's capture does")
    func capCutsASecret() throws {
        let chunks = ["0123456789 hunter2-t", "op-secret-value and more\n"]
        let (file, final, snapshots) = try follow(chunks, cap: 20)
        #expect(String(decoding: file, as: UTF8.self) == "0123456789 ")
        #expect(file == final)
        #expect(snapshots.allSatisfy { !String(decoding: $0, as: UTF8.self).contains("hunter2") })
    }

    @Test("without secrets every byte is written as it comes, up to the cap; later chunks are ignored after finish")
    func plainOutput() throws {
        let scratch = ScratchDirectory("livelog")
        let log = LiveLog(directory: scratch.path, stdoutCap: 8, stderrCap: 100, redactor: .none, logger: Logger(label: "test"))
        log.append(1, Array("abc".utf8))
        log.append(2, Array("err".utf8))
        log.flush()
        #expect(contents(scratch.path + "/stdout.log") == Array("abc".utf8))
        #expect(contents(scratch.path + "/stderr.log") == Array("err".utf8))
        log.append(1, Array("defghij".utf8))
        log.flush()
        #expect(contents(scratch.path + "/stdout.log") == Array("abcdefgh".utf8))
        let inodes = (Self.inode(scratch.path + "/stdout.log"), Self.inode(scratch.path + "/stderr.log"))
        log.finish(stdout: Array("abcdefgh".utf8), stderr: Array("err".utf8))
        #expect((Self.inode(scratch.path + "/stdout.log"), Self.inode(scratch.path + "/stderr.log")) == inodes)
        log.append(2, Array("late".utf8))
        log.flush()
        #expect(contents(scratch.path + "/stderr.log") == Array("err".utf8))
    }

    @Test("a file that is not a prefix of the final log is replaced by the final log at the end")
    func divergedFileIsRewritten() throws {
        let scratch = ScratchDirectory("livelog")
        let log = LiveLog(directory: scratch.path, stdoutCap: 100, stderrCap: 100, redactor: .none, logger: Logger(label: "test"))
        log.append(1, Array("abc".utf8))
        log.flush()
        let inode = Self.inode(scratch.path + "/stdout.log")
        log.finish(stdout: Array("xyz!".utf8), stderr: [])
        #expect(Self.inode(scratch.path + "/stdout.log") != inode, "replaced through a rename")
        #expect(contents(scratch.path + "/stdout.log") == Array("xyz!".utf8))
        #expect(contents(scratch.path + "/stderr.log") == [])
    }
    @Test("output that waits is written by the log's own timer, without a flush call; the timer is armed only by output and closes once the log is finished")
    func flushTimer() throws {
        let scratch = ScratchDirectory("livelog")
        let log = LiveLog(directory: scratch.path, stdoutCap: 100, stderrCap: 100, redactor: .none, logger: Logger(label: "test"))
        log.append(1, [])
        #expect(log.flushTimerFD == -1, "a timer without output")
        log.append(1, Array("tick".utf8))
        let timer = log.flushTimerFD
        #expect(timer >= 0 && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(timer)")) == "anon_inode:[timerfd]")
        log.append(2, Array("tock".utf8))
        #expect(log.flushTimerFD == timer, "one timer for both streams")
        var waited = 0
        while contents(scratch.path + "/stderr.log").isEmpty && waited < 200 {
            usleep(10_000)
            waited += 1
        }
        #expect(contents(scratch.path + "/stdout.log") == Array("tick".utf8), "not written by the timer within 2 s")
        #expect(contents(scratch.path + "/stderr.log") == Array("tock".utf8))
        log.finish(stdout: Array("tick".utf8), stderr: Array("tock".utf8))
        waited = 0
        while log.flushTimerFD >= 0 && waited < 200 {
            usleep(10_000)
            waited += 1
        }
        #expect(log.flushTimerFD == -1, "the timer stayed open after finish")
    }
}
