//! `kalam-bench soak`: a sustained mixed workload with the server's RSS sampled every second.
//!
//! Runs at once, for `--duration`:
//! - point queries on a USER table, each as one of `--sessions` users at random (checked);
//! - single-row INSERTs and UPDATEs into that table, and INSERTs into a PUBLIC shared feed;
//! - live-query churn: subscribe (as a random user, to the user table or the feed), read
//!   changes for a moment, unsubscribe — plus `--long-subscribers` that stay open throughout;
//! - large scans: the whole `--scan-rows` table streamed and discarded, back to back.
//!
//! After `--warmup`, the RSS baseline is the median over the first window and the end figure
//! the median over the last (a window is a tenth of the measured time, at least 10 s). The run
//! fails (exit status 1) if any operation fails or RSS grew by more than `--max-growth-mib`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kalam_client::{EventKind, KalamClient, SubscribeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::{Common, MIB, Target, median_rss, mib, stat, write_json};
use crate::fixtures;
use crate::plot::{Marker, Series, line_chart};

/// Options of `kalam-bench soak`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: Common,
    /// How long the workload runs, warm-up included: `90s`, `15m`, `1h` (plain number: seconds).
    #[arg(long, default_value = "4m", value_parser = parse_duration)]
    duration: Duration,
    /// The first part of the run, excluded from the verdict.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    warmup: Duration,
    /// Fail if RSS after warm-up grows by more than this many MiB.
    #[arg(long)]
    max_growth_mib: Option<f64>,
    /// Users owning rows of the user table (1,000 rows each).
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Users logged in and used by the workers.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Point-query clients.
    #[arg(long, default_value_t = 8)]
    query_clients: usize,
    /// Writer clients (INSERT, and every 4th statement an UPDATE).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Tasks opening and closing subscriptions.
    #[arg(long, default_value_t = 4)]
    churners: usize,
    /// Subscriptions open for the whole run.
    #[arg(long, default_value_t = 100)]
    long_subscribers: usize,
    /// Rows of the table the scanner streams whole (~120 bytes each).
    #[arg(long, default_value_t = 1_000_000)]
    scan_rows: usize,
}

/// Default `--max-growth-mib`: a release server on the full run, and a debug server on the
/// `--quick` smoke run (seconds long, so still warming up).
const MAX_GROWTH_MIB: f64 = 64.0;
const MAX_GROWTH_MIB_QUICK: f64 = 512.0;
const ROWS_PER_USER: usize = 1_000;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Operation counters shared by the workers.
#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    inserts: AtomicU64,
    updates: AtomicU64,
    feed_inserts: AtomicU64,
    subscriptions: AtomicU64,
    live_rows: AtomicU64,
    scans: AtomicU64,
    scan_bytes: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "queries": g(&self.queries), "inserts": g(&self.inserts), "updates": g(&self.updates),
            "feed_inserts": g(&self.feed_inserts), "subscriptions_opened": g(&self.subscriptions),
            "live_rows_received": g(&self.live_rows), "scans": g(&self.scans),
            "scan_bytes": g(&self.scan_bytes),
        })
    }
}

/// Everything a worker needs.
#[derive(Clone)]
struct Ctx {
    url: String,
    root: KalamClient,
    tokens: Arc<Vec<(usize, String)>>,
    counters: Arc<Counters>,
    deadline: Instant,
    scan_rows: u64,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// A client on connection `conn` acting as the session user at `i`.
    fn as_user(&self, conn: &KalamClient, i: usize) -> Result<(usize, KalamClient)> {
        let (u, token) = &self.tokens[i % self.tokens.len()];
        Ok((*u, conn.clone().with_bearer_token(token.clone())?))
    }
}

async fn querier(ctx: Ctx, seed: u64) -> Result<()> {
    let conn = KalamClient::connect(&ctx.url).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    while ctx.running() {
        let (user, client) = ctx.as_user(&conn, rng.random_range(0..ctx.tokens.len()))?;
        let key = rng.random_range(0..ROWS_PER_USER as u64);
        fixtures::point_query(&client, "soak.m", user, key).await?;
        Counters::add(&ctx.counters.queries, 1);
    }
    Ok(())
}

