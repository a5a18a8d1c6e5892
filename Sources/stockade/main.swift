import StockadeCLI

// The one-shot CLI: without the PostgreSQL client, which a command naming a PostgreSQL store finds
// in stockade-server (CLIMain). No top-level await: `run --host` runs on this thread without the
// concurrency runtime's threads (CLIMain.start).
CLIMain.start(Array(CommandLine.arguments.dropFirst()))
