import ArgumentParser

/// `stockade run`'s command line read without ArgumentParser's reflection.
///
/// ArgumentParser learns a command's flags by reflecting on it (`Mirror`, then a dynamic cast per
/// property, each a first-time protocol-conformance lookup that scans every conformance record of a
/// binary holding thousands): about 4 ms of a one-shot `stockade run`'s 13 ms of CPU. `run` is the
/// command a task engine calls per task, so it is read here first, by hand, for the plain cases only:
/// every flag is one of `Run`'s, spelled `--name VALUE` or `--name=VALUE` (`-i` alone), each single
/// value given once, and the command after `--`. Anything else (help, an unknown or repeated flag, a
/// value that looks like a flag, a number that does not parse, a validation error) returns nil and
/// ArgumentParser reads the line instead, so every usage message and exit code is still its own.
/// `FastRunTests` holds the two readers to the same result, field by field, over a corpus of lines,
/// and fails when `Run` gains a flag this reader does not set.
enum FastRun {
    /// The flags that take a value, and whether the value may begin with `-` (ArgumentParser's
    /// `.unconditional`: `--memory`, `--cpus`, `--pids`, `--timeout`).
    private static let valued: [String: Bool] = [
        "state-dir": false, "host": false, "profile": false, "memory": true, "cpus": true, "pids": true,
        "timeout": true, "network": false, "allow-host": false, "publish": false, "volume": false, "env": false,
        "env-file": false, "label": false, "name": false, "workspace": false, "request": false, "image": false,
        "rootfs": false,
    ]
    private static let repeatable: Set<String> = ["allow-host", "publish", "volume", "env", "env-file", "label"]

    /// The validated flags for `arguments` (the command line after the global options, starting with
    /// `run`), or nil when ArgumentParser must read it.
    static func parse(_ arguments: [String]) -> RunFlags? {
        guard arguments.first == "run" else { return nil }
        var single: [String: String] = [:]
        var multiple: [String: [String]] = [:]
        var interactive = false, json = false
        var command: [String] = []
        var i = 1
        while i < arguments.count {
            let token = arguments[i]
            i += 1
            if token == "--" {
                command = Array(arguments[i...])
                break
            }
            if token == "-i" {
                if interactive { return nil }
                interactive = true
                continue
            }
            guard token.hasPrefix("--") else { return nil }  // a positional before `--`, or a short flag
            var name = String(token.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if name == "json" || name == "interactive" {
                guard inline == nil else { return nil }
                if name == "json" {
                    if json { return nil }
                    json = true
                } else {
                    if interactive { return nil }
                    interactive = true
                }
                continue
            }
            guard let unconditional = valued[name] else { return nil }
            let value: String
            if let inline {
                value = inline
            } else {
                guard i < arguments.count else { return nil }
                value = arguments[i]
                i += 1
                if value == "--" || (!unconditional && value.hasPrefix("-")) { return nil }
            }
            if repeatable.contains(name) {
                multiple[name, default: []].append(value)
            } else {
                if single[name] != nil { return nil }
                single[name] = value
            }
        }

        var run = RunFlags()
        run.stateDir = single["state-dir"]
        run.host = single["host"]
        run.profile = single["profile"] ?? "default"
        run.memory = single["memory"]
        if let text = single["cpus"] {
            guard let value = Double(text) else { return nil }
            run.cpus = value
        }
        if let text = single["pids"] {
            guard let value = Int(text) else { return nil }
            run.pids = value
        }
        run.timeout = single["timeout"]
        run.network = single["network"]
        run.allowHost = multiple["allow-host"] ?? []
        run.publish = multiple["publish"] ?? []
        run.volume = multiple["volume"] ?? []
        run.env = multiple["env"] ?? []
        run.envFile = multiple["env-file"] ?? []
        run.label = multiple["label"] ?? []
        run.name = single["name"]
        run.interactive = interactive
        run.workspace = single["workspace"]
        run.request = single["request"]
        run.image = single["image"]
        run.rootfs = single["rootfs"]
        run.json = json
        run.command = command
        do {
            try run.validate()
        } catch {
            return nil
        }
        return run
    }
}