async fn writer(ctx: Ctx, w: usize) -> Result<()> {
    let conn = KalamClient::connect(&ctx.url).await?;
    let (user, client) = ctx.as_user(&conn, w)?;
    let mut rng = StdRng::seed_from_u64(1_000 + w as u64);
    // New keys above the loaded ones, distinct per writer (two writers may share a user).
    let mut next = (ROWS_PER_USER + w * 1_000_000_000) as u64;
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        if n.is_multiple_of(4) {
            let key = rng.random_range(0..ROWS_PER_USER as u64);
            client
                .execute(&format!(
                    "UPDATE soak.m SET body = 'message {key} of user u{user}' WHERE id = {key}"
                ))
                .await?;
            Counters::add(&ctx.counters.updates, 1);
        } else {
            client
                .execute(&format!(
                    "INSERT INTO soak.m VALUES ({next}, 'room-{}', 'written by writer {w}')",
                    next % 10
                ))
                .await?;
            next += 1;
            Counters::add(&ctx.counters.inserts, 1);
        }
    }
    Ok(())
}

/// Inserts into the shared feed every 20 ms (what the long and churning subscribers receive).
async fn feeder(ctx: Ctx) -> Result<()> {
    let mut id = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while ctx.running() {
        tick.tick().await;
        ctx.root
            .execute(&format!(
                "INSERT INTO soak.feed VALUES ({id}, 'kind-{}', 'feed row {id}')",
                id % 4
            ))
            .await?;
        id += 1;
        Counters::add(&ctx.counters.feed_inserts, 1);
    }
    Ok(())
}

/// Reads a subscription until `until` (or the end of the run); counts the rows.
async fn consume(ctx: &Ctx, sub: &mut kalam_client::Subscription, until: Instant) -> Result<()> {
    let until = until.min(ctx.deadline);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match tokio::time::timeout(left, sub.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => bail!("subscription ended by the server"),
            Ok(Some(e)) => {
                let e = e?;
                if let Some(b) = e.batch {
                    Counters::add(&ctx.counters.live_rows, b.num_rows() as u64);
                }
            }
        }
    }
}

const FEED_SQL: &str = "SELECT id, kind, body FROM soak.feed WHERE kind <> 'kind-3'";
const USER_SQL: &str = "SELECT id, room, body FROM soak.m WHERE room = 'room-3'";

async fn subscribe(client: &KalamClient, sql: &str) -> Result<kalam_client::Subscription> {
    let mut sub = client.subscribe(sql, SubscribeOptions::default()).await?;
    while let Some(e) = sub.next().await {
        if e?.kind == EventKind::Current {
            return Ok(sub);
        }
    }
    bail!("subscription to {sql:?} ended before CURRENT")
}

async fn churner(ctx: Ctx, c: usize) -> Result<()> {
    let conn = KalamClient::connect(&ctx.url).await?;
    let mut rng = StdRng::seed_from_u64(2_000 + c as u64);
    while ctx.running() {
        let (_, client) = ctx.as_user(&conn, rng.random_range(0..ctx.tokens.len()))?;
        let sql = if rng.random_bool(0.5) {
            FEED_SQL
        } else {
            USER_SQL
        };
        let mut sub = subscribe(&client, sql).await?;
        Counters::add(&ctx.counters.subscriptions, 1);
        let hold = Duration::from_millis(rng.random_range(200..2_000));
        consume(&ctx, &mut sub, Instant::now() + hold).await?;
    }
    Ok(())
}

async fn long_subscribers(ctx: Ctx, n: usize) -> Result<()> {
    let conn = KalamClient::connect(&ctx.url).await?;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (_, client) = ctx.as_user(&conn, i)?;
        let mut sub = subscribe(&client, FEED_SQL).await?;
        Counters::add(&ctx.counters.subscriptions, 1);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let end = ctx.deadline;
            consume(&ctx, &mut sub, end).await
        }));
    }
    for t in tasks {
        t.await.context("long subscriber")??;
    }
    Ok(())
}

