//! `kalam-bench live`: live-query figures (issue 4).
//!
//! - commit→client latency (p50/p99/p99.9) with 1, 1,000 and 10,000 subscribers of which at
//!   most 1,000 are active (the rest have a filter that never matches);
//! - server RSS and bytes per idle subscription (`--idle`, over `--connections` connections);
//! - fan-out: rows/s delivered when every commit of one shared-table row goes to all subscribers.
//!
//! Latency is measured from the writer's clock just before the INSERT to the subscriber's
//! clock on receipt (same machine).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, Int64Array};
use futures::{StreamExt, TryStreamExt, stream};
use kalam_client::{EventKind, KalamClient, SubscribeOptions, Subscription};
use serde_json::json;

use crate::common::{Common, Target, mib, percentile_ms, write_json};
use crate::fixtures::PW;

/// Options of `kalam-bench live`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// `--quick`: 100 subscribers, 1,000 idle, 20 rows.
    #[command(flatten)]
    common: Common,
    /// Idle subscriptions for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Client connections (and users) the subscriptions are spread over.
    #[arg(long, default_value_t = 100)]
    connections: usize,
}

/// Subscribe calls in flight at once.
const PARALLEL: usize = 64;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

async fn open(
    clients: &[KalamClient],
    n: usize,
    sql: &'static str,
    offset: usize,
) -> Result<Vec<Subscription>> {
    let opts = SubscribeOptions {
        heartbeat_ms: 60_000,
        ..Default::default()
    };
    stream::iter(0..n)
        .map(|i| {
            let c = clients[(i + offset) % clients.len()].clone();
            let opts = opts.clone();
            async move {
                let mut s = c.subscribe(sql, opts).await?;
                // Wait for CURRENT: the subscription is live.
                while let Some(e) = s.next().await {
                    if e?.kind == EventKind::Current {
                        return Ok::<_, anyhow::Error>(s);
                    }
                }
                bail!("subscription ended before CURRENT")
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await
}

/// Consumes `subs` until each saw `rows` rows; returns every row's latency (ns).
async fn collect(subs: Vec<Subscription>, rows: usize, t_col: usize) -> Result<Vec<u64>> {
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(rows);
                while lat.len() < rows {
                    let e = tokio::time::timeout(Duration::from_secs(120), s.next())
                        .await
                        .context("timed out waiting for changes")?
                        .context("stream ended")??;
                    let now = now_ns();
                    if e.kind != EventKind::Changes {
                        continue;
                    }
                    let Some(b) = e.batch else { continue };
                    let t = b
                        .column(t_col)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .context("t_ns column")?;
                    for i in 0..t.len() {
                        lat.push(now.saturating_sub(t.value(i)).max(0) as u64);
                    }
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn latency(
    root: &KalamClient,
    clients: &[KalamClient],
    active: usize,
    idle: usize,
    rows: usize,
    first_id: &mut i64,
) -> Result<serde_json::Value> {
    let idle_subs = open(
        clients,
        idle,
        "SELECT id FROM b.feed WHERE kind = 'never'",
        0,
    )
    .await?;
    let subs = open(
        clients,
        active,
        "SELECT id, t_ns FROM b.feed WHERE kind = 'tick'",
        idle,
    )
    .await?;
    let consumer = tokio::spawn(collect(subs, rows, 1));
    for _ in 0..rows {
        root.execute(&format!(
            "INSERT INTO b.feed VALUES ({}, 'tick', {})",
            *first_id,
            now_ns()
        ))
        .await?;
        *first_id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = consumer.await??;
    drop(idle_subs);
    lat.sort_unstable();
    let r = json!({
        "subscribers": active + idle, "active": active, "rows": rows, "samples": lat.len(),
        "p50_ms": percentile_ms(&lat, 0.5), "p99_ms": percentile_ms(&lat, 0.99),
        "p999_ms": percentile_ms(&lat, 0.999),
    });
    println!(
        "  {:>6} subscribers ({:>5} active): commit->client p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms ({} samples)",
        active + idle,
        active,
        percentile_ms(&lat, 0.5),
        percentile_ms(&lat, 0.99),
        percentile_ms(&lat, 0.999),
        lat.len()
    );
    Ok(r)
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let (scenarios, idle_n, rows, fan_subs, fan_rows) = if args.common.quick {
        (vec![(1, 0), (100, 0), (100, 900)], 1_000, 20, 100, 20)
    } else {
        (
            vec![(1, 0), (1_000, 0), (1_000, 9_000)],
            args.idle,
            200,
            10_000,
            50,
        )
    };
    let target = Target::open(&args.common, &[]).await?;
    let root = &target.root;
    root.execute("CREATE NAMESPACE b").await?;
    root.execute(
        "CREATE SHARED TABLE b.feed (id BIGINT PRIMARY KEY, kind TEXT, t_ns BIGINT) \
         WITH (ACCESS_LEVEL = 'PUBLIC')",
    )
    .await?;
    let conns = args.connections.max(1);
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        root.execute(&format!("CREATE USER bu{i} WITH PASSWORD '{PW}' ROLE user"))
            .await?;
        clients.push(target.login(&format!("bu{i}"), PW).await?);
    }
    let mut next_id = 1i64;
    println!("live queries over {conns} connections");
    // Idle subscriptions first, on a heap no earlier scenario has grown: memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = target.rss_probe();
    let before = probe.read().await;
    let t = Instant::now();
    let idle = open(
        &clients,
        idle_n,
        "SELECT id FROM b.feed WHERE kind = 'never'",
        0,
    )
    .await?;
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probe.read().await;
    let per_sub = after.saturating_sub(before) as f64 / idle_n as f64;
    println!(
        "  {idle_n} idle subscriptions: opened in {open_secs:.1} s; server RSS {:.1} -> {:.1} MiB ({per_sub:.0} bytes per subscription)",
        mib(before),
        mib(after)
    );
    drop(idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let released = probe.read().await;

    let mut latencies = Vec::new();
    for (active, idle) in scenarios {
        latencies.push(latency(root, &clients, active, idle, rows, &mut next_id).await?);
    }

    // Fan-out: every row to every subscriber.
    let subs = open(
        &clients,
        fan_subs,
        "SELECT id, t_ns FROM b.feed WHERE kind = 'fan'",
        0,
    )
    .await?;
    let consumer = tokio::spawn(collect(subs, fan_rows, 1));
    let t = Instant::now();
    for _ in 0..fan_rows {
        root.execute(&format!(
            "INSERT INTO b.feed VALUES ({next_id}, 'fan', {})",
            now_ns()
        ))
        .await?;
        next_id += 1;
    }
    let lat = consumer.await??;
    let secs = t.elapsed().as_secs_f64();
    let rows_per_s = lat.len() as f64 / secs;
    println!(
        "  fan-out: {fan_rows} rows to {fan_subs} subscribers = {} deliveries in {secs:.2} s: {rows_per_s:.0} rows/s",
        lat.len()
    );
    let figures = json!({
        "connections": conns,
        "latency": latencies,
        "idle": {"subscriptions": idle_n, "open_seconds": open_secs, "rss_before_mib": mib(before),
                  "rss_after_mib": mib(after), "bytes_per_subscription": per_sub,
                  "rss_after_close_mib": mib(released)},
        "fanout": {"subscribers": fan_subs, "rows": fan_rows, "deliveries": lat.len(),
                    "seconds": secs, "rows_per_s": rows_per_s},
    });
    write_json(&args.common, "live", &figures)?;
    Ok(())
}
