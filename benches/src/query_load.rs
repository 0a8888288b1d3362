//! `kalam-bench query-load`: N clients running point queries on a USER table.
//!
//! Loads `--users` × `--rows-per-user` rows (10,000 × 1,000 = 10M by default), flushes them to
//! Parquet (`--in-buffer` keeps them in the write buffer), then `--clients` tasks each run
//! `SELECT id, room, body FROM bench.m WHERE id = <key>` (GetFlightInfo + DoGet) as one of
//! `--sessions` logged-in users picked at random, checking every result. Reports QPS,
//! p50/p99/p99.9 after warm-up, server RSS each second (growth after warm-up) and
//! `session_contexts_created` (one shared SessionContext: it must stay 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kalam_client::KalamClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::{Common, RssSampler, Target, latency_json, median_rss, mib, write_json};
use crate::fixtures;
use crate::plot::{Marker, line_chart, rss_series};

/// Options of `kalam-bench query-load`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: Common,
    /// Users owning rows of the table.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Rows per user.
    #[arg(long, default_value_t = 1_000)]
    rows_per_user: usize,
    /// Concurrent clients (each its own connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Users logged in for querying (each query runs as one of them, at random).
    #[arg(long, default_value_t = 256)]
    sessions: usize,
    /// Seconds of warm-up (not measured) before the measured run.
    #[arg(long, default_value_t = 15)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Keep the rows in the write buffer instead of flushing them to Parquet first.
    #[arg(long)]
    in_buffer: bool,
}

const TABLE: &str = "bench.m";

/// Longest wait for background compaction to finish after the load.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// Waits until the `compactions` counter has not moved for 5 s (at most [`SETTLE_MAX`]), so
/// the measured run sees the table as it stays, not mid-compaction. Returns (compactions so
/// far, seconds waited).
async fn settle(target: &Target) -> Result<(u64, f64)> {
    let t = Instant::now();
    let mut last = target.stat("compactions").await?;
    let mut still_since = Instant::now();
    while t.elapsed() < SETTLE_MAX && still_since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = target.stat("compactions").await?;
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    Ok((last, t.elapsed().as_secs_f64()))
}

