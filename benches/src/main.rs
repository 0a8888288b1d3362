//! `kalam-bench`: load tools that print (and write as JSON) KalamFlight's figures.
//!
//! Each subcommand starts its own release server on 127.0.0.1:0 with a temporary data dir
//! (binary from `KALAM_SERVER_BIN`, else `<target>/release/kalam-server`), or targets `--url`.
//!
//! ```text
//! cargo build --release -p kalam-server -p kalam-bench
//! target/release/kalam-bench live [--quick] [--out DIR]
//! ```

mod live;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kalam-bench", about = "KalamFlight load tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Live queries: commit→client latency with 1 / 1,000 / 10,000 subscribers, RSS per idle
    /// subscription, fan-out rows/s.
    Live(live::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Live(args) => rt.block_on(live::run(args)),
    }
}
