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

        // The kernel's own cgroupfs, in a cgroup of this test's own (nothing else adds or removes
        // children there while it lists): its interface files are not directories, its child is.
        guard let hierarchy = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"].first(where: { access($0 + "/cgroup.procs", F_OK) == 0 }) else { return }
        let own = hierarchy + "/stockade-test-subdirs-\(getpid())"
        guard mkdir(own, 0o755) == 0 else { return }  // not root, or no cgroupfs to write: the tmpfs half still holds
        defer {
            rmdir(own + "/child")
            rmdir(own)
        }
        #expect(mkdir(own + "/child", 0o755) == 0)
        #expect(access(own + "/cgroup.procs", F_OK) == 0)
        #expect(CgroupFiles.subdirectories(own) == ["child"])
    }
}
