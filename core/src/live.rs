//! Live queries: the subscription registry, vectorized matching, bounded fan-out and the
//! retention ring used to resume.
//!
//! - The registry is keyed by (table, partition): a USER/STREAM subscription sits under its
//!   user's partition, a SHARED one under `""`, so a commit only ever meets the subscriptions of
//!   its own partition. A subscription is a compact record: ids, a shared compiled filter, a
//!   shared projection, counters and a bounded queue; the SQL text lives once, in the
//!   `system.live_queries` info map.
//! - Filters are compiled once to DataFusion `PhysicalExpr`s and shared by identical queries;
//!   each commit is matched once per distinct (filter, projection) and the resulting batch is
//!   shared (Arc'd arrays) by every subscriber of that group.
//! - Delivery never blocks the writer: a full queue, or a queue over its byte bound, or the
//!   global byte budget exhausted, ends that stream with its last delivered seq
//!   (`RESOURCE_EXHAUSTED`, resumable). Nobody is ever silently skipped.
//! - Every commit also enters a ring bounded by bytes and age, from which `resume_after_seq`
//!   replays; a position older than the ring's floor is "too old".

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use kalam_storage::buffer::{SEQ_COLUMN, deleted_flags};
use kalam_storage::wal::WalKind;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc};

use crate::{Error, Result};

/// Name of the change-type column of live batches.
pub const CHANGE_TYPE_COLUMN: &str = "_change_type";

/// Limits and bounds of the live-query manager.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Subscriptions one user may hold.
    pub max_per_user: usize,
    /// Subscriptions one connection may hold.
    pub max_per_connection: usize,
    /// Subscriptions in the whole server.
    pub max_total: usize,
    /// Subscribe calls per user per second.
    pub subscribes_per_sec: u32,
    /// Batches queued per subscription before it is ended as too slow.
    pub queue_batches: usize,
    /// Bytes queued per subscription before it is ended as too slow.
    pub queue_bytes: usize,
    /// Bytes queued across all subscriptions.
    pub global_bytes: usize,
    /// Bytes of recent changes kept for resume.
    pub ring_bytes: usize,
    /// Age of recent changes kept for resume.
    pub ring_age: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_per_user: 1_000,
            max_per_connection: 10_000,
            max_total: 200_000,
            subscribes_per_sec: 1_000,
            queue_batches: 1_024,
            queue_bytes: 16 << 20,
            global_bytes: 512 << 20,
            ring_bytes: 64 << 20,
            ring_age: Duration::from_secs(600),
        }
    }
}

/// One committed change, as the manager sees it.
#[derive(Debug)]
pub struct Change {
    /// Table id.
    pub table_id: u64,
    /// Partition (user id, or "" for shared tables).
    pub partition: Arc<str>,
    /// What happened.
    pub kind: WalKind,
    /// New rows (deletes: the deleted rows): user columns + `_seq` (+ `_deleted` for a REPLACE).
    pub rows: RecordBatch,
    /// For updates, the previous version of each row (same order), if known.
    pub old: Option<RecordBatch>,
    /// Highest `_seq` of the change.
    pub last_seq: u64,
    at: Instant,
    bytes: usize,
}

impl Change {
    /// A change of `rows` (which carry `_seq`).
    pub fn new(
        table_id: u64,
        partition: &str,
        kind: WalKind,
        rows: RecordBatch,
        old: Option<RecordBatch>,
        last_seq: u64,
    ) -> Self {
        let bytes = rows.get_array_memory_size()
            + old.as_ref().map_or(0, RecordBatch::get_array_memory_size);
        Self {
            table_id,
            partition: Arc::from(partition),
            kind,
            rows,
            old,
            last_seq,
            at: Instant::now(),
            bytes,
        }
    }
}

/// A compiled WHERE clause, shared by identical subscriptions.
#[derive(Debug)]
pub struct CompiledFilter {
    expr: Arc<dyn PhysicalExpr>,
}

