//! The write buffer: committed rows held as Arrow, per table and partition.
//!
//! A partition is one user's rows of a USER/STREAM table, or all rows of a SHARED table. Each
//! partition keeps its rows as append-only chunks plus a primary-key index that points at the
//! newest live version of each key, so a scan returns exactly one row per key (newest `_seq`
//! wins) and an INSERT of an existing key is refused before anything is written.
//!
//! Rows carry the table's user columns followed by `_seq` (UInt64). Chunks written before an
//! `ALTER TABLE ... ADD COLUMN` are padded with NULLs when read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array, new_null_array};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use parking_lot::RwLock;

use crate::{Error, Result};

/// Name of the hidden commit-sequence column.
pub const SEQ_COLUMN: &str = "_seq";

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

/// One table's buffered rows.
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
    /// One writer at a time per partition, held across validate → WAL fsync → apply so the
    /// log order is the apply order. Bounded like `partitions`.
    writers: parking_lot::Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Append-only chunks: user columns + `_seq`.
    chunks: Vec<Chunk>,
    /// Newest live version of each key: (chunk, row).
    index: HashMap<OwnedRow, (u32, u32)>,
    /// Rows superseded or deleted but still held in chunks.
    dead: usize,
}

#[derive(Debug)]
struct Chunk {
    batch: RecordBatch,
    live: Vec<bool>,
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
        Self {
            batch,
            live,
            bytes,
            committed_at_ms,
            oldest_ms,
        }
    }
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

impl TableBuffer {
    /// A buffer for a table whose user columns are `schema` and whose primary key is `pk`.
    pub fn new(
        table: impl Into<String>,
        schema: &Schema,
        pk: Vec<usize>,
        accounting: Arc<BufferAccounting>,
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
            writers: parking_lot::Mutex::new(HashMap::new()),
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

    fn keys(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self
            .pk
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        self.converter
            .convert_columns(&cols)
            .map_err(|e| self.arrow_err(e))
    }

    fn render_key(&self, batch: &RecordBatch, row: usize) -> String {
        let parts: Vec<String> = self
            .pk
            .iter()
            .map(|i| array_value_to_string(batch.column(*i), row).unwrap_or_else(|_| "?".into()))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The writer lock of `partition` (see the field docs).
    pub fn writer_lock(&self, partition: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.writers.lock().entry(Arc::from(partition)).or_default())
    }

    /// Checks that inserting `batch` into `partition` would succeed (no existing or repeated
    /// key), without writing. Call under the partition's writer lock.
    pub fn check_insert(&self, partition: &str, batch: &RecordBatch) -> Result<()> {
        if self.pk.is_empty() {
            return Ok(());
        }
        let keys = self.keys(batch)?;
        let part = self.partitions.read().get(partition).cloned();
        let p = part.as_ref().map(|p| p.read());
        self.find_duplicate(p.as_deref(), &keys, batch)
    }

    /// Fails on the first key of `batch` that exists in `existing` or repeats within `batch`.
    fn find_duplicate(
        &self,
        existing: Option<&Partition>,
        keys: &arrow::row::Rows,
        batch: &RecordBatch,
    ) -> Result<()> {
        let mut seen = std::collections::HashSet::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let k = keys.row(i);
            let exists = existing.is_some_and(|p| p.index.contains_key(&k.owned()));
            if exists || !seen.insert(k) {
                return Err(Error::DuplicateKey {
                    table: self.table.clone(),
                    key: self.render_key(batch, i),
                });
            }
        }
        Ok(())
    }

    /// Checks that `batch` repeats no key (for a partition replacement).
    pub fn check_unique(&self, batch: &RecordBatch) -> Result<()> {
        if self.pk.is_empty() {
            return Ok(());
        }
        let keys = self.keys(batch)?;
        self.find_duplicate(None, &keys, batch)
    }

    /// Inserts new rows (user columns only) into `partition`, numbering them from `first_seq`.
    /// Fails without writing anything if any key exists already or repeats within `batch`.
    pub fn insert(&self, partition: &str, batch: &RecordBatch, first_seq: u64) -> Result<usize> {
        let part = self.partition(partition);
        if self.pk.is_empty() {
            let mut p = part.write();
            self.append(&mut p, batch, None, first_seq)?;
            return Ok(batch.num_rows());
        }
        let keys = self.keys(batch)?;
        let mut p = part.write();
        self.find_duplicate(Some(&p), &keys, batch)?;
        self.append(&mut p, batch, Some(&keys), first_seq)?;
        Ok(batch.num_rows())
    }

