import Glibc
import StockadeBundles

/// `stockade gc`: finished run directories past an age, never a running one
/// (a run holds its directory's lock while it runs).
public enum RunDirectoryMaintenance {
    /// `30s`, `15m`, `12h`, `7d` or plain seconds.
    public static func parseDuration(_ text: String) throws(SupervisorError) -> Double {
        do {
            return try RunDirectory.parseDuration(text)
        } catch {
            throw SupervisorError(.usage, error.description)
        }
    }

    /// Removes them and returns their run ids.
    public static func collectGarbage(stateDirectory: String, olderThan seconds: Double) throws(SupervisorError) -> [String] {
        releaseLayers(stateDirectory: stateDirectory)
        do {
            return try RunDirectory.collectGarbage(stateDirectory: stateDirectory, olderThan: seconds)
        } catch {
            throw SupervisorError(.io, error.description)
        }
    }

    /// Removes these finished run directories at once (`stockade verify`'s probe
    /// runs, whose evidence the audit trail keeps); returns the ids removed.
    public static func remove(stateDirectory: String, runIds: [String]) throws(SupervisorError) -> [String] {
        do {
            return try RunDirectory.remove(stateDirectory: stateDirectory, runIds: runIds)
        } catch {
            throw SupervisorError(.io, error.description)
        }
    }

    /// Earlier versions mounted a run's workspace layer (a tmpfs) on `<run>/upper`, where a
    /// supervisor that died mid-run left it: detach any such leftover of runs nobody holds.
    /// (The layer is now made in a private mount namespace and never mounted on the host.)
    static func releaseLayers(stateDirectory: String) {
        let runs = stateDirectory + "/runs"
        guard let dir = opendir(runs) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard !name.hasPrefix("."), Supervisor.isFinishedRun(runs + "/" + name) else { continue }
            _ = umount2(runs + "/" + name + "/upper", Int32(MNT_DETACH) | Int32(UMOUNT_NOFOLLOW))
        }
    }
}