impl CompiledFilter {
    fn eval(&self, rows: &RecordBatch) -> Result<BooleanArray> {
        let v = self
            .expr
            .evaluate(rows)
            .and_then(|v| v.into_array(rows.num_rows()))
            .map_err(Error::from_datafusion)?;
        let b = v
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| Error::InvalidArgument("WHERE must be a boolean condition".into()))?;
        // NULL does not match.
        Ok(b.iter().map(|x| Some(x == Some(true))).collect())
    }
}

/// Projected columns and the output schema (columns + `_seq` + `_change_type`), shared.
#[derive(Debug)]
pub struct Projection {
    cols: Vec<usize>,
    /// The schema of every batch the subscription receives.
    pub schema: SchemaRef,
}

/// Why a stream ended on the server's initiative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEnd {
    /// `KILL LIVE QUERY`.
    Killed,
    /// The table was dropped.
    TableDropped,
    /// The subscriber fell too far behind; it may resume after `last_seq`.
    Lagged {
        /// Last seq delivered to it.
        last_seq: u64,
    },
}

/// One queued batch of changes.
#[derive(Debug)]
pub struct Delivery {
    /// Projected rows + `_seq` + `_change_type`.
    pub batch: RecordBatch,
    /// Highest `_seq` in `batch`.
    pub max_seq: u64,
    bytes: usize,
}

/// The hot record of one subscription.
#[derive(Debug)]
pub struct Subscription {
    /// Server-assigned id.
    pub id: Arc<str>,
    /// Owner.
    pub user_id: Arc<str>,
    connection: Arc<str>,
    table_id: u64,
    partition: Arc<str>,
    filter: Option<Arc<CompiledFilter>>,
    projection: Arc<Projection>,
    tx: mpsc::Sender<Delivery>,
    queued_bytes: AtomicUsize,
    /// Last seq handed to the client.
    pub last_seq: AtomicU64,
    /// Rows handed to the client.
    pub delivered: AtomicU64,
    ended: AtomicBool,
    end: Mutex<Option<LiveEnd>>,
    /// Woken when the stream must end.
    pub ended_notify: Notify,
}

impl Subscription {
    /// Why the server ended this stream, if it did.
    pub fn end_reason(&self) -> Option<LiveEnd> {
        self.end.lock().clone()
    }

    fn finish(&self, why: LiveEnd) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            *self.end.lock() = Some(why);
            self.ended_notify.notify_one();
        }
    }
}

/// `system.live_queries` row data (kept out of the hot record).
#[derive(Debug)]
pub struct LiveInfo {
    /// The subscription's SQL.
    pub sql: String,
    /// `namespace.table`.
    pub table: String,
    /// ms since the epoch.
    pub created_at_ms: i64,
}

#[derive(Debug, Default)]
struct Ring {
    /// Oldest first.
    entries: VecDeque<Arc<Change>>,
    bytes: usize,
    /// Every change with a seq above this is retained.
    floor: u64,
}

/// (table id, partition).
type PartitionKey = (u64, Arc<str>);
/// (table id, projected column indices).
type ProjectionKey = (u64, Vec<usize>);
/// A subscription and its `system.live_queries` info.
type Registered = (Arc<Subscription>, Arc<LiveInfo>);
/// A partition's subscriptions by address.
type PartitionSubs = HashMap<usize, Arc<Subscription>>;
/// Subscriptions per user or per connection.
type Counts = HashMap<Arc<str>, usize>;

/// The registry and fan-out (see the module docs).
#[derive(Debug)]
pub struct LiveManager {
    config: LiveConfig,
    /// Subscriptions by (table, partition), keyed by address. Bounded by `max_total`. A commit
    /// takes the partition's map by `Arc` (no copy); (un)registering edits it in place unless a
    /// commit is delivering from it at that moment.
    by_key: RwLock<HashMap<PartitionKey, Arc<PartitionSubs>>>,
    /// Subscriptions by id with their `system.live_queries` info. Bounded by `max_total`.
    by_id: RwLock<HashMap<Arc<str>, Registered>>,
    /// Subscription counts by user and by connection. Bounded by `max_total` entries.
    counts: Mutex<(Counts, Counts)>,
    /// Subscribe calls in the current second, by user. Cleared every second.
    rate: Mutex<(Instant, HashMap<Arc<str>, u32>)>,
    /// Interned filters; entries die with their last subscription (bounded by `max_total`).
    filters: Mutex<HashMap<(u64, String), Weak<CompiledFilter>>>,
    /// Interned projections, as `filters`.
    projections: Mutex<HashMap<ProjectionKey, Weak<Projection>>>,
    ring: Mutex<Ring>,
    /// Bytes queued across all subscriptions (bounded by `global_bytes`).
    queued: AtomicUsize,
    next_id: AtomicU64,
    /// Where `live_queries_active` and the notification counters are reported.
    stats: Arc<crate::stats::Stats>,
}

