//! Process-wide counters reported by `system.stats` (and, later, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
