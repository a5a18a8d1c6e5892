/// The profiles built into the binary, so `stockade run` works with no files
/// installed. Each equals the file of the same name in `Profiles/` (a test checks).
enum BuiltinProfiles {
    static let documents: [String: String] = [
        "default": #"""
{
  "name": "default",
  "description": "No network, bounded everything: 256 MiB, 1 CPU, 64 pids, 60 s.",
  "user": { "uid": 1000, "gid": 1000 },
  "limits": {
    "memory": "256m",
    "cpus": 1,
    "pids": 64,
    "timeout": 60,
    "stdoutBytes": "1m",
    "stderrBytes": "1m",
    "tmpSize": "64m",
    "workspaceSize": "256m",
    "resultSize": "64m",
    "resultInodes": 4096,
    "rlimits": { "nofile": 256, "fsize": "256m", "core": 0, "stack": "8m" }
  },
  "network": { "mode": "none", "publish": [] },
  "volumes": [],
  "tmpfs": [],
  "environment": {
    "pass": [],
    "set": { "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/workspace", "LANG": "C.UTF-8" }
  },
  "secrets": [],
  "seccomp": { "base": "stockade", "allow": [], "deny": [], "onViolation": "errno" },
  "review": { "autoAcceptDiffs": false, "allowSelfApproval": false }
}
"""#,
        "strict": #"""
{
  "name": "strict",
  "extends": "default",
  "description": "Tighter limits; any seccomp violation kills the worker.",
  "limits": {
    "memory": "128m",
    "cpus": 0.5,
    "pids": 32,
    "timeout": 30,
    "tmpSize": "16m",
    "workspaceSize": "64m",
    "resultSize": "16m",
    "resultInodes": 1024,
    "rlimits": { "nofile": 64, "fsize": "64m", "core": 0 }
  },
  "seccomp": { "onViolation": "kill" }
}
"""#,
    ]
}