/// A registered subscription; dropping it unregisters it and frees its queue.
#[derive(Debug)]
pub struct SubscriptionHandle {
    manager: Arc<LiveManager>,
    /// The subscription.
    pub sub: Arc<Subscription>,
    /// Its queue.
    pub rx: mpsc::Receiver<Delivery>,
}

impl SubscriptionHandle {
    /// Takes the next queued batch's bytes off the books (call for each delivery received).
    pub fn delivered(&self, d: &Delivery) {
        self.sub.queued_bytes.fetch_sub(d.bytes, Ordering::AcqRel);
        self.manager.queued.fetch_sub(d.bytes, Ordering::AcqRel);
        self.sub.last_seq.fetch_max(d.max_seq, Ordering::AcqRel);
        self.sub
            .delivered
            .fetch_add(d.batch.num_rows() as u64, Ordering::Relaxed);
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        self.manager.unregister(&self.sub);
    }
}

impl LiveManager {
    /// A manager whose ring starts at `start_seq` (nothing before it can be resumed).
    pub fn new(config: LiveConfig, start_seq: u64, stats: Arc<crate::stats::Stats>) -> Self {
        Self {
            config,
            by_key: RwLock::new(HashMap::new()),
            by_id: RwLock::new(HashMap::new()),
            counts: Mutex::new((HashMap::new(), HashMap::new())),
            rate: Mutex::new((Instant::now(), HashMap::new())),
            filters: Mutex::new(HashMap::new()),
            projections: Mutex::new(HashMap::new()),
            ring: Mutex::new(Ring {
                floor: start_seq,
                ..Ring::default()
            }),
            queued: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stats,
        }
    }

    /// Active subscriptions.
    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// No active subscriptions?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Does any subscription watch (table, partition)?
    pub fn watched(&self, table_id: u64, partition: &str) -> bool {
        let key = (table_id, Arc::from(partition));
        self.by_key.read().get(&key).is_some_and(|v| !v.is_empty())
    }

