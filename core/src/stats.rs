//! Process-wide counters reported by `system.stats` (and, later, `/metrics`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

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
    pub store: std::sync::Arc<kalam_storage::counting::StoreStats>,
    /// Job ids handed out.
    job_seq: AtomicU64,
    /// Recent jobs, bounded by [`JOB_HISTORY`].
    jobs: Mutex<VecDeque<JobRecord>>,
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
