//! `kalam-bench`: load tools that print (and write as JSON and SVG) KalamFlight's figures.
//!
//! Each subcommand starts its own server on 127.0.0.1:0 with a temporary data dir (binary from
//! `KALAM_SERVER_BIN`, else the `kalam-server` next to this binary), or measures `--url`.
//! Every subcommand finishes within 5 minutes on 2 cores at its default size, and `--quick`
//! runs it in seconds (the CI smoke test).
//!
//! ```text
//! cargo build --release -p kalam-server -p kalam-bench
//! target/release/kalam-bench query-load|scan|ingest|live|soak [--quick] [--out DIR]
//! ```

mod common;
mod fixtures;
mod ingest;
mod live;
mod plot;
mod query_load;
mod scan;
mod server;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kalam-bench", about = "KalamFlight load tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Point queries on a USER table (10M rows over 10,000 users) from N clients: QPS,
    /// p50/p99/p99.9, server RSS growth after warm-up, SessionContexts created.
    QueryLoad(query_load::Args),
    /// A ~1 GB table streamed through Flight vs read in-process by DataFusion: MiB/s both
    /// ways, their ratio, server peak RSS.
    Scan(scan::Args),
    /// Durable single-row INSERTs/s with 1/4/16/64 clients; bulk ingest rows/s.
    Ingest(ingest::Args),
    /// Live queries: commit→client latency with 1 / 1,000 / 10,000 subscribers, RSS per idle
    /// subscription, fan-out rows/s.
    Live(live::Args),
    /// Mixed workload (queries, writes, subscribe churn, large scans) with RSS over time; fails
    /// if RSS grows after warm-up.
    Soak(soak::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::QueryLoad(args) => query_load::run(args).await,
            Command::Scan(args) => scan::run(args).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Live(args) => live::run(args).await,
            Command::Soak(args) => soak::run(args).await,
        }
    })
}