    /// Writes new versions of existing rows (full rows, user columns only). Keys that no
    /// longer exist (deleted concurrently) are skipped. Returns the rows written.
    pub fn update(&self, partition: &str, batch: &RecordBatch, first_seq: u64) -> Result<usize> {
        let keys = self.keys(batch)?;
        let part = self.partition(partition);
        let mut p = part.write();
        // One lookup per row: retire the current version, remember which rows still exist.
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let current = p.index.get(&keys.row(i).owned()).copied();
            if let Some((c, r)) = current {
                p.chunks[c as usize].live[r as usize] = false;
                p.dead += 1;
            }
            keep.push(current.is_some());
        }
        let written = if keep.iter().all(|k| *k) {
            self.append(&mut p, batch, Some(&keys), first_seq)?;
            batch.num_rows()
        } else {
            let kept = filter_record_batch(batch, &BooleanArray::from(keep))
                .map_err(|e| self.arrow_err(e))?;
            let kept_keys = self.keys(&kept)?;
            self.append(&mut p, &kept, Some(&kept_keys), first_seq)?;
            kept.num_rows()
        };
        self.maybe_reclaim(&mut p)?;
        Ok(written)
    }

    /// Deletes the rows whose primary keys are in `keys_batch` (user-column layout, only the
    /// key columns are read). Returns the rows actually deleted.
    pub fn delete(&self, partition: &str, keys_batch: &RecordBatch) -> Result<usize> {
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

    /// Replaces the contents of `partition` with `batch` atomically: if `batch` repeats a key,
    /// nothing changes. Returns the rows written.
    pub fn replace_partition(
        &self,
        partition: &str,
        batch: &RecordBatch,
        first_seq: u64,
    ) -> Result<usize> {
        let mut fresh = Partition::default();
        if self.pk.is_empty() {
            self.append(&mut fresh, batch, None, first_seq)?;
        } else {
            let keys = self.keys(batch)?;
            self.find_duplicate(None, &keys, batch)?;
            self.append(&mut fresh, batch, Some(&keys), first_seq)?;
        }
        let part = self.partition(partition);
        let mut p = part.write();
        let old = std::mem::replace(&mut *p, fresh);
        self.accounting
            .sub(old.chunks.iter().map(|c| c.bytes).sum());
        Ok(batch.num_rows())
    }

    /// Number of live rows in `partition`.
    pub fn row_count(&self, partition: &str) -> usize {
        self.partitions.read().get(partition).map_or(0, |p| {
            let p = p.read();
            if self.pk.is_empty() {
                p.chunks.iter().map(|c| c.batch.num_rows()).sum()
            } else {
                p.index.len()
            }
        })
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

    /// The live rows of `partition`, shaped as `schema` (user columns + `_seq`, in the table's
    /// current layout). Columns added after a chunk was written read as NULL.
    pub fn snapshot(&self, partition: &str, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        self.snapshot_since(partition, schema, i64::MIN)
    }

    /// As [`TableBuffer::snapshot`], skipping chunks whose newest row committed before
    /// `cutoff_ms` (STREAM TTL).
    pub fn snapshot_since(
        &self,
        partition: &str,
        schema: &SchemaRef,
        cutoff_ms: i64,
    ) -> Result<Vec<RecordBatch>> {
        let Some(part) = self.partitions.read().get(partition).cloned() else {
            return Ok(Vec::new());
        };
        let p = part.read();
        let mut out = Vec::with_capacity(p.chunks.len());
        for chunk in p.chunks.iter().filter(|c| c.committed_at_ms >= cutoff_ms) {
            let live = if chunk.live.iter().all(|l| *l) {
                chunk.batch.clone()
            } else {
                filter_record_batch(&chunk.batch, &live_mask(&chunk.live))
                    .map_err(|e| self.arrow_err(e))?
            };
            if live.num_rows() > 0 {
                out.push(self.conform(live, schema)?);
            }
        }
        Ok(out)
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

    fn append(
        &self,
        p: &mut Partition,
        batch: &RecordBatch,
        keys: Option<&arrow::row::Rows>,
        first_seq: u64,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let seq: ArrayRef = Arc::new(UInt64Array::from_iter_values(
            (0..batch.num_rows() as u64).map(|i| first_seq + i),
        ));
        let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(SEQ_COLUMN, DataType::UInt64, false)));
        let mut cols = batch.columns().to_vec();
        cols.push(seq);
        let stored = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| self.arrow_err(e))?;
        let chunk_idx = p.chunks.len() as u32;
        if let Some(keys) = keys {
            for i in 0..batch.num_rows() {
                p.index.insert(keys.row(i).owned(), (chunk_idx, i as u32));
            }
        }
        let now = now_ms();
        let chunk = Chunk::new(stored, now, now);
        self.accounting.add(chunk.bytes);
        p.chunks.push(chunk);
        self.merge_small_tail(p)
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

    /// Drops dead rows once they outnumber live ones.
    fn maybe_reclaim(&self, p: &mut Partition) -> Result<()> {
        if p.dead > 1024 && p.dead > p.index.len() {
            self.rewrite_from(p, 0)?;
        }
        Ok(())
    }

    /// Rewrites chunks `start..` as one chunk of their live rows and re-points the index.
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
