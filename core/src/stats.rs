//! Process-wide counters and the key figures built from them, reported by `system.stats` and by
//! the server's Prometheus endpoint (one list, [`key_figures`], for both).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool};
use kalam_storage::wal::WalStats;
use parking_lot::Mutex;

use crate::catalog::Catalog;

/// Most recent jobs kept for `system.jobs`; older ones are forgotten.
pub const JOB_HISTORY: usize = 256;

/// One flush, compaction or expiry, as `system.jobs` shows it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// `flush-17`, `compact-18`, ...
    pub id: String,
    /// `flush`, `compact`, `expire`.
    pub kind: &'static str,
    /// `namespace.table`.
    pub table: String,
    /// `running`, `done`, `failed`.
    pub status: &'static str,
    /// ms since the epoch.
    pub started_at_ms: i64,
    /// ms since the epoch, once finished.
    pub finished_at_ms: Option<i64>,
    /// What it did (rows, files, bytes) or why it failed.
    pub detail: String,
}

/// Counters. Each is monotonic unless its doc says otherwise.
#[derive(Debug, Default)]
pub struct Stats {
    /// `SessionContext`s built by this process; must stay 1 (DESIGN §5.1).
    pub session_contexts_created: AtomicU64,
    /// Queries whose execution started.
    pub queries_started: AtomicU64,
    /// Statements that changed rows or the catalog.
    pub statements_executed: AtomicU64,
    /// Rows written by INSERT/UPDATE/DELETE/ingest.
    pub rows_written: AtomicU64,
    /// Live queries currently registered (gauge).
    pub live_queries_active: AtomicU64,
    /// Parquet files written by flushes and compactions.
    pub files_written: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Compactions completed.
    pub compactions: AtomicU64,
    /// Writers that waited for the write buffer to drain (backpressure).
    pub write_stalls: AtomicU64,
    /// Reads of table files from the object store.
    pub store: Arc<kalam_storage::counting::StoreStats>,
    /// Job ids handed out.
    pub(crate) job_seq: AtomicU64,
    /// Recent jobs, bounded by [`JOB_HISTORY`].
    pub(crate) jobs: Mutex<VecDeque<JobRecord>>,
    /// Live-query notifications (change batches) sent to subscribers.
    pub notifications_sent: AtomicU64,
    /// Live-query notifications a subscriber fell behind on (caught up from the log or ended).
    pub notifications_lagged: AtomicU64,
    /// RPCs answered (any status), counted by the server's metrics layer.
    pub rpcs: AtomicU64,
    /// RPCs answered with a status other than OK.
    pub rpc_errors: AtomicU64,
    /// Result rows streamed to clients by DoGet.
    pub rows_streamed: AtomicU64,
    /// Flight data bytes (IPC header + body) streamed to clients by DoGet.
    pub bytes_streamed: AtomicU64,
    /// The WAL's counters (fsyncs, records, bytes); set when the engine is built.
    pub wal: Arc<WalStats>,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a job that just started; returns its id.
    pub fn job_started(&self, kind: &'static str, table: &str, now_ms: i64) -> String {
        let id = format!(
            "{kind}-{}",
            self.job_seq.fetch_add(1, Ordering::Relaxed) + 1
        );
        let mut jobs = self.jobs.lock();
        if jobs.len() >= JOB_HISTORY {
            jobs.pop_front();
        }
        jobs.push_back(JobRecord {
            id: id.clone(),
            kind,
            table: table.to_string(),
            status: "running",
            started_at_ms: now_ms,
            finished_at_ms: None,
            detail: String::new(),
        });
        id
    }

    /// Marks job `id` finished.
    pub fn job_finished(&self, id: &str, ok: bool, detail: String, now_ms: i64) {
        let mut jobs = self.jobs.lock();
        if let Some(j) = jobs.iter_mut().rev().find(|j| j.id == id) {
            j.status = if ok { "done" } else { "failed" };
            j.finished_at_ms = Some(now_ms);
            j.detail = detail;
        }
    }

