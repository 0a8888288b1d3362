//! `kalam-bench ingest`: durable single-row INSERTs/s with 1 / 4 / 16 / 64 clients, and bulk
//! ingest rows/s.
//!
//! Each client is its own connection sending `INSERT INTO … VALUES (…)` as a
//! `CommandStatementUpdate`, acknowledged after the WAL fsync, for `--seconds` per level, into
//! (a) a SHARED table — one partition, so writes serialise on its writer lock — and (b) a USER
//! table with every client a different user — one partition each, so group commit batches them.
//! Bulk ingest streams `--bulk-rows` rows through one `CommandStatementIngest`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kalam_client::KalamClient;
use serde_json::json;

use crate::common::{Common, Target, latency_json, write_json};
use crate::fixtures;

/// Options of `kalam-bench ingest`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: Common,
    /// Seconds per (table, clients) level.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Rows of the bulk ingest.
    #[arg(long, default_value_t = 1_000_000)]
    bulk_rows: usize,
}

/// Inserts from `clients` for `seconds` into `table`; returns the level's figures.
async fn level(
    clients: Vec<KalamClient>,
    table: &str,
    seconds: u64,
    level_id: usize,
) -> Result<serde_json::Value> {
    let n = clients.len();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let table = table.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                // Unique across levels and clients.
                let base = ((level_id * 1_000 + c) as i64) << 32;
                while Instant::now() < deadline {
                    let id = base + lat.len() as i64;
                    let t = Instant::now();
                    client
                        .execute(&format!(
                            "INSERT INTO {table} VALUES ({id}, 'client {c}', {})",
                            lat.len()
                        ))
                        .await?;
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let started = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.context("insert task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    let per_s = lat.len() as f64 / secs;
    let latency = latency_json(&mut lat);
    println!(
        "  {n:>3} clients: {per_s:>7.0} inserts/s, p50 {:.2} ms, p99 {:.2} ms",
        latency["p50_ms"].as_f64().unwrap_or(f64::NAN),
        latency["p99_ms"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(
        json!({"clients": n, "inserts": lat.len(), "seconds": secs, "inserts_per_s": per_s, "latency": latency}),
    )
}

pub(crate) async fn run(mut args: Args) -> Result<()> {
    if args.common.quick {
        (args.seconds, args.clients, args.bulk_rows) = (1, vec![1, 4], 20_000);
    }
    let target = Target::open(&args.common, &[]).await?;
    let root = &target.root;
    root.execute("CREATE NAMESPACE bench").await?;
    root.execute("CREATE SHARED TABLE bench.s (id BIGINT PRIMARY KEY, who TEXT, n BIGINT)")
        .await?;
    root.execute("CREATE USER TABLE bench.u (id BIGINT PRIMARY KEY, who TEXT, n BIGINT)")
        .await?;
    let most = args.clients.iter().copied().max().unwrap_or(1);
    fixtures::create_users(&target, 0, most).await?;
    let users: Vec<usize> = (0..most).collect();
    let tokens = fixtures::sessions(&target, &users).await?;

    let mut shared = Vec::new();
    println!("durable single-row INSERTs, {} s per level", args.seconds);
    println!(" SHARED table (one partition):");
    for (i, &n) in args.clients.iter().enumerate() {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(
                KalamClient::connect(&target.url)
                    .await?
                    .with_bearer_token(root.token().context("root has no token")?)?,
            );
        }
        shared.push(level(clients, "bench.s", args.seconds, i).await?);
    }
    let mut per_user = Vec::new();
    println!(" USER table (one user, so one partition, per client):");
    for (i, &n) in args.clients.iter().enumerate() {
        let mut clients = Vec::with_capacity(n);
        for (_, token) in &tokens[..n] {
            clients.push(
                KalamClient::connect(&target.url)
                    .await?
                    .with_bearer_token(token.clone())?,
            );
        }
        per_user.push(level(clients, "bench.u", args.seconds, 100 + i).await?);
    }

    let bulk_secs = fixtures::bulk_ingest(&target, "bench", "bulk", args.bulk_rows).await?;
    let bulk_per_s = args.bulk_rows as f64 / bulk_secs;
    println!(
        "bulk ingest: {} rows (id, v, 100-character body) in {bulk_secs:.2} s = {bulk_per_s:.0} rows/s",
        args.bulk_rows
    );
    let figures = json!({
        "seconds_per_level": args.seconds,
        "single_row_inserts": {"shared_table": shared, "user_table": per_user},
        "bulk_ingest": {"rows": args.bulk_rows, "seconds": bulk_secs, "rows_per_s": bulk_per_s},
    });
    write_json(&args.common, "ingest", &figures)?;
    Ok(())
}