pub(crate) async fn run(mut args: Args) -> Result<()> {
    if args.common.quick {
        (args.users, args.rows_per_user, args.clients, args.sessions) = (20, 100, 4, 8);
        (args.warmup, args.seconds) = (2, 4);
    }
    let sessions = args.sessions.clamp(1, args.users);
    let target = Target::open(&args.common, &[]).await?;
    target.root.execute("CREATE NAMESPACE bench").await?;
    fixtures::create_messages(&target, TABLE).await?;
    let users_secs = fixtures::create_users(&target, 0, args.users).await?;
    println!("created {} users in {users_secs:.1} s", args.users);
    let load_secs =
        fixtures::load_messages(&target, TABLE, 0, args.users, args.rows_per_user).await?;
    let rows = args.users * args.rows_per_user;
    println!(
        "loaded {rows} rows in {load_secs:.1} s ({:.0} rows/s)",
        rows as f64 / load_secs
    );
    let flush_secs = if args.in_buffer {
        None
    } else {
        let t = Instant::now();
        target.root.execute(&format!("FLUSH TABLE {TABLE}")).await?;
        let s = t.elapsed().as_secs_f64();
        println!("FLUSH TABLE: {s:.1} s");
        Some(s)
    };

    let (compactions, settle_secs) = settle(&target).await?;
    let files = match &target.server {
        Some(s) => {
            let dirs = crate::common::parquet_dirs(s.data_dir())?;
            Some((dirs.iter().map(|d| d.files).sum::<usize>(), dirs.len()))
        }
        None => None,
    };
    if let Some((files, buckets)) = files {
        println!(
            "background compaction settled after {settle_secs:.0} s ({compactions} compactions): \
             {files} Parquet files in {buckets} bucket directories"
        );
    }

    // Sessions spread over the users, so queries touch every part of the table.
    let step = args.users / sessions;
    let chosen: Vec<usize> = (0..sessions).map(|i| i * step).collect();
    let tokens = Arc::new(fixtures::sessions(&target, &chosen).await?);
    let contexts_before = target.stat("session_contexts_created").await?;
    let reads_before = (
        target.stat("store_reads").await?,
        target.stat("store_bytes_read").await?,
    );

    let sampler = RssSampler::start(target.rss_probe(), Duration::from_secs(1));
    let warm_end = Duration::from_secs(args.warmup);
    let started = Instant::now();
    let deadline = started + warm_end + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let conn = KalamClient::connect(&target.url).await?;
        let as_users: Vec<(usize, KalamClient)> = tokens
            .iter()
            .map(|(u, t)| Ok((*u, conn.clone().with_bearer_token(t.clone())?)))
            .collect::<Result<_>>()?;
        let per_user = args.rows_per_user as u64;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut lat = Vec::new();
            let mut warm = 0u64;
            while Instant::now() < deadline {
                let (user, client) = &as_users[rng.random_range(0..as_users.len())];
                let key = rng.random_range(0..per_user);
                let t = Instant::now();
                fixtures::point_query(client, TABLE, *user, key).await?;
                if t.duration_since(started) >= warm_end {
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    warm += 1;
                }
            }
            Ok::<_, anyhow::Error>((lat, warm))
        }));
    }
    let mut lat = Vec::new();
    let mut warm_queries = 0;
    for t in tasks {
        let (l, w) = t.await.context("client task")??;
        lat.extend(l);
        warm_queries += w;
    }
    let samples = sampler.finish().await?;
    let contexts_after = target.stat("session_contexts_created").await?;
    let all_queries = (lat.len() as u64 + warm_queries).max(1) as f64;
    let reads_per_query = (target.stat("store_reads").await? - reads_before.0) as f64 / all_queries;
    let bytes_per_query =
        (target.stat("store_bytes_read").await? - reads_before.1) as f64 / all_queries;
    let qps = lat.len() as f64 / args.seconds as f64;
    let latency = latency_json(&mut lat);

    let warmup = args.warmup as f64;
    let end = samples.last().map_or(0.0, |s| s.0);
    let window = (args.seconds as f64 / 6.0).max(1.0);
    let rss_warm = median_rss(&samples, warmup, warmup + window);
    let rss_end = median_rss(&samples, end - window, end + 1.0);
    let rss_max = samples
        .iter()
        .filter(|s| s.0 >= warmup)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let growth = rss_end as f64 - rss_warm as f64;
    println!(
        "query-load: {} clients, {rows} rows over {} users ({}), {} queries in {} s after {} s warm-up",
        args.clients,
        args.users,
        if args.in_buffer {
            "write buffer"
        } else {
            "Parquet"
        },
        lat.len(),
        args.seconds,
        args.warmup
    );
    println!(
        "  {qps:.0} queries/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        latency["p50_ms"].as_f64().unwrap_or(f64::NAN),
        latency["p99_ms"].as_f64().unwrap_or(f64::NAN),
        latency["p999_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  server RSS after warm-up {:.1} MiB, at the end {:.1} MiB (growth {:+.1} MiB), max {:.1} MiB",
        mib(rss_warm),
        mib(rss_end),
        growth / crate::common::MIB,
        mib(rss_max)
    );
    println!("  object store per query: {reads_per_query:.1} reads, {bytes_per_query:.0} bytes");
    println!("  session_contexts_created: {contexts_before} before, {contexts_after} after");

    let figures = json!({
        "table": {"users": args.users, "rows_per_user": args.rows_per_user, "rows": rows,
                  "in": if args.in_buffer { "buffer" } else { "parquet" },
                  "create_users_seconds": users_secs, "load_seconds": load_secs,
                  "flush_seconds": flush_secs, "compactions": compactions,
                  "settle_seconds": settle_secs,
                  "parquet_files": files.map(|f| f.0), "bucket_dirs": files.map(|f| f.1)},
        "clients": args.clients, "sessions": sessions,
        "warmup_seconds": args.warmup, "seconds": args.seconds,
        "warmup_queries": warm_queries, "queries": lat.len(), "qps": qps,
        "latency": latency,
        "store_reads_per_query": reads_per_query, "store_bytes_per_query": bytes_per_query,
        "rss": {"after_warmup_mib": mib(rss_warm), "end_mib": mib(rss_end),
                "growth_mib": growth / crate::common::MIB, "max_mib": mib(rss_max),
                "samples": samples.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>()},
        "session_contexts_created": contexts_after,
    });
    if let Some(dir) = write_json(&args.common, "query-load", &figures)? {
        line_chart(
            &dir.join("query-load-rss.svg"),
            &format!(
                "query-load: server RSS, {} clients, {rows} rows, {qps:.0} queries/s",
                args.clients
            ),
            "RSS (MiB)",
            &[rss_series("server RSS", &samples)],
            &[Marker::Vertical(warmup, "end of warm-up".into())],
        )?;
    }
    Ok(())
}