    /// The recent jobs, oldest first.
    pub fn jobs(&self) -> Vec<JobRecord> {
        self.jobs.lock().iter().cloned().collect()
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Whether a figure only grows (a Prometheus counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    /// Monotonic since start.
    Counter,
    /// A current level.
    Gauge,
}

/// One key figure: a `system.stats` row and a `/metrics` series.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Name in `system.stats`; `/metrics` prefixes `kalam_` (and suffixes counters `_total`).
    pub name: &'static str,
    /// One-line meaning (the Prometheus `# HELP`).
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: FigureKind,
    /// Current value.
    pub value: u64,
}

/// The key figures, in a fixed order (the set of names never depends on input).
pub fn key_figures(stats: &Stats, catalog: &Catalog, pool: &dyn MemoryPool) -> Vec<Figure> {
    use FigureKind::{Counter, Gauge};
    let f = |name, help, kind, value| Figure {
        name,
        help,
        kind,
        value,
    };
    let get = Stats::get;
    let memory_limit = match pool.memory_limit() {
        MemoryLimit::Finite(n) => n as u64,
        MemoryLimit::Infinite | MemoryLimit::Unknown => 0,
    };
    vec![
        f(
            "session_contexts_created",
            "DataFusion SessionContexts built (stays 1)",
            Counter,
            get(&stats.session_contexts_created),
        ),
        f(
            "queries_started",
            "Queries whose execution started",
            Counter,
            get(&stats.queries_started),
        ),
        f(
            "statements_executed",
            "Statements that changed rows or the catalog",
            Counter,
            get(&stats.statements_executed),
        ),
        f(
            "rows_written",
            "Rows written by INSERT/UPDATE/DELETE/ingest",
            Counter,
            get(&stats.rows_written),
        ),
        f(
            "rpcs",
            "RPCs answered (any status)",
            Counter,
            get(&stats.rpcs),
        ),
        f(
            "rpc_errors",
            "RPCs answered with a non-OK status",
            Counter,
            get(&stats.rpc_errors),
        ),
        f(
            "rows_streamed",
            "Result rows streamed by DoGet",
            Counter,
            get(&stats.rows_streamed),
        ),
        f(
            "bytes_streamed",
            "Flight data bytes streamed by DoGet",
            Counter,
            get(&stats.bytes_streamed),
        ),
        f(
            "live_queries_active",
            "Live-query subscriptions open now",
            Gauge,
            get(&stats.live_queries_active),
        ),
        f(
            "notifications_sent",
            "Live-query change notifications sent",
            Counter,
            get(&stats.notifications_sent),
        ),
        f(
            "notifications_lagged",
            "Live-query notifications a subscriber fell behind on",
            Counter,
            get(&stats.notifications_lagged),
        ),
        f(
            "flushes",
            "Write-buffer flushes to Parquet completed",
            Counter,
            get(&stats.flushes),
        ),
        f(
            "compactions",
            "Bucket compactions completed",
            Counter,
            get(&stats.compactions),
        ),
        f(
            "files_written",
            "Parquet files written by flushes and compactions",
            Counter,
            get(&stats.files_written),
        ),
        f(
            "write_stalls",
            "Writes that waited for the write buffer to drain (backpressure)",
            Counter,
            get(&stats.write_stalls),
        ),
        f(
            "store_reads",
            "Object-store reads of table files",
            Counter,
            get(&stats.store.reads),
        ),
        f(
            "store_bytes_read",
            "Bytes read from the object store for table files",
            Counter,
            get(&stats.store.bytes_read),
        ),
        f(
            "wal_fsyncs",
            "WAL fsyncs (one per commit group)",
            Counter,
            get(&stats.wal.fsyncs),
        ),
        f(
            "wal_records",
            "WAL records written",
            Counter,
            get(&stats.wal.records),
        ),
        f(
            "wal_bytes",
            "WAL bytes written",
            Counter,
            get(&stats.wal.bytes),
        ),
        f(
            "write_buffer_bytes",
            "Bytes held by the write buffer",
            Gauge,
            catalog.buffer_bytes() as u64,
        ),
        f(
            "memory_pool_used_bytes",
            "Bytes reserved in the query memory pool",
            Gauge,
            pool.reserved() as u64,
        ),
        f(
            "memory_pool_limit_bytes",
            "Size of the query memory pool (0 = unlimited)",
            Gauge,
            memory_limit,
        ),
        f(
            "process_rss_bytes",
            "Resident set size of the server process",
            Gauge,
            process_rss_bytes(),
        ),
        f(
            "tables",
            "Tables in the catalog",
            Gauge,
            catalog.table_count() as u64,
        ),
        f(
            "users",
            "Users in the catalog",
            Gauge,
            catalog.user_count() as u64,
        ),
    ]
}

/// Resident set size from `/proc/self/statm` (0 where there is no procfs).
pub fn process_rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read() {
        if std::path::Path::new("/proc/self/statm").exists() {
            assert!(process_rss_bytes() > 1 << 20);
        }
    }
}
