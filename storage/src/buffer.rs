//! The write buffer: committed rows held as Arrow, per table and partition.
//!
//! A [`TableBuffer`] is one *generation* of a table's memtable. A partition is one user's rows of
//! a USER/STREAM table, or all rows of a SHARED table. Each partition keeps its rows as
//! append-only chunks plus a primary-key index that points at the newest version of each key in
//! this generation. A version is either a row or a tombstone (`_deleted = true`): tombstones are
//! kept only when older layers (frozen generations, Parquet files) may still hold the key, and
//! readers merge the layers so the newest `_seq` per key wins.
//!
//! Applying a change never validates it: the commit path checks keys across every layer under
//! the partition's writer lock before the change is logged, so replaying the log in order
//! reproduces exactly what was acknowledged.
//!
//! Rows carry the table's user columns followed by `_seq` (UInt64) and `_deleted` (Boolean).
//! Chunks written before an `ALTER TABLE ... ADD COLUMN` are padded with NULLs when read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array, new_null_array};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use parking_lot::RwLock;

use crate::{Error, Result};

/// Name of the hidden commit-sequence column.
pub const SEQ_COLUMN: &str = "_seq";
/// Name of the stored tombstone flag (never visible to SQL).
pub const DELETED_COLUMN: &str = "_deleted";

/// Trailing chunks smaller than this are merged once there are [`MAX_SMALL_CHUNKS`] of them,
/// so single-row inserts do not leave one tiny batch per row.
const SMALL_CHUNK_ROWS: usize = 4096;
/// Bound on small trailing chunks per partition before they are merged.
const MAX_SMALL_CHUNKS: usize = 32;

/// Byte accounting shared by every table's buffer (reported as `write_buffer_bytes`).
#[derive(Debug, Default)]
pub struct BufferAccounting {
    bytes: AtomicUsize,
}

impl BufferAccounting {
    /// Bytes currently held by all buffers.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One generation of a table's buffered rows.
#[derive(Debug)]
pub struct TableBuffer {
    /// Table name, for error messages.
    table: String,
    /// Positions of the primary-key columns among the user columns.
    pk: Vec<usize>,
    /// Encodes primary keys into comparable, hashable rows.
    converter: RowConverter,
    /// Partitions by key (user id, or "" for shared tables). Grows with the users who wrote to
    /// this table; bounded by the number of users in the catalog.
    partitions: RwLock<HashMap<Arc<str>, Arc<RwLock<Partition>>>>,
    /// Where this buffer reports its bytes.
    accounting: Arc<BufferAccounting>,
    /// Keep tombstones for deleted keys (older layers may hold them); otherwise a delete simply
    /// drops the key.
    keep_tombstones: bool,
    /// Smallest `_seq` applied to this generation (`u64::MAX` while empty): the WAL must keep
    /// every record from here on until this generation is flushed.
    min_seq: AtomicU64,
    /// Largest `_seq` applied to this generation (0 while empty).
    max_seq: AtomicU64,
}

#[derive(Debug, Default)]
struct Partition {
    /// Append-only chunks: user columns + `_seq` + `_deleted`.
    chunks: Vec<Chunk>,
    /// Newest version of each key in this generation: (chunk, row).
    index: HashMap<OwnedRow, (u32, u32)>,
    /// Rows superseded but still held in chunks.
    dead: usize,
    /// Keys in `index` whose newest version is a tombstone.
    tombstones: usize,
}

#[derive(Debug)]
struct Chunk {
    batch: RecordBatch,
    /// Is this row the newest version of its key in this generation?
    live: Vec<bool>,
    /// Does any row of this chunk carry `_deleted = true`?
    has_tombstones: bool,
    bytes: usize,
    /// Newest commit time of the rows in this chunk (ms since epoch), for STREAM TTLs.
    committed_at_ms: i64,
    /// Oldest commit time of the rows in this chunk.
    oldest_ms: i64,
}

impl Chunk {
    fn new(batch: RecordBatch, committed_at_ms: i64, oldest_ms: i64) -> Self {
        let bytes = batch.get_array_memory_size();
        let live = vec![true; batch.num_rows()];
        let has_tombstones = deleted_flags(&batch).is_some_and(|d| d.true_count() > 0);
        Self {
            batch,
            live,
            has_tombstones,
            bytes,
            committed_at_ms,
            oldest_ms,
        }
    }

