import Glibc
import Testing
@testable import StockadeCgroups

@Suite("cgroup file helpers")
struct CgroupFilesTests {
    @Test("subdirectories lists directories only: not files, FIFOs or links to directories, on tmpfs and on cgroupfs")
    func subdirectoriesAreDirectoriesOnly() throws {
        var template = Array("/dev/shm/stockade-subdirs-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let dir = try #require(made.map { String(cString: $0) })
        defer {
            for name in ["b-run", "a-run", "memory.max", "fifo", "link-to-run"] {
                _ = unlink(dir + "/" + name)
                _ = rmdir(dir + "/" + name)
            }
            rmdir(dir)
        }
        #expect(mkdir(dir + "/b-run", 0o700) == 0)
        #expect(mkdir(dir + "/a-run", 0o700) == 0)
        let fd = open(dir + "/memory.max", O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        close(fd)
        #expect(mkfifo(dir + "/fifo", 0o600) == 0)
        #expect(symlink(dir + "/a-run", dir + "/link-to-run") == 0)
        #expect(CgroupFiles.subdirectories(dir) == ["a-run", "b-run"])
        #expect(CgroupFiles.subdirectories(dir + "/missing").isEmpty)

        // The kernel's own cgroupfs: its interface files are not directories, its child cgroups are.
        guard let hierarchy = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"].first(where: { access($0 + "/cgroup.procs", F_OK) == 0 }) else { return }
        let listed = Set(CgroupFiles.subdirectories(hierarchy))
        #expect(!listed.contains("cgroup.procs"))
        var expected = Set<String>()
        if let handle = opendir(hierarchy) {
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                var st = stat()
                if name != ".", name != "..", lstat(hierarchy + "/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { expected.insert(name) }
            }
        }
        #expect(listed == expected)
    }
}
