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
        do {
            return try RunDirectory.collectGarbage(stateDirectory: stateDirectory, olderThan: seconds)
        } catch {
            throw SupervisorError(.io, error.description)
        }
    }
}