    fn is_tombstone(&self, row: usize) -> bool {
        self.has_tombstones && deleted_flags(&self.batch).is_some_and(|d| d.value(row))
    }
}

/// The `_deleted` column of a stored or logged batch, if it has one.
pub fn deleted_flags(batch: &RecordBatch) -> Option<&BooleanArray> {
    batch
        .column_by_name(DELETED_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
}

/// Merged chunks of an append-only (STREAM) table may span at most this much commit time, so a
/// row outlives its TTL by at most this much.
const STREAM_MERGE_SPAN_MS: i64 = 1000;

/// A filter mask over a chunk's live flags (no intermediate `Vec` copy).
fn live_mask(live: &[bool]) -> BooleanArray {
    BooleanArray::new(arrow::buffer::BooleanBuffer::from(live), None)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a key stands in one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// The generation does not know the key: look in older layers.
    Unknown,
    /// The newest version here is a row.
    Live,
    /// The newest version here is a tombstone.
    Deleted,
}

impl TableBuffer {
    /// A buffer for a table whose user columns are `schema` and whose primary key is `pk`.
    /// `keep_tombstones` is set when older layers may hold keys this generation deletes.
    pub fn new(
        table: impl Into<String>,
        schema: &Schema,
        pk: Vec<usize>,
        accounting: Arc<BufferAccounting>,
        keep_tombstones: bool,
    ) -> Result<Self> {
        let table = table.into();
        // An append-only table (no key) still needs a converter; it is never used.
        let fields = pk
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| Error::Arrow {
            table: table.clone(),
            source: e,
        })?;
        Ok(Self {
            table,
            pk,
            converter,
            partitions: RwLock::new(HashMap::new()),
            accounting,
            keep_tombstones,
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
        })
    }

    fn partition(&self, key: &str) -> Arc<RwLock<Partition>> {
        if let Some(p) = self.partitions.read().get(key) {
            return Arc::clone(p);
        }
        Arc::clone(self.partitions.write().entry(Arc::from(key)).or_default())
    }

    fn arrow_err(&self, e: arrow::error::ArrowError) -> Error {
        Error::Arrow {
            table: self.table.clone(),
            source: e,
        }
    }

    /// The primary keys of `batch` (user-column layout) in row format.
    pub fn keys(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self
            .pk
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        self.key_rows(&cols)
    }

    /// Key columns (in primary-key order) in row format, comparable with [`TableBuffer::keys`].
    pub fn key_rows(&self, columns: &[ArrayRef]) -> Result<arrow::row::Rows> {
        self.converter
            .convert_columns(columns)
            .map_err(|e| self.arrow_err(e))
    }

    /// `(k1, k2)` for row `row` of `batch`, for error messages.
    pub fn render_key(&self, batch: &RecordBatch, row: usize) -> String {
        let parts: Vec<String> = self
            .pk
            .iter()
            .map(|i| array_value_to_string(batch.column(*i), row).unwrap_or_else(|_| "?".into()))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// Does this table have a primary key (false: append-only STREAM table)?
    pub fn is_keyed(&self) -> bool {
        !self.pk.is_empty()
    }

    /// Smallest `_seq` applied (`u64::MAX` when empty).
    pub fn min_seq(&self) -> u64 {
        self.min_seq.load(Ordering::Acquire)
    }

    /// Largest `_seq` applied (0 when empty).
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Acquire)
    }

    /// Has anything been applied to this generation?
    pub fn is_empty(&self) -> bool {
        self.min_seq() == u64::MAX
    }

    /// The partitions holding rows.
    pub fn partition_keys(&self) -> Vec<Arc<str>> {
        self.partitions.read().keys().cloned().collect()
    }

    /// Where each key of `keys` stands in `partition` of this generation.
    pub fn lookup(&self, partition: &str, keys: &arrow::row::Rows) -> Vec<KeyState> {
        let part = self.partitions.read().get(partition).cloned();
        let Some(part) = part else {
            return vec![KeyState::Unknown; keys.num_rows()];
        };
        let p = part.read();
        keys.iter()
            .map(|k| match p.index.get(&k.owned()) {
                None => KeyState::Unknown,
                Some((c, r)) if p.chunks[*c as usize].is_tombstone(*r as usize) => {
                    KeyState::Deleted
                }
                Some(_) => KeyState::Live,
            })
            .collect()
    }