    /// The filter for `key` (compiling it with `compile` the first time).
    pub fn filter(
        &self,
        table_id: u64,
        key: String,
        compile: impl FnOnce() -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<CompiledFilter>> {
        let mut m = self.filters.lock();
        if let Some(f) = m.get(&(table_id, key.clone())).and_then(Weak::upgrade) {
            return Ok(f);
        }
        m.retain(|_, w| w.strong_count() > 0);
        let f = Arc::new(CompiledFilter { expr: compile()? });
        m.insert((table_id, key), Arc::downgrade(&f));
        Ok(f)
    }

    /// The projection of `cols` (indices into `table` = user columns + `_seq`).
    pub fn projection(&self, table_id: u64, table: &Schema, cols: Vec<usize>) -> Arc<Projection> {
        let mut m = self.projections.lock();
        if let Some(p) = m.get(&(table_id, cols.clone())).and_then(Weak::upgrade) {
            return p;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let mut fields: Vec<Field> = cols.iter().map(|i| table.field(*i).clone()).collect();
        fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
        fields.push(Field::new(CHANGE_TYPE_COLUMN, DataType::Utf8, false));
        let p = Arc::new(Projection {
            cols: cols.clone(),
            schema: Arc::new(Schema::new(fields)),
        });
        m.insert((table_id, cols), Arc::downgrade(&p));
        p
    }

    /// Checks the limits for a new subscription of `user` on `connection`.
    pub fn check_limits(&self, user: &str, connection: &str) -> Result<()> {
        {
            let mut r = self.rate.lock();
            if r.0.elapsed() >= Duration::from_secs(1) {
                *r = (Instant::now(), HashMap::new());
            }
            let n = r.1.entry(Arc::from(user)).or_insert(0);
            *n += 1;
            if *n > self.config.subscribes_per_sec {
                return Err(Error::ResourceExhausted(format!(
                    "too many subscribe calls: at most {} per second per user",
                    self.config.subscribes_per_sec
                )));
            }
        }
        let counts = self.counts.lock();
        let total = self.len();
        if total >= self.config.max_total {
            return Err(Error::ResourceExhausted(format!(
                "the server holds its maximum of {} live queries",
                self.config.max_total
            )));
        }
        if counts.0.get(user).copied().unwrap_or(0) >= self.config.max_per_user {
            return Err(Error::ResourceExhausted(format!(
                "at most {} live queries per user",
                self.config.max_per_user
            )));
        }
        if counts.1.get(connection).copied().unwrap_or(0) >= self.config.max_per_connection {
            return Err(Error::ResourceExhausted(format!(
                "at most {} live queries per connection",
                self.config.max_per_connection
            )));
        }
        Ok(())
    }

    /// Registers a subscription. Call with the partition's writer lock held, so no commit of the
    /// partition is between publish and registration.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        self: &Arc<Self>,
        user_id: Arc<str>,
        connection: Arc<str>,
        table_id: u64,
        partition: &str,
        filter: Option<Arc<CompiledFilter>>,
        projection: Arc<Projection>,
        info: LiveInfo,
        start_seq: u64,
    ) -> SubscriptionHandle {
        let (tx, rx) = mpsc::channel(self.config.queue_batches);
        let id: Arc<str> = Arc::from(format!(
            "lq-{}-{:08x}",
            self.next_id.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        let sub = Arc::new(Subscription {
            id: Arc::clone(&id),
            user_id: Arc::clone(&user_id),
            connection: Arc::clone(&connection),
            table_id,
            partition: Arc::from(partition),
            filter,
            projection,
            tx,
            queued_bytes: AtomicUsize::new(0),
            last_seq: AtomicU64::new(start_seq),
            delivered: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            end: Mutex::new(None),
            ended_notify: Notify::new(),
        });
        {
            let mut c = self.counts.lock();
            *c.0.entry(user_id).or_insert(0) += 1;
            *c.1.entry(connection).or_insert(0) += 1;
        }
        Arc::make_mut(
            self.by_key
                .write()
                .entry((table_id, Arc::from(partition)))
                .or_default(),
        )
        .insert(Arc::as_ptr(&sub) as usize, Arc::clone(&sub));
        self.by_id
            .write()
            .insert(id, (Arc::clone(&sub), Arc::new(info)));
        self.stats
            .live_queries_active
            .fetch_add(1, Ordering::Relaxed);
        SubscriptionHandle {
            manager: Arc::clone(self),
            sub,
            rx,
        }
    }

    fn unregister(&self, sub: &Arc<Subscription>) {
        if self.by_id.write().remove(&sub.id).is_none() {
            return;
        }
        self.stats
            .live_queries_active
            .fetch_sub(1, Ordering::Relaxed);
        {
            let mut by_key = self.by_key.write();
            let key = (sub.table_id, Arc::clone(&sub.partition));
            if let Some(v) = by_key.get_mut(&key) {
                let v = Arc::make_mut(v);
                v.remove(&(Arc::as_ptr(sub) as usize));
                if v.is_empty() {
                    by_key.remove(&key);
                }
            }
        }
        let mut guard = self.counts.lock();
        let (users, connections) = &mut *guard;
        for (map, k) in [(users, &sub.user_id), (connections, &sub.connection)] {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        self.queued
            .fetch_sub(sub.queued_bytes.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    }

    /// Publishes a committed change: into the ring, and to the partition's subscriptions.
    /// Called by the committing writer with the partition's writer lock held; never blocks.
    pub fn publish(&self, change: Change) {
        let change = Arc::new(change);
        self.retain(Arc::clone(&change));
        let subs = {
            let key = (change.table_id, Arc::clone(&change.partition));
            match self.by_key.read().get(&key) {
                Some(v) if !v.is_empty() => Arc::clone(v),
                _ => return,
            }
        };
        self.deliver(&change, subs.values(), 0);
    }

    fn deliver<'s>(
        &self,
        change: &Change,
        subs: impl IntoIterator<Item = &'s Arc<Subscription>>,
        after_seq: u64,
    ) {
        // One evaluation per distinct (filter, projection); the batch is shared. Keyed by the
        // handles' addresses, so many distinct filters stay O(1) per subscription.
        let mut done: HashMap<(usize, usize), Option<Delivery>> = HashMap::new();
        for sub in subs {
            if sub.ended.load(Ordering::Acquire) {
                continue;
            }
            let fkey = sub.filter.as_ref().map_or(0, |f| Arc::as_ptr(f) as usize);
            let pkey = Arc::as_ptr(&sub.projection) as usize;
            let rendered = done.entry((fkey, pkey)).or_insert_with(|| {
                render(change, sub.filter.as_deref(), &sub.projection, after_seq).unwrap_or_else(
                    |e| {
                        tracing::warn!(error = %e, sub = %sub.id, "live filter failed");
                        None
                    },
                )
            });
            if let Some(d) = rendered {
                self.offer(sub, d);
            }
        }
    }

    fn offer(&self, sub: &Subscription, d: &Delivery) {
        let over_sub = sub.queued_bytes.load(Ordering::Acquire) + d.bytes > self.config.queue_bytes;
        let over_all = self.queued.load(Ordering::Acquire) + d.bytes > self.config.global_bytes;
        let sent = !over_sub
            && !over_all
            && sub
                .tx
                .try_send(Delivery {
                    batch: d.batch.clone(),
                    max_seq: d.max_seq,
                    bytes: d.bytes,
                })
                .is_ok();
        if sent {
            sub.queued_bytes.fetch_add(d.bytes, Ordering::AcqRel);
            self.queued.fetch_add(d.bytes, Ordering::AcqRel);
            self.stats
                .notifications_sent
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .notifications_lagged
                .fetch_add(1, Ordering::Relaxed);
            sub.finish(LiveEnd::Lagged {
                last_seq: sub.last_seq.load(Ordering::Acquire),
            });
        }
    }

    fn retain(&self, change: Arc<Change>) {
        let mut r = self.ring.lock();
        r.bytes += change.bytes;
        r.entries.push_back(change);
        while let Some(front) = r.entries.front() {
            let over =
                r.bytes > self.config.ring_bytes || front.at.elapsed() > self.config.ring_age;
            if !over || r.entries.len() == 1 && r.bytes <= self.config.ring_bytes {
                break;
            }
            let Some(old) = r.entries.pop_front() else {
                break;
            };
            r.bytes -= old.bytes;
            r.floor = r.floor.max(old.last_seq);
        }
    }

    /// Every change with a seq above this is in the ring.
    pub fn ring_floor(&self) -> u64 {
        self.ring.lock().floor
    }

    /// Queues `changes` (older than the ring, read from the WAL) for the subscription, skipping
    /// rows at or below `after_seq`.
    pub fn replay_changes(&self, handle: &SubscriptionHandle, changes: &[Change], after_seq: u64) {
        for c in changes {
            self.deliver(c, [&handle.sub], after_seq);
        }
    }

    /// Queues every change of the subscription's partition in the ring after `after_seq` (the
    /// caller replays what is older from the WAL first). Call under the partition's writer lock,
    /// right after `register`.
    pub fn replay(&self, handle: &SubscriptionHandle, after_seq: u64) -> Result<()> {
        let sub = &handle.sub;
        let changes: Vec<Arc<Change>> = {
            let r = self.ring.lock();
            r.entries
                .iter()
                .filter(|c| {
                    c.table_id == sub.table_id
                        && c.partition == sub.partition
                        && c.last_seq > after_seq
                })
                .cloned()
                .collect()
        };
        for c in changes {
            self.deliver(&c, [sub], after_seq);
        }
        sub.last_seq.fetch_max(after_seq, Ordering::AcqRel);
        Ok(())
    }

    /// Ends every subscription on a table for which `exists` is false (DROP TABLE).
    pub fn retain_tables(&self, exists: impl Fn(u64) -> bool) {
        for (s, _) in self.by_id.read().values() {
            if !exists(s.table_id) {
                s.finish(LiveEnd::TableDropped);
            }
        }
    }

    /// `KILL LIVE QUERY`: ends `id` if `user` owns it (or `any_user`).
    pub fn kill(&self, id: &str, user: &str, any_user: bool) -> Result<()> {
        let by_id = self.by_id.read();
        match by_id.get(id) {
            Some((s, _)) if any_user || &*s.user_id == user => {
                s.finish(LiveEnd::Killed);
                Ok(())
            }
            _ => Err(Error::NotFound(format!("live query '{id}' does not exist"))),
        }
    }

    /// `system.live_queries` rows visible to `user` (all of them with `all`).
    pub fn list(&self, user: &str, all: bool) -> Vec<(Arc<Subscription>, Arc<LiveInfo>)> {
        let mut v: Vec<_> = self
            .by_id
            .read()
            .values()
            .filter(|(s, _)| all || &*s.user_id == user)
            .map(|(s, i)| (Arc::clone(s), Arc::clone(i)))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v
    }
}

/// The rows of `change` a subscription with `filter` and `projection` receives, with their
/// change types; rows with `_seq <= after_seq` are skipped (resume).
fn render(
    change: &Change,
    filter: Option<&CompiledFilter>,
    projection: &Projection,
    after_seq: u64,
) -> Result<Option<Delivery>> {
    let rows = &change.rows;
    let n = rows.num_rows();
    if n == 0 {
        return Ok(None);
    }
    let all = || BooleanArray::from(vec![true; n]);
    let new_match = match filter {
        Some(f) => f.eval(rows)?,
        None => all(),
    };
    let old_match = match (&change.old, filter) {
        (Some(old), Some(f)) if change.kind == WalKind::Update => f.eval(old)?,
        _ => new_match.clone(),
    };
    let deleted = deleted_flags(rows);
    let seqs = rows
        .column_by_name(SEQ_COLUMN)
        .ok_or_else(|| Error::Internal("live change without _seq".into()))?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| Error::Internal("live change without _seq".into()))?;
    let mut keep = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        let (m_new, m_old) = (new_match.value(i), old_match.value(i));
        let kind = match change.kind {
            WalKind::Insert => m_new.then_some("insert"),
            WalKind::Delete => m_new.then_some("delete"),
            WalKind::Replace if deleted.is_some_and(|d| d.value(i)) => m_new.then_some("delete"),
            WalKind::Replace => m_new.then_some("insert"),
            WalKind::Update => match (m_old, m_new) {
                (true, true) => Some("update"),
                (false, true) => Some("insert"),
                (true, false) => Some("delete"),
                (false, false) => None,
            },
        };
        let kind = kind.filter(|_| seqs.value(i) > after_seq);
        keep.push(kind.is_some());
        if let Some(k) = kind {
            types.push(k);
        }
    }
    if types.is_empty() {
        return Ok(None);
    }
    let mask = BooleanArray::from(keep);
    let arrow_err = |e: arrow::error::ArrowError| Error::Internal(e.to_string());
    let kept = filter_record_batch(rows, &mask).map_err(arrow_err)?;
    let mut cols: Vec<ArrayRef> = projection
        .cols
        .iter()
        .map(|i| Arc::clone(kept.column(*i)))
        .collect();
    let kept_seq = kept
        .column_by_name(SEQ_COLUMN)
        .cloned()
        .ok_or_else(|| Error::Internal("live change without _seq".into()))?;
    let max_seq = kept_seq
        .as_any()
        .downcast_ref::<UInt64Array>()
        .and_then(|s| s.values().iter().max().copied())
        .unwrap_or(0);
    cols.push(kept_seq);
    cols.push(Arc::new(StringArray::from(types)));
    let batch = RecordBatch::try_new(Arc::clone(&projection.schema), cols).map_err(arrow_err)?;
    let bytes = batch.get_array_memory_size();
    Ok(Some(Delivery {
        batch,
        max_seq,
        bytes,
    }))
}
