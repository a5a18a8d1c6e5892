import Glibc
import StockadeBundles
import Testing

@Suite("Run directories and garbage collection")
struct RunDirectoryTests {
    func mode(_ path: String) -> mode_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : nil
    }

    @Test("create makes the run directory 0700 with logs/ and a held lock; request/, result/ and upper/ only when a run asks")
    func create() throws {
        let s = Scratch("state")
        let run = try RunDirectory.create(stateDirectory: s["state"], runId: "01JRUN0001")
        #expect(run.path == s["state/runs/01JRUN0001"])
        #expect(mode(run.path) == 0o700)
        #expect(mode(run.logsPath) == 0o700)
        // Nothing a run without a request bundle, a result or a workspace would not use (each is an inode and a block).
        #expect(mode(run.requestPath) == nil && mode(run.resultPath) == nil && mode(run.upperPath) == nil && mode(run.path + "/work") == nil)
        #expect(try run.makeSubdirectory(RunDirectory.resultName) == run.resultPath)
        #expect(mode(run.resultPath) == 0o700)
        #expect(try run.makeSubdirectory(RunDirectory.requestName) == run.requestPath)
        #expect(try run.makeSubdirectory(RunDirectory.upperName) == run.upperPath)
        #expect(try run.makeSubdirectory(RunDirectory.imageRootName) == run.path + "/image-root")
        #expect(mode(run.requestPath) == 0o700 && mode(run.upperPath) == 0o700 && mode(run.path + "/image-root") == 0o700)
        #expect(throws: BundleError.self, "made twice") { try run.makeSubdirectory(RunDirectory.upperName) }
        #expect(run.reportPath == run.path + "/report.json")
        let fd = try #require(run.descriptor)
        var byFd = stat(), byPath = stat()
        #expect(fstat(fd, &byFd) == 0 && stat(run.path, &byPath) == 0 && byFd.st_ino == byPath.st_ino)

        let other = open(run.path + "/.lock", O_RDWR | O_CLOEXEC)
        try #require(other >= 0)
        defer { close(other) }
        #expect(flock(other, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
        run.close()
        #expect(run.descriptor == nil)
        #expect(flock(other, LOCK_EX | LOCK_NB) == 0)
    }

    @Test("a run id that exists already is refused")
    func duplicate() throws {
        let s = Scratch("state")
        let run = try RunDirectory.create(stateDirectory: s.path, runId: "same")
        defer { run.close() }
        #expect(throws: BundleError.self) { try RunDirectory.create(stateDirectory: s.path, runId: "same") }
        do {
            _ = try RunDirectory.create(stateDirectory: s.path, runId: "same")
        } catch {
            #expect(error.code == .runDirectoryExists)
        }
    }

    @Test("run ids that are not plain names are refused", arguments: ["", ".", "..", ".hidden", "a/b", "../x", "a\nb", "é", String(repeating: "x", count: 129)])
    func invalidIds(id: String) throws {
        let s = Scratch("state")
        do {
            _ = try RunDirectory.create(stateDirectory: s.path, runId: id)
            Issue.record("accepted \(id)")
        } catch {
            #expect(error.code == .invalidRunId)
        }
        #expect(!s.exists("runs"), "nothing is created for a refused id")
    }

    @Test("gc never removes a run whose lock is held, however old")
    func lockedRunSurvives() throws {
        let s = Scratch("state")
        let run = try RunDirectory.create(stateDirectory: s.path, runId: "running")
        let removed = try RunDirectory.collectGarbage(stateDirectory: s.path, olderThan: 0,
                                                      now: RunDirectory.currentTime() + 86400)
        #expect(removed == [])
        #expect(s.exists("runs/running/logs"))
        run.close()
        #expect(try RunDirectory.collectGarbage(stateDirectory: s.path, olderThan: 0,
                                                now: RunDirectory.currentTime() + 86400) == ["running"])
        #expect(!s.exists("runs/running"))
    }

    @Test("removing named runs takes exactly the finished ones named, however new; never a held one, another run, or a name create does not make")
    func removeNamed() throws {
        let s = Scratch("state")
        let done = try RunDirectory.create(stateDirectory: s.path, runId: "probe-done")
        done.close()
        let other = try RunDirectory.create(stateDirectory: s.path, runId: "other-done")
        other.close()
        let running = try RunDirectory.create(stateDirectory: s.path, runId: "probe-running")
        let removed = try RunDirectory.remove(stateDirectory: s.path, runIds: ["probe-done", "probe-running", "../state", "missing"])
        #expect(removed == ["probe-done"])
        #expect(!s.exists("runs/probe-done"))
        #expect(s.exists("runs/probe-running/logs"))
        #expect(s.exists("runs/other-done"))
        running.close()
        #expect(try RunDirectory.remove(stateDirectory: s.path, runIds: ["probe-running"]) == ["probe-running"])
        #expect(!s.exists("runs/probe-running"))
    }

    @Test("gc removes finished runs older than the cutoff, aged by report.json else by the directory")
    func ages() throws {
        let s = Scratch("state")
        for id in ["old", "young", "old-dir-fresh-report"] {
            try RunDirectory.create(stateDirectory: s.path, runId: id).close()
        }
        try s.write("runs/old/report.json", "{}")
        try s.write("runs/old-dir-fresh-report/report.json", "{}")
        let now = RunDirectory.currentTime()
        // Age by report.json: 2 hours for "old", fresh for the other; directory mtimes 2 hours old.
        func age(_ relative: String, by seconds: Int) throws {
            var times = [timespec(tv_sec: Int(now) - seconds, tv_nsec: 0), timespec(tv_sec: Int(now) - seconds, tv_nsec: 0)]
            try #require(utimensat(AT_FDCWD, s[relative], &times, AT_SYMLINK_NOFOLLOW) == 0)
        }
        try age("runs/old/report.json", by: 7200)
        try age("runs/old-dir-fresh-report", by: 7200)
        try age("runs/old", by: 60)
        let removed = try RunDirectory.collectGarbage(stateDirectory: s.path, olderThan: 3600, now: now)
        #expect(removed == ["old"])
        #expect(s.exists("runs/young") && s.exists("runs/old-dir-fresh-report"))
        #expect(try RunDirectory.collectGarbage(stateDirectory: s.path, olderThan: 3600, now: now + 7200)
            == ["old-dir-fresh-report", "young"])
    }

    @Test("gc collects a run directory a crash left half-made, and create refuses its id meanwhile")
    func halfMade() throws {
        let s = Scratch("state")
        try s.write("runs/.creating-crashed/upper/file", "x")
        do {
            _ = try RunDirectory.create(stateDirectory: s.path, runId: "crashed")
            Issue.record("created over a half-made directory")
        } catch {
            #expect(error.code == .runDirectoryExists)
        }
        #expect(try RunDirectory.collectGarbage(stateDirectory: s.path, olderThan: 0,
                                                now: RunDirectory.currentTime() + 60) == [".creating-crashed"])
        #expect(!s.exists("runs/.creating-crashed"))
        let run = try RunDirectory.create(stateDirectory: s.path, runId: "crashed")
        run.close()
        #expect(s.exists("runs/crashed/logs") && !s.exists("runs/.creating-crashed"))
    }

    @Test("gc without a state directory removes nothing")
    func missingState() throws {
        let s = Scratch("state")
        #expect(try RunDirectory.collectGarbage(stateDirectory: s["nope"], olderThan: 0) == [])
    }

    @Test("gc removes a hostile upper tree without following its links or leaving mode-000 directories behind")
    func hostileTree() throws {
        let s = Scratch("state")
        try s.write("canary/file", "alive")
        try s.mkdir("canary/dir")
        try s.write("canary/dir/inner", "alive too")
        let run = try RunDirectory.create(stateDirectory: s["state"], runId: "hostile")
        _ = try run.makeSubdirectory(RunDirectory.upperName)
        run.close()
        let upper = "state/runs/hostile/upper"
        try s.symlink(upper + "/to-dir", to: s["canary"])
        try s.symlink(upper + "/to-file", to: s["canary/file"])
        try s.symlink(upper + "/relative", to: "../../../../canary")
        try s.write(upper + "/locked/deeper/file", "x", mode: 0o000)
        try s.symlink(upper + "/locked/deeper/back", to: s["canary/dir"])
        try s.mkdir(upper + "/locked/deeper", mode: 0o000)
        try s.mkdir(upper + "/locked", mode: 0o000)
        try s.fifo(upper + "/pipe")
        try s.write(upper + "/odd", "x", mode: 0o6777)
        if isRoot { try s.device(upper + "/whiteout") }
        // Deeper than the remover recurses: it must move the chain up rather than give up.
        var chain = upper + "/chain"
        for _ in 0..<80 { chain += "/d" }
        try s.mkdir(chain)
        try s.symlink(chain + "/escape", to: s["canary"])
        try s.mkdir(chain, mode: 0o000)
        // The run's own directories, made unusable by the worker.
        try #require(chmod(s["state/runs/hostile/logs"], 0) == 0)

        let removed = try RunDirectory.collectGarbage(stateDirectory: s["state"], olderThan: 0,
                                                      now: RunDirectory.currentTime() + 60)
        #expect(removed == ["hostile"])
        #expect(!s.exists("state/runs/hostile"))
        #expect(s.read("canary/file") == "alive")
        #expect(s.read("canary/dir/inner") == "alive too")
        #expect(mode(s["canary"]) == 0o755 && mode(s["canary/file"]) == 0o644)
    }

    @Test("gc leaves alone entries of runs/ that are not run directories")
    func strangers() throws {
        let s = Scratch("state")
        try s.write("canary/file", "alive")
        try s.mkdir("state/runs")
        try s.symlink("state/runs/link", to: s["canary"])
        try s.write("state/runs/file", "f")
        #expect(try RunDirectory.collectGarbage(stateDirectory: s["state"], olderThan: 0,
                                                now: RunDirectory.currentTime() + 60) == [])
        #expect(s.exists("state/runs/link") && s.exists("state/runs/file") && s.read("canary/file") == "alive")
    }

    static let durations: [(String, Double?)] = [
        ("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604_800), ("3600", 3600), ("0", 0), ("1.5h", 5400),
        ("", nil), ("s", nil), ("-5", nil), ("5x", nil), ("5 m", nil), (" 5m", nil), ("1e3", nil), ("5mm", nil),
        ("1.", nil), (".5", nil), ("1.2.3", nil), ("99999999999999d", nil), ("nan", nil), ("inf", nil),
    ]

    @Test("--older-than durations parse by the table; a bad one is an error naming the text", arguments: durations)
    func duration(text: String, seconds: Double?) {
        do {
            let value = try RunDirectory.parseDuration(text)
            #expect(value == seconds, "\(text)")
        } catch {
            #expect(seconds == nil, "\(text): \(error)")
            #expect(error.code == .invalidDuration)
            #expect(error.message.contains("\"\(text)\""))
        }
    }
}
