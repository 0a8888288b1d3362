//! `kalam-bench scan`: a ~1 GB table streamed through Flight vs read in-process by DataFusion.
//!
//! Bulk-ingests `--rows` rows (id BIGINT, v BIGINT, body TEXT of 100 random hex characters,
//! ~120 bytes of Arrow data per row) into a SHARED table, flushes it to Parquet, then runs
//! `SELECT id, v, body FROM bench.big` (a) through the server to this client over Flight and
//! (b) in this process with DataFusion over the same Parquet files. Reports MiB/s of Arrow data
//! both ways, their ratio, and the server's peak RSS while it streams.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::common::{Common, RssSampler, Target, data_bytes, mib, parquet_dirs, write_json};
use crate::fixtures;

/// Options of `kalam-bench scan`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: Common,
    /// Rows in the table (9,000,000 ≈ 1 GiB of Arrow data).
    #[arg(long, default_value_t = 9_000_000)]
    rows: usize,
    /// Times each side is run (the figures are the median run).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The server's data directory (with `--url`; needed for the in-process side).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const QUERY: &str = "SELECT id, v, body FROM bench.big";

/// One run of a stream of batches: (rows, Arrow data bytes, seconds).
async fn drain<S>(batches: S) -> Result<(u64, u64, f64)>
where
    S: futures::Stream<Item = Result<RecordBatch>>,
{
    let t = Instant::now();
    let mut batches = std::pin::pin!(batches);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(b) = batches.next().await {
        let b = b?;
        rows += b.num_rows() as u64;
        bytes += data_bytes(&b);
    }
    Ok((rows, bytes, t.elapsed().as_secs_f64()))
}

/// The same query over the same files, in this process.
async fn in_process(dirs: &[PathBuf]) -> Result<(u64, u64, f64)> {
    let ctx = SessionContext::new();
    let urls = dirs
        .iter()
        .map(|d| ListingTableUrl::parse(format!("{}/", d.display())))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    // Plain Utf8, as the server sends it (DESIGN invariant 7), so both sides move the same data.
    let format = ParquetFormat::default().with_force_view_types(false);
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    ctx.register_table("big", Arc::new(ListingTable::try_new(config)?))?;
    let df = ctx.sql("SELECT id, v, body FROM big").await?;
    let stream = df.execute_stream().await?;
    drain(stream.map_err(anyhow::Error::from)).await
}

fn median(mut runs: Vec<(u64, u64, f64)>) -> (u64, u64, f64) {
    runs.sort_by(|a, b| a.2.total_cmp(&b.2));
    runs[runs.len() / 2]
}

pub(crate) async fn run(mut args: Args) -> Result<()> {
    if args.common.quick {
        (args.rows, args.repeat) = (100_000, 1);
    }
    let repeat = args.repeat.max(1);
    let target = Target::open(&args.common, &[]).await?;
    target.root.execute("CREATE NAMESPACE bench").await?;
    let rows = args.rows;
    let ingest_secs = fixtures::bulk_ingest(&target, "bench", "big", rows).await?;
    let t = Instant::now();
    target.root.execute("FLUSH TABLE bench.big").await?;
    let flush_secs = t.elapsed().as_secs_f64();
    println!(
        "table: {rows} rows ingested in {ingest_secs:.1} s, flushed to Parquet in {flush_secs:.1} s"
    );

    // Through Flight, with the server's RSS sampled every 20 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = target.rss_probe();
    let rss_before = probe.read().await;
    let sampler = RssSampler::start(probe, Duration::from_millis(20));
    let mut flight_runs = Vec::new();
    for _ in 0..repeat {
        let stream = target.root.query(QUERY).await?;
        flight_runs.push(drain(stream.map_err(anyhow::Error::from)).await?);
    }
    let samples = sampler.finish().await?;
    let rss_peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let (f_rows, f_bytes, f_secs) = median(flight_runs);
    if f_rows as usize != rows {
        bail!("Flight returned {f_rows} rows, expected {rows}");
    }

    // The server reading the table without shipping it: where the Flight time goes.
    let mut server_only = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        target
            .root
            .query_collect("SELECT count(*), sum(v), max(length(body)) FROM bench.big")
            .await?;
        server_only.push(t.elapsed().as_secs_f64());
    }
    server_only.sort_by(f64::total_cmp);
    let server_secs = server_only[server_only.len() / 2];

    // In-process over the server's files.
    let data_dir = match (&target.server, &args.data_dir) {
        (_, Some(d)) => d.clone(),
        (Some(s), None) => s.data_dir().to_path_buf(),
        (None, None) => bail!("scan with --url needs --data-dir (the server's data directory)"),
    };
    let found = parquet_dirs(&data_dir)?;
    let files: usize = found.iter().map(|d| d.files).sum();
    let parquet_bytes: u64 = found.iter().map(|d| d.bytes).sum();
    let dirs: Vec<PathBuf> = found.into_iter().map(|d| d.path).collect();
    let mut local_runs = Vec::new();
    for _ in 0..repeat {
        local_runs.push(
            in_process(&dirs)
                .await
                .context("in-process DataFusion scan")?,
        );
    }
    let (l_rows, l_bytes, l_secs) = median(local_runs);
    if l_rows as usize != rows {
        bail!("in-process scan returned {l_rows} rows, expected {rows}");
    }

    let flight_mib_s = mib(f_bytes) / f_secs;
    let local_mib_s = mib(l_bytes) / l_secs;
    let ratio = flight_mib_s / local_mib_s;
    println!(
        "scan: {rows} rows, {:.0} MiB of Arrow data ({files} Parquet files, {:.0} MiB), median of {repeat}",
        mib(f_bytes),
        mib(parquet_bytes)
    );
    println!(
        "  through Flight to this client: {f_secs:.2} s = {flight_mib_s:.0} MiB/s ({:.1} M rows/s)",
        f_rows as f64 / f_secs / 1e6
    );
    println!(
        "  in-process DataFusion:         {l_secs:.2} s = {local_mib_s:.0} MiB/s ({:.1} M rows/s)",
        l_rows as f64 / l_secs / 1e6
    );
    println!("  Flight / in-process: {ratio:.2}");
    println!(
        "  the server reading every row without sending it (count, sum, max length): {server_secs:.2} s"
    );
    println!(
        "  server RSS {:.1} MiB before, peak {:.1} MiB while streaming",
        mib(rss_before),
        mib(rss_peak)
    );
    let figures = json!({
        "rows": rows, "ingest_seconds": ingest_secs, "flush_seconds": flush_secs,
        "parquet_files": files, "parquet_bytes": parquet_bytes, "repeat": repeat,
        "flight": {"rows": f_rows, "arrow_bytes": f_bytes, "seconds": f_secs, "mib_per_s": flight_mib_s},
        "in_process": {"rows": l_rows, "arrow_bytes": l_bytes, "seconds": l_secs, "mib_per_s": local_mib_s},
        "ratio": ratio, "server_read_only_seconds": server_secs,
        "server_rss": {"before_mib": mib(rss_before), "peak_mib": mib(rss_peak)},
    });
    write_json(&args.common, "scan", &figures)?;
    Ok(())
}