    /// Fails on the first key that repeats within `batch`.
    pub fn check_unique(&self, batch: &RecordBatch) -> Result<()> {
        if self.pk.is_empty() {
            return Ok(());
        }
        let keys = self.keys(batch)?;
        let mut seen = std::collections::HashSet::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if !seen.insert(keys.row(i)) {
                return Err(Error::DuplicateKey {
                    table: self.table.clone(),
                    key: self.render_key(batch, i),
                });
            }
        }
        Ok(())
    }

    /// Applies a logged change (live after the WAL append, and at recovery). The change was
    /// validated before it was logged.
    pub fn apply(&self, entry: &crate::wal::WalEntry) -> Result<usize> {
        use crate::wal::WalKind;
        let n = match entry.kind {
            WalKind::Insert | WalKind::Update => {
                self.upsert(&entry.partition, &entry.batch, entry.first_seq, false)?
            }
            WalKind::Delete => self.delete_keys(&entry.partition, &entry.batch, entry.first_seq)?,
            WalKind::Replace => {
                self.clear_partition(&entry.partition);
                self.upsert(&entry.partition, &entry.batch, entry.first_seq, false)?
            }
        };
        self.min_seq.fetch_min(entry.first_seq, Ordering::AcqRel);
        self.max_seq.fetch_max(entry.last_seq(), Ordering::AcqRel);
        Ok(n)
    }

    /// Writes new versions (rows, or tombstones where `batch` has `_deleted = true` or
    /// `all_deleted`), numbered from `first_seq`, retiring this generation's older versions.
    /// Returns the rows (not tombstones) written.
    fn upsert(
        &self,
        partition: &str,
        batch: &RecordBatch,
        first_seq: u64,
        all_deleted: bool,
    ) -> Result<usize> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let part = self.partition(partition);
        let mut p = part.write();
        if self.pk.is_empty() {
            self.append(&mut p, batch, None, first_seq, all_deleted)?;
            return Ok(batch.num_rows());
        }
        let keys = self.keys(batch)?;
        let written = self.append(&mut p, batch, Some(&keys), first_seq, all_deleted)?;
        self.maybe_reclaim(&mut p)?;
        Ok(written)
    }

    /// Deletes the keys of `keys_batch` (user-column layout; only key columns are read): as
    /// tombstones when older layers may hold them, else by dropping them.
    fn delete_keys(
        &self,
        partition: &str,
        keys_batch: &RecordBatch,
        first_seq: u64,
    ) -> Result<usize> {
        if self.keep_tombstones {
            self.upsert(partition, keys_batch, first_seq, true)?;
            return Ok(keys_batch.num_rows());
        }
        let keys = self.keys(keys_batch)?;
        let part = self.partition(partition);
        let mut p = part.write();
        let mut n = 0;
        for i in 0..keys_batch.num_rows() {
            if let Some((c, r)) = p.index.remove(&keys.row(i).owned()) {
                p.chunks[c as usize].live[r as usize] = false;
                p.dead += 1;
                n += 1;
            }
        }
        self.maybe_reclaim(&mut p)?;
        Ok(n)
    }

    fn clear_partition(&self, partition: &str) {
        let part = self.partition(partition);
        let mut p = part.write();
        let old = std::mem::take(&mut *p);
        self.accounting
            .sub(old.chunks.iter().map(|c| c.bytes).sum());
    }

    /// Number of live rows in `partition` of this generation.
    pub fn row_count(&self, partition: &str) -> usize {
        self.partitions.read().get(partition).map_or(0, |p| {
            let p = p.read();
            if self.pk.is_empty() {
                p.chunks.iter().map(|c| c.batch.num_rows()).sum()
            } else {
                p.index.len() - p.tombstones
            }
        })
    }

    /// Bytes held by this generation.
    pub fn bytes(&self) -> usize {
        self.partitions
            .read()
            .values()
            .map(|p| p.read().chunks.iter().map(|c| c.bytes).sum::<usize>())
            .sum()
    }

    /// Drops chunks of an append-only table whose newest row committed before `cutoff_ms`.
    /// Only the partition being written is touched, so a write never locks other users' rows.
    /// Keyed tables are left alone (their index points into chunks).
    pub fn expire(&self, partition: &str, cutoff_ms: i64) {
        if !self.pk.is_empty() {
            return;
        }
        let Some(part) = self.partitions.read().get(partition).cloned() else {
            return;
        };
        let mut p = part.write();
        let mut freed = 0;
        p.chunks.retain(|c| {
            let keep = c.committed_at_ms >= cutoff_ms;
            if !keep {
                freed += c.bytes;
            }
            keep
        });
        self.accounting.sub(freed);
    }

    /// The live rows of `partition`, shaped as `schema` (columns matched by name, in the table's
    /// current layout). Columns added after a chunk was written read as NULL.
    pub fn snapshot(&self, partition: &str, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        self.snapshot_since(partition, schema, i64::MIN, false)
    }

    /// As [`TableBuffer::snapshot`], skipping chunks whose newest row committed before
    /// `cutoff_ms` (STREAM TTL). With `tombstones`, the newest version of every key is returned,
    /// tombstones included (`_deleted` tells them apart), for merging with older layers.
    pub fn snapshot_since(
        &self,
        partition: &str,
        schema: &SchemaRef,
        cutoff_ms: i64,
        tombstones: bool,
    ) -> Result<Vec<RecordBatch>> {
        let Some(part) = self.partitions.read().get(partition).cloned() else {
            return Ok(Vec::new());
        };
        let p = part.read();
        let mut out = Vec::with_capacity(p.chunks.len());
        for chunk in p.chunks.iter().filter(|c| c.committed_at_ms >= cutoff_ms) {
            let drop_tombstones = !tombstones && chunk.has_tombstones;
            let rows = if chunk.live.iter().all(|l| *l) && !drop_tombstones {
                chunk.batch.clone()
            } else {
                let mut mask = live_mask(&chunk.live);
                if drop_tombstones && let Some(d) = deleted_flags(&chunk.batch) {
                    let not_deleted = arrow::compute::not(d).map_err(|e| self.arrow_err(e))?;
                    mask =
                        arrow::compute::and(&mask, &not_deleted).map_err(|e| self.arrow_err(e))?;
                }
                filter_record_batch(&chunk.batch, &mask).map_err(|e| self.arrow_err(e))?
            };
            if rows.num_rows() > 0 {
                out.push(self.conform(rows, schema)?);
            }
        }
        Ok(out)
    }

    /// The newest version of every key of `partition` (tombstones included), shaped as
    /// `schema`, each batch with the commit time of its chunk: what a flush writes.
    pub fn snapshot_for_flush(
        &self,
        partition: &str,
        schema: &SchemaRef,
    ) -> Result<Vec<(RecordBatch, i64)>> {
        let Some(part) = self.partitions.read().get(partition).cloned() else {
            return Ok(Vec::new());
        };
        let p = part.read();
        let mut out = Vec::with_capacity(p.chunks.len());
        for chunk in &p.chunks {
            let rows = filter_record_batch(&chunk.batch, &live_mask(&chunk.live))
                .map_err(|e| self.arrow_err(e))?;
            if rows.num_rows() > 0 {
                out.push((self.conform(rows, schema)?, chunk.committed_at_ms));
            }
        }
        Ok(out)
    }

    /// Records that a commit numbered `>= seq` is under way in this generation, before its
    /// number is reserved, so WAL truncation never passes it.
    pub fn note_min_seq(&self, seq: u64) {
        self.min_seq.fetch_min(seq, Ordering::AcqRel);
    }

    /// Pads/reorders `batch` to `schema` by column name.
    fn conform(&self, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        if batch.schema().fields() == schema.fields() {
            return Ok(batch);
        }
        let cols = schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) => Arc::clone(c),
                None => new_null_array(f.data_type(), batch.num_rows()),
            })
            .collect();
        RecordBatch::try_new(Arc::clone(schema), cols).map_err(|e| self.arrow_err(e))
    }

    /// Appends `batch` as one chunk; returns the rows that are not tombstones.
    fn append(
        &self,
        p: &mut Partition,
        batch: &RecordBatch,
        keys: Option<&arrow::row::Rows>,
        first_seq: u64,
        all_deleted: bool,
    ) -> Result<usize> {
        let n = batch.num_rows();
        let seq: ArrayRef = Arc::new(UInt64Array::from_iter_values(
            (0..n as u64).map(|i| first_seq + i),
        ));
        let deleted: BooleanArray = match (all_deleted, deleted_flags(batch)) {
            (true, _) => BooleanArray::from(vec![true; n]),
            (false, Some(d)) => d.clone(),
            (false, None) => BooleanArray::from(vec![false; n]),
        };
        let tombstones = deleted.true_count();
        let mut fields: Vec<Arc<Field>> = Vec::with_capacity(batch.num_columns() + 2);
        let mut cols = Vec::with_capacity(batch.num_columns() + 2);
        for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() != DELETED_COLUMN && f.name() != SEQ_COLUMN {
                fields.push(Arc::clone(f));
                cols.push(Arc::clone(c));
            }
        }
        fields.push(Arc::new(Field::new(SEQ_COLUMN, DataType::UInt64, false)));
        cols.push(seq);
        fields.push(Arc::new(Field::new(
            DELETED_COLUMN,
            DataType::Boolean,
            false,
        )));
        cols.push(Arc::new(deleted));
        let stored = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| self.arrow_err(e))?;
        let now = now_ms();
        let chunk = Chunk::new(stored, now, now);
        let chunk_idx = p.chunks.len() as u32;
        self.accounting.add(chunk.bytes);
        p.chunks.push(chunk);
        if let Some(keys) = keys {
            p.tombstones += tombstones;
            // Retire the previous version of each key (older chunk or earlier in this batch).
            for i in 0..n {
                let at = (chunk_idx, i as u32);
                if let Some((c, r)) = p.index.insert(keys.row(i).owned(), at) {
                    let old = &mut p.chunks[c as usize];
                    let was_tombstone = old.is_tombstone(r as usize);
                    old.live[r as usize] = false;
                    p.dead += 1;
                    if was_tombstone {
                        p.tombstones -= 1;
                    }
                }
            }
        }
        self.merge_small_tail(p)?;
        Ok(n - tombstones)
    }

    /// Merges the trailing run of small chunks into one when it grows past the bound.
    fn merge_small_tail(&self, p: &mut Partition) -> Result<()> {
        let small = p
            .chunks
            .iter()
            .rev()
            .take_while(|c| c.batch.num_rows() < SMALL_CHUNK_ROWS)
            .count();
        if small < MAX_SMALL_CHUNKS {
            return Ok(());
        }
        let start = p.chunks.len() - small;
        if self.pk.is_empty() {
            let tail = &p.chunks[start..];
            let oldest = tail.iter().map(|c| c.oldest_ms).min().unwrap_or(0);
            let newest = tail.iter().map(|c| c.committed_at_ms).max().unwrap_or(0);
            if newest - oldest > STREAM_MERGE_SPAN_MS {
                // Keep TTL precision: merge only the chunks within the span of the newest.
                let keep_from = p
                    .chunks
                    .iter()
                    .rposition(|c| newest - c.oldest_ms > STREAM_MERGE_SPAN_MS);
                let start = keep_from.map_or(start, |i| (i + 1).max(start));
                if p.chunks.len() - start < 2 {
                    return Ok(());
                }
                return self.rewrite_from(p, start);
            }
        }
        self.rewrite_from(p, start)
    }

    /// Drops dead rows once they outnumber the newest versions.
    fn maybe_reclaim(&self, p: &mut Partition) -> Result<()> {
        if p.dead > 1024 && p.dead > p.index.len() {
            self.rewrite_from(p, 0)?;
        }
        Ok(())
    }

    /// Rewrites chunks `start..` as one chunk of their newest versions and re-points the index.
    fn rewrite_from(&self, p: &mut Partition, start: usize) -> Result<()> {
        let tail: Vec<Chunk> = p.chunks.drain(start..).collect();
        let newest = tail.iter().map(|c| c.committed_at_ms).max().unwrap_or(0);
        let oldest = tail.iter().map(|c| c.oldest_ms).min().unwrap_or(0);
        let freed: usize = tail.iter().map(|c| c.bytes).sum();
        let dead_in_tail: usize = tail
            .iter()
            .map(|c| c.live.iter().filter(|l| !**l).count())
            .sum();
        let mut live = Vec::with_capacity(tail.len());
        for c in &tail {
            let b = filter_record_batch(&c.batch, &live_mask(&c.live))
                .map_err(|e| self.arrow_err(e))?;
            if b.num_rows() > 0 {
                live.push(b);
            }
        }
        self.accounting.sub(freed);
        p.dead -= dead_in_tail;
        if live.is_empty() {
            return Ok(());
        }
        // Chunks written before an ADD COLUMN have fewer columns: conform to the widest.
        let widest = live
            .iter()
            .max_by_key(|b| b.num_columns())
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let live = live
            .into_iter()
            .map(|b| self.conform(b, &widest))
            .collect::<Result<Vec<_>>>()?;
        let merged = concat_batches(&widest, &live).map_err(|e| self.arrow_err(e))?;
        let chunk_idx = p.chunks.len() as u32;
        if !self.pk.is_empty() {
            let keys = self.keys(&merged)?;
            for i in 0..merged.num_rows() {
                p.index.insert(keys.row(i).owned(), (chunk_idx, i as u32));
            }
        }
        let chunk = Chunk::new(merged, newest, oldest);
        self.accounting.add(chunk.bytes);
        p.chunks.push(chunk);
        Ok(())
    }
}

impl Drop for TableBuffer {
    fn drop(&mut self) {
        let total: usize = self
            .partitions
            .get_mut()
            .values()
            .map(|p| p.read().chunks.iter().map(|c| c.bytes).sum::<usize>())
            .sum();
        self.accounting.sub(total);
    }
}

#[cfg(test)]
mod tests;
