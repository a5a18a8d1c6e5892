import StockadeCLI

// The one-shot CLI: without the PostgreSQL client, which a command naming a PostgreSQL store finds
// in stockade-server (CLIMain).
await CLIMain.main(Array(CommandLine.arguments.dropFirst()))
