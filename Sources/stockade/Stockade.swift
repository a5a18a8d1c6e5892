import ArgumentParser

@main
struct Stockade: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade",
        abstract: "Run untrusted workers in Linux namespaces with seccomp, cgroup limits and an audit trail.",
        version: "0.1.0",
        subcommands: []
    )
}