async fn scanner(ctx: Ctx) -> Result<()> {
    let conn = KalamClient::connect(&ctx.url)
        .await?
        .with_bearer_token(ctx.root.token().context("root has no token")?.to_string())?;
    while ctx.running() {
        let mut stream = conn.query("SELECT id, v, body FROM soak.big").await?;
        let mut rows = 0u64;
        while let Some(b) = stream.next().await {
            let b = b?;
            rows += b.num_rows() as u64;
            Counters::add(&ctx.counters.scan_bytes, crate::common::data_bytes(&b));
        }
        if rows != ctx.scan_rows {
            bail!("scan returned {rows} rows, expected {}", ctx.scan_rows);
        }
        Counters::add(&ctx.counters.scans, 1);
    }
    Ok(())
}

/// Least-squares slope of (seconds, bytes) in MiB per hour.
fn slope_mib_per_hour(samples: &[(f64, u64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for s in samples {
        sxy += (s.0 - mx) * (s.1 as f64 - my);
        sxx += (s.0 - mx) * (s.0 - mx);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 3600.0 / MIB
    }
}

pub(crate) async fn run(mut args: Args) -> Result<()> {
    if args.common.quick {
        args.duration = Duration::from_secs(15);
        args.warmup = Duration::from_secs(5);
        (
            args.users,
            args.sessions,
            args.long_subscribers,
            args.scan_rows,
        ) = (20, 8, 10, 20_000);
        (args.query_clients, args.writers, args.churners) = (2, 2, 2);
    }
    let max_growth = args.max_growth_mib.unwrap_or(if args.common.quick {
        MAX_GROWTH_MIB_QUICK
    } else {
        MAX_GROWTH_MIB
    });
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }
    let target = Target::open(&args.common, &[]).await?;
    let root = &target.root;
    root.execute("CREATE NAMESPACE soak").await?;
    fixtures::create_messages(&target, "soak.m").await?;
    root.execute(
        "CREATE SHARED TABLE soak.feed (id BIGINT PRIMARY KEY, kind TEXT, body TEXT) \
         WITH (ACCESS_LEVEL = 'PUBLIC')",
    )
    .await?;
    fixtures::create_users(&target, 0, args.users).await?;
    fixtures::load_messages(&target, "soak.m", 0, args.users, ROWS_PER_USER).await?;
    fixtures::bulk_ingest(&target, "soak", "big", args.scan_rows).await?;
    root.execute("FLUSH TABLE soak.big").await?;
    let sessions = args.sessions.clamp(1, args.users);
    let step = args.users / sessions;
    let chosen: Vec<usize> = (0..sessions).map(|i| i * step).collect();
    let tokens = Arc::new(fixtures::sessions(&target, &chosen).await?);
    println!(
        "soak: {} users x {ROWS_PER_USER} rows, {} scan rows; {} query clients, {} writers, \
         {} churners, {} long subscribers, 1 feeder, 1 scanner; {} s (warm-up {} s)",
        args.users,
        args.scan_rows,
        args.query_clients,
        args.writers,
        args.churners,
        args.long_subscribers,
        args.duration.as_secs(),
        args.warmup.as_secs()
    );

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let ctx = Ctx {
        url: target.url.clone(),
        root: root.clone(),
        tokens,
        counters: Arc::clone(&counters),
        deadline: started + args.duration,
        scan_rows: args.scan_rows as u64,
    };
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.query_clients {
        workers.spawn(querier(ctx.clone(), i as u64));
    }
    for w in 0..args.writers {
        workers.spawn(writer(ctx.clone(), w));
    }
    for c in 0..args.churners {
        workers.spawn(churner(ctx.clone(), c));
    }
    workers.spawn(long_subscribers(ctx.clone(), args.long_subscribers));
    workers.spawn(feeder(ctx.clone()));
    workers.spawn(scanner(ctx.clone()));

    // Sample RSS and the write buffer each second until every worker is done.
    let probe = target.rss_probe();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failure = None;
    let mut last_report = 0;
    while !workers.is_empty() {
        tokio::select! {
            _ = tick.tick() => {
                let t = started.elapsed().as_secs_f64();
                let buffer = stat(root, "write_buffer_bytes").await.unwrap_or(0);
                samples.push((t, probe.read().await, buffer));
                if t as u64 / 30 > last_report {
                    last_report = t as u64 / 30;
                    let s = samples.last().map_or((0.0, 0, 0), |s| *s);
                    println!("  {:>5.0} s: RSS {:.1} MiB, write buffer {:.1} MiB, {}",
                        t, mib(s.1), mib(s.2), counters.json());
                }
            }
            done = workers.join_next() => {
                if let Some(Err(e)) = done.map(|r| r.context("worker panicked").and_then(|r| r)) {
                    failure.get_or_insert(e);
                    workers.abort_all();
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e.context("soak workload failed"));
    }

    let warmup = args.warmup.as_secs_f64();
    let end = samples.last().map_or(0.0, |s| s.0);
    let window = ((end - warmup) / 10.0).max(10.0);
    let rss: Vec<(f64, u64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    let base = median_rss(&rss, warmup, warmup + window);
    let last = median_rss(&rss, end - window, end + 1.0);
    let after: Vec<(f64, u64, u64)> = samples.iter().copied().filter(|s| s.0 >= warmup).collect();
    let (lo, hi) = after
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    let growth = (last as f64 - base as f64) / MIB;
    let slope = slope_mib_per_hour(&after);
    let pass = growth <= max_growth;
    let stats = json!({
        "session_contexts_created": stat(root, "session_contexts_created").await?,
        "flushes": stat(root, "flushes").await?,
        "compactions": stat(root, "compactions").await?,
        "live_queries_active": stat(root, "live_queries_active").await?,
        "notifications_sent": stat(root, "notifications_sent").await?,
    });
    let secs = end.max(1.0);
    let ops = counters.json();
    println!("soak: {:.0} s, {ops}", secs);
    println!("  server stats at the end: {stats}");
    println!(
        "  RSS after warm-up: median {:.1} MiB over the first {window:.0} s, {:.1} MiB over the last {window:.0} s \
         (growth {growth:+.1} MiB, limit {max_growth:.0} MiB); min {:.1}, max {:.1} MiB; trend {slope:+.1} MiB/hour",
        mib(base),
        mib(last),
        mib(lo.min(hi)),
        mib(hi)
    );
    println!(
        "  verdict: {}",
        if pass {
            "PASS (flat)"
        } else {
            "FAIL (RSS grew)"
        }
    );
    let figures = json!({
        "duration_seconds": secs, "warmup_seconds": warmup, "window_seconds": window,
        "operations": ops, "server_stats": stats,
        "rss": {"baseline_mib": mib(base), "end_mib": mib(last), "growth_mib": growth,
                "min_mib": mib(lo.min(hi)), "max_mib": mib(hi), "trend_mib_per_hour": slope,
                "samples": samples.iter().map(|s| json!([s.0, s.1, s.2])).collect::<Vec<_>>()},
        "max_growth_mib": max_growth, "pass": pass,
    });
    if let Some(dir) = write_json(&args.common, "soak", &figures)? {
        line_chart(
            &dir.join("soak-rss.svg"),
            &format!(
                "soak: server RSS over {:.0} min of mixed load ({})",
                secs / 60.0,
                if pass { "flat: PASS" } else { "grew: FAIL" }
            ),
            "MiB",
            &[
                Series {
                    label: "server RSS".into(),
                    points: samples.iter().map(|s| (s.0, s.1 as f64 / MIB)).collect(),
                },
                Series {
                    label: "write buffer".into(),
                    points: samples.iter().map(|s| (s.0, s.2 as f64 / MIB)).collect(),
                },
            ],
            &[
                Marker::Vertical(warmup, "end of warm-up".into()),
                Marker::Horizontal(
                    mib(base) + max_growth,
                    format!("baseline + {max_growth:.0} MiB (fail above)"),
                ),
            ],
        )?;
    }
    if !pass {
        bail!("RSS grew by {growth:.1} MiB after warm-up (limit {max_growth:.0} MiB)");
    }
    Ok(())
}
