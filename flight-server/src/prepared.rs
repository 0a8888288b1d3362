//! Prepared-statement handles: owned by the user who created them, bounded per user and in
//! total, and dropped when idle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use dashmap::DashMap;
use kalam_core::engine::Described;
use kalam_core::{Error, Result};

/// Bound on open handles per user.
pub const MAX_PER_USER: usize = 256;
/// Bound on open handles in total.
pub const MAX_TOTAL: usize = 65_536;
/// A handle unused this long is dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(15 * 60);

/// One prepared statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// User id of the creator; nobody else may use it.
    pub owner: Arc<str>,
    /// The statement text.
    pub sql: Arc<str>,
    /// What it returns.
    pub described: Described,
    /// Parameters bound by the last DoPut, if any.
    pub params: Option<RecordBatch>,
    last_used: Instant,
}

/// The registry. Bounded by [`MAX_TOTAL`] and [`MAX_PER_USER`]; entries leave on close or idle.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    /// handle → statement.
    map: DashMap<Bytes, Prepared>,
    /// user id → open handles.
    per_user: DashMap<Arc<str>, usize>,
    /// When idle handles were last dropped; sweeps are periodic, not per call.
    last_sweep: parking_lot::Mutex<Option<Instant>>,
}

/// How often `create` sweeps idle handles (it also sweeps whenever a bound is reached).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl PreparedStatements {
    /// Registers a statement for `owner`, returning its handle.
    pub fn create(&self, owner: Arc<str>, sql: &str, described: Described) -> Result<Bytes> {
        let at_bound = self.map.len() >= MAX_TOTAL
            || self
                .per_user
                .get(&owner)
                .is_some_and(|n| *n >= MAX_PER_USER);
        if at_bound || self.sweep_due() {
            self.sweep();
        }
        if self.map.len() >= MAX_TOTAL {
            return Err(Error::ResourceExhausted(
                "too many open prepared statements on the server".into(),
            ));
        }
        {
            let mut n = self.per_user.entry(Arc::clone(&owner)).or_insert(0);
            if *n >= MAX_PER_USER {
                return Err(Error::ResourceExhausted(format!(
                    "too many open prepared statements (limit {MAX_PER_USER} per user); close some"
                )));
            }
            *n += 1;
        }
        let mut raw = [0u8; 16];
        rand::fill(&mut raw);
        let handle = Bytes::copy_from_slice(&raw);
        self.map.insert(
            handle.clone(),
            Prepared {
                owner,
                sql: Arc::from(sql),
                described,
                params: None,
                last_used: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// Runs `f` on the statement behind `handle` if `user` owns it, marking it used. Another
    /// user's handle gets the same answer as a missing one.
    fn with_owned<T>(
        &self,
        handle: &[u8],
        user: &str,
        f: impl FnOnce(&mut Prepared) -> T,
    ) -> Result<T> {
        match self.map.get_mut(handle) {
            Some(mut entry) if &*entry.owner == user => {
                entry.last_used = Instant::now();
                Ok(f(&mut entry))
            }
            _ => Err(Error::NotFound(
                "prepared statement not found (closed or expired)".into(),
            )),
        }
    }

    /// The statement behind `handle`, if `user` owns it.
    pub fn get(&self, handle: &[u8], user: &str) -> Result<Prepared> {
        self.with_owned(handle, user, |p| p.clone())
    }

    /// Binds parameters to `handle`.
    pub fn bind(&self, handle: &[u8], user: &str, params: RecordBatch) -> Result<()> {
        self.with_owned(handle, user, |p| p.params = Some(params))
    }

    /// Closes `handle` if `user` owns it.
    pub fn close(&self, handle: &[u8], user: &str) -> Result<()> {
        self.with_owned(handle, user, |_| ())?;
        if let Some((_, p)) = self.map.remove(handle) {
            self.release(&p.owner);
        }
        Ok(())
    }

    fn release(&self, owner: &Arc<str>) {
        let empty = match self.per_user.get_mut(owner) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if empty {
            self.per_user.remove_if(owner, |_, n| *n == 0);
        }
    }

    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock();
        let due = last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Drops idle handles.
    pub fn sweep(&self) {
        let mut expired = Vec::new();
        self.map.retain(|_, p| {
            let keep = p.last_used.elapsed() < IDLE_TTL;
            if !keep {
                expired.push(Arc::clone(&p.owner));
            }
            keep
        });
        for owner in expired {
            self.release(&owner);
        }
    }
}
