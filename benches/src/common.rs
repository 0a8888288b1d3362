//! What every subcommand shares: the server it measures, RSS sampling, percentiles, JSON output.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use kalam_client::KalamClient;
use tokio::task::JoinHandle;

use crate::server::{ROOT_PW, Server};

/// Options every subcommand takes.
#[derive(clap::Args, Clone)]
pub(crate) struct Common {
    /// Small sizes, seconds not minutes (the CI smoke test runs every subcommand this way).
    #[arg(long)]
    pub quick: bool,
    /// Measure a running server instead of starting one (`grpc://host:port`). RSS then comes
    /// from its `system.stats` (`process_rss_bytes`).
    #[arg(long)]
    pub url: Option<String>,
    /// Root password of the `--url` server.
    #[arg(long, env = "KALAM_ROOT_PASSWORD", hide_env_values = true)]
    pub root_password: Option<String>,
    /// Extra flag for the started server, e.g. `--server-arg=--flush-age-secs=1` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Write the figures (JSON, and SVG plots where there are any) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The server under measurement and a root connection to it.
pub(crate) struct Target {
    /// Set when this process started the server (and owns its data dir).
    pub server: Option<Server>,
    pub url: String,
    pub root: KalamClient,
}

impl Target {
    /// Starts a server with `server_args`, or connects to `--url`.
    pub(crate) async fn open(common: &Common, server_args: &[&str]) -> Result<Self> {
        let (server, url, password) = match &common.url {
            Some(url) => (
                None,
                url.clone(),
                common
                    .root_password
                    .clone()
                    .context("--url needs --root-password (or KALAM_ROOT_PASSWORD)")?,
            ),
            None => {
                let args: Vec<&str> = server_args
                    .iter()
                    .copied()
                    .chain(common.server_args.iter().map(String::as_str))
                    .collect();
                let server = Server::start(&args)?;
                let url = server.url.clone();
                (Some(server), url, ROOT_PW.to_string())
            }
        };
        let mut root = KalamClient::connect(&url).await?;
        root.login("root", &password).await?;
        Ok(Self { server, url, root })
    }

    /// A new connection logged in as `user`.
    pub(crate) async fn login(&self, user: &str, password: &str) -> Result<KalamClient> {
        let mut c = KalamClient::connect(&self.url).await?;
        c.login(user, password).await?;
        Ok(c)
    }

    /// A reader of the server's resident set size, in bytes.
    pub(crate) fn rss_probe(&self) -> RssProbe {
        match &self.server {
            Some(s) => RssProbe::Proc(s.pid()),
            None => RssProbe::Stats(Box::new(self.root.clone())),
        }
    }

    /// One figure of `system.stats`.
    pub(crate) async fn stat(&self, name: &str) -> Result<u64> {
        stat(&self.root, name).await
    }
}

/// One figure of `system.stats`, read over `client`.
pub(crate) async fn stat(client: &KalamClient, name: &str) -> Result<u64> {
    let batches = client
        .query_collect(&format!(
            "SELECT value FROM system.stats WHERE name = '{name}'"
        ))
        .await?;
    let b = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .with_context(|| format!("system.stats has no {name}"))?;
    let col = b.column(0);
    if let Some(v) = col.as_primitive_opt::<arrow::datatypes::UInt64Type>() {
        return Ok(v.value(0));
    }
    if let Some(v) = col.as_primitive_opt::<arrow::datatypes::Int64Type>() {
        return Ok(v.value(0).max(0) as u64);
    }
    bail!("system.stats value of {name} is {}", col.data_type())
}

/// Where the server's RSS is read from.
#[derive(Clone)]
pub(crate) enum RssProbe {
    /// `/proc/PID/status` of a server this process started.
    Proc(u32),
    /// `system.stats` of a remote one.
    Stats(Box<KalamClient>),
}

impl RssProbe {
    /// Resident set size in bytes (0 if it cannot be read).
    pub(crate) async fn read(&self) -> u64 {
        match self {
            Self::Proc(pid) => proc_rss(*pid),
            Self::Stats(c) => stat(c, "process_rss_bytes").await.unwrap_or(0),
        }
    }
}

fn proc_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples RSS every `every` in the background: (seconds since start, bytes).
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(f64, u64)>>,
}

impl RssSampler {
    pub(crate) fn start(probe: RssProbe, every: Duration) -> Self {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                samples.push((start.elapsed().as_secs_f64(), probe.read().await));
            }
            samples
        });
        Self { stop, task }
    }

    pub(crate) async fn finish(self) -> Result<Vec<(f64, u64)>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// Median RSS (bytes) of the samples taken in `[from, to)` seconds.
pub(crate) fn median_rss(samples: &[(f64, u64)], from: f64, to: f64) -> u64 {
    let mut v: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, r)| *r)
        .collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The `p` quantile of sorted nanosecond samples, in milliseconds.
pub(crate) fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() as f64 * p) as usize).min(sorted_ns.len() - 1);
    sorted_ns[i] as f64 / 1e6
}

/// p50 / p99 / p99.9 of nanosecond samples as JSON (sorts them).
pub(crate) fn latency_json(ns: &mut [u64]) -> serde_json::Value {
    ns.sort_unstable();
    serde_json::json!({
        "samples": ns.len(),
        "p50_ms": percentile_ms(ns, 0.5),
        "p99_ms": percentile_ms(ns, 0.99),
        "p999_ms": percentile_ms(ns, 0.999),
    })
}

/// Bytes of Arrow data in `batch`: the buffers its rows cover (offsets, values, validity), not
/// whatever larger allocation they are slices of.
pub(crate) fn data_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
        .sum()
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Bytes as MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// Writes `name.json` into `--out` (if given) and returns the directory.
pub(crate) fn write_json(
    common: &Common,
    name: &str,
    figures: &serde_json::Value,
) -> Result<Option<PathBuf>> {
    let Some(dir) = &common.out else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(figures)?)?;
    println!("wrote {}", path.display());
    Ok(Some(dir.clone()))
}

/// A directory holding Parquet files.
pub(crate) struct ParquetDir {
    pub path: PathBuf,
    pub files: usize,
    pub bytes: u64,
}

/// Every directory under `root` that holds Parquet files (a server's table buckets), sorted.
pub(crate) fn parquet_dirs(root: &std::path::Path) -> Result<Vec<ParquetDir>> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let (mut files, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files += 1;
                // A file compaction deletes meanwhile counts with no bytes.
                bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
        if files > 0 {
            found.push(ParquetDir {
                path: dir,
                files,
                bytes,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}
