//! Flush, compaction, expiry, WAL truncation and write backpressure.
//!
//! - **Flush** freezes a table's active generation, writes one Parquet file per bucket (rows
//!   sorted by `_user`, key, `_seq`; key columns carry bloom filters), commits each bucket's
//!   manifest with the freeze point as `flushed_seq`, swaps the files in for the generation
//!   atomically for readers, then truncates the WAL below the oldest unflushed `_seq`.
//! - **Compaction** merges a bucket's files into one, keeping the newest version of each key
//!   and dropping tombstones (nothing older than a bucket's files exists).
//! - **Expiry** removes STREAM files whose newest row is past the TTL.
//! - **Backpressure**: a writer finding the write buffers over the hard limit wakes the
//!   maintenance task and waits until a flush brings them under it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use futures::StreamExt;
use kalam_storage::buffer::SEQ_COLUMN;
use kalam_storage::manifest::{BucketState, FileMeta, ManifestEntry};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;

use super::Engine;
use crate::catalog::{TableKind, TableRuntime, now_ms};
use crate::provider::merge::{TIME_COLUMN, USER_COLUMN, dedupe, file_stream, sort_ordering};
use crate::stats::Stats;
use crate::{Error, Result};

/// Rows per Parquet row group: small enough that a user's scan prunes to few rows.
const ROW_GROUP_ROWS: usize = 16 * 1024;
/// Rows per data page (page-index pruning granularity).
const PAGE_ROWS: usize = 2 * 1024;
/// A bucket with more files than this is compacted.
const COMPACT_FILES: usize = 8;
/// How often the maintenance task looks at the tables.
const TICK: Duration = Duration::from_millis(500);

/// What a flush or compaction did.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobReport {
    /// Row versions written.
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

fn writer_props(rt: &TableRuntime) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Page);
    for k in &rt.def.primary_key {
        b = b.set_column_bloom_filter_enabled(ColumnPath::from(k.as_str()), true);
    }
    b.build()
}

/// Tracks the statistics of rows as they are written.
#[derive(Default)]
struct FileStats {
    rows: u64,
    min_seq: u64,
    max_seq: u64,
    min_time: i64,
    max_time: i64,
    partitions: u64,
    last_user: Option<String>,
}

impl FileStats {
    fn new() -> Self {
        Self {
            min_seq: u64::MAX,
            min_time: i64::MAX,
            max_time: i64::MIN,
            ..Self::default()
        }
    }

    fn observe(&mut self, b: &RecordBatch) {
        let n = b.num_rows();
        if n == 0 {
            return;
        }
        self.rows += n as u64;
        if let Some(seq) = b
            .column_by_name(SEQ_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        {
            for v in seq.values().iter() {
                self.min_seq = self.min_seq.min(*v);
                self.max_seq = self.max_seq.max(*v);
            }
        }
        if let Some(t) = b
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        {
            for v in t.values().iter() {
                self.min_time = self.min_time.min(*v);
                self.max_time = self.max_time.max(*v);
            }
        }
        if let Some(u) = b
            .column_by_name(USER_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        {
            for v in u.iter().flatten() {
                if self.last_user.as_deref() != Some(v) {
                    self.partitions += 1;
                    self.last_user = Some(v.to_string());
                }
            }
        }
    }

    fn meta(&self, path: String, bytes: u64) -> FileMeta {
        FileMeta {
            path,
            rows: self.rows,
            bytes,
            min_seq: self.min_seq,
            max_seq: self.max_seq,
            min_time_ms: self.min_time,
            max_time_ms: self.max_time,
            partitions: self.partitions,
        }
    }
}

fn parquet_err(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("writing {path}: {e}"))
}

impl Engine {
    /// A fresh object path for a file of `bucket`.
    fn data_path(rt: &TableRuntime, bucket: &str, seq: u64) -> String {
        format!(
            "tables/{}/{bucket}/data/{seq:020}-{:016x}.parquet",
            rt.def.id,
            rand::random::<u64>()
        )
    }

    async fn object_size(&self, path: &str) -> Result<u64> {
        let meta = self
            .store
            .head(&Path::from(path))
            .await
            .map_err(|e| parquet_err(path, e))?;
        Ok(meta.size)
    }

    /// Flushes `rt`'s buffered rows to Parquet (see the module docs). Returns what it wrote;
    /// nothing when the buffer is empty.
    pub async fn flush_table(&self, rt: &Arc<TableRuntime>) -> Result<JobReport> {
        let store = Arc::clone(&rt.store);
        let _one_at_a_time = store.maintenance.lock().await;
        // Generations an earlier failed flush left frozen go first, oldest first: a manifest
        // must never record a flush position while older rows of its bucket are only in memory.
        let mut total = JobReport::default();
        let mut pending = store.frozen_oldest_first();
        if let Some(fresh) = store.freeze(|| self.seq.last()).await? {
            pending.push(fresh);
        }
        for (generation, upto) in pending {
            let r = self.flush_generation(rt, &generation, upto).await?;
            total.rows += r.rows;
            total.files += r.files;
            total.bytes += r.bytes;
        }
        self.truncate_wal();
        self.buffer_drained.notify_waiters();
        if total.bytes > 0 {
            release_freed_memory();
        }
        Ok(total)
    }

    async fn flush_generation(
        &self,
        rt: &Arc<TableRuntime>,
        generation: &Arc<crate::table::Generation>,
        upto: u64,
    ) -> Result<JobReport> {
        let job = self
            .stats
            .job_started("flush", &rt.qualified_name(), now_ms());
        match self.write_generation(rt, generation, upto).await {
            Ok((report, states)) => {
                rt.store.finish_flush(&self.store, generation, &states);
                Stats::add(&self.stats.flushes, 1);
                Stats::add(&self.stats.files_written, report.files);
                self.stats.job_finished(
                    &job,
                    true,
                    format!(
                        "rows={} files={} bytes={} flushed_seq={upto}",
                        report.rows, report.files, report.bytes
                    ),
                    now_ms(),
                );
                Ok(report)
            }
            Err(e) => {
                // The generation stays frozen and readable (and in the WAL); the next flush of
                // the table retries it before anything newer.
                self.stats
                    .job_finished(&job, false, e.to_string(), now_ms());
                Err(e)
            }
        }
    }

    /// Writes a frozen generation: one file per bucket, then the bucket's manifest. Buckets a
    /// failed earlier attempt already committed (flushed position at `upto`) are not written
    /// twice.
    async fn write_generation(
        &self,
        rt: &Arc<TableRuntime>,
        generation: &Arc<crate::table::Generation>,
        upto: u64,
    ) -> Result<(JobReport, Vec<(String, BucketState)>)> {
        let mut by_bucket: BTreeMap<String, Vec<Arc<str>>> = BTreeMap::new();
        for p in generation.buf.partition_keys() {
            by_bucket.entry(rt.store.bucket_of(&p)).or_default().push(p);
        }
        let props = writer_props(rt);
        let mut report = JobReport::default();
        let mut states = Vec::with_capacity(by_bucket.len());
        for (bucket, partitions) in by_bucket {
            let manifest = rt.store.manifest(&self.store, &bucket).await?;
            let current = manifest.state().await;
            if current.flushed_seq >= upto {
                states.push((bucket, current));
                continue;
            }
            let mut batches = Vec::new();
            for p in &partitions {
                for (b, at) in generation.buf.snapshot_for_flush(p, &rt.mem_schema)? {
                    batches.push(rt.to_file_batch(&b, p, at)?);
                }
            }
            if batches.is_empty() {
                continue;
            }
            let all = concat_batches(&rt.file_schema, &batches)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let sorted = sort_for_file(rt, &all)?;
            let path = Self::data_path(rt, &bucket, upto);
            let mut stats = FileStats::new();
            stats.observe(&sorted);
            let mut w = AsyncArrowWriter::try_new(
                BufWriter::new(Arc::clone(&self.store), Path::from(path.as_str())),
                Arc::clone(&rt.file_schema),
                Some(props.clone()),
            )
            .map_err(|e| parquet_err(&path, e))?;
            w.write(&sorted).await.map_err(|e| parquet_err(&path, e))?;
            w.close().await.map_err(|e| parquet_err(&path, e))?;
            let bytes = self.object_size(&path).await?;
            let meta = stats.meta(path, bytes);
            report.rows += meta.rows;
            report.files += 1;
            report.bytes += bytes;
            let state = manifest
                .commit(&ManifestEntry {
                    added: vec![meta],
                    removed: Vec::new(),
                    flushed_seq: upto,
                    job: "flush".into(),
                    committed_at_ms: now_ms(),
                })
                .await?;
            states.push((bucket, state));
        }
        Ok((report, states))
    }

    /// Deletes WAL segments every table has flushed past.
    pub(crate) fn truncate_wal(&self) {
        // Read the sequence first: a commit reserving a number after this read notes it in
        // its generation before reserving, so the tables' low-water marks cover it.
        let mut low = self.seq.last() + 1;
        for rt in self.catalog.tables(None) {
            low = low.min(rt.store.low_water());
        }
        if let Err(e) = self.wal.remove_segments_below(low) {
            tracing::warn!(error = %e, "WAL truncation failed; segments are kept");
        }
    }

    /// Compacts `bucket` of `rt` into one file if it has more than [`COMPACT_FILES`] files
    /// (or any, with `force`).
    pub async fn compact_bucket(
        &self,
        rt: &Arc<TableRuntime>,
        bucket: &str,
        force: bool,
    ) -> Result<JobReport> {
        let store = Arc::clone(&rt.store);
        let _one_at_a_time = store.maintenance.lock().await;
        let Some((_, files)) = store.buckets().into_iter().find(|(b, _)| b == bucket) else {
            return Ok(JobReport::default());
        };
        if files.files.len() < 2 || (!force && files.files.len() <= COMPACT_FILES) {
            return Ok(JobReport::default());
        }
        let job = self
            .stats
            .job_started("compact", &rt.qualified_name(), now_ms());
        let result = self.rewrite_bucket(rt, bucket, &files).await;
        match &result {
            Ok(r) => {
                Stats::add(&self.stats.compactions, 1);
                Stats::add(&self.stats.files_written, r.files);
                self.stats.job_finished(
                    &job,
                    true,
                    format!(
                        "merged {} files into rows={} bytes={}",
                        files.files.len(),
                        r.rows,
                        r.bytes
                    ),
                    now_ms(),
                );
            }
            Err(e) => self
                .stats
                .job_finished(&job, false, e.to_string(), now_ms()),
        }
        result
    }

    async fn rewrite_bucket(
        &self,
        rt: &Arc<TableRuntime>,
        bucket: &str,
        files: &crate::table::BucketFiles,
    ) -> Result<JobReport> {
        let ctx = self.session.task_ctx();
        let mut streams = Vec::with_capacity(files.files.len());
        for f in &files.files {
            streams.push(
                file_stream(f, &rt.file_schema, None, None, &rt.file_schema, &ctx)
                    .map_err(Error::from_datafusion)?,
            );
        }
        let user = rt
            .file_schema
            .index_of(USER_COLUMN)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut key: Vec<usize> = vec![user];
        key.extend(rt.pk_indices.iter().copied());
        let ordering = sort_ordering(&rt.file_schema, &key).map_err(Error::from_datafusion)?;
        let metrics = ExecutionPlanMetricsSet::new();
        let reservation =
            datafusion::execution::memory_pool::MemoryConsumer::new("compaction merge")
                .register(ctx.memory_pool());
        let merged = StreamingMergeBuilder::new()
            .with_streams(streams)
            .with_schema(Arc::clone(&rt.file_schema))
            .with_expressions(&ordering)
            .with_metrics(BaselineMetrics::new(&metrics, 0))
            .with_batch_size(ctx.session_config().batch_size())
            .with_reservation(reservation)
            .build()
            .map_err(Error::from_datafusion)?;
        let mut out = dedupe(merged, &key, &rt.file_schema).map_err(Error::from_datafusion)?;
        let path = Self::data_path(rt, bucket, files.files[0].meta.max_seq);
        let mut w = AsyncArrowWriter::try_new(
            BufWriter::new(Arc::clone(&self.store), Path::from(path.as_str())),
            Arc::clone(&rt.file_schema),
            Some(writer_props(rt)),
        )
        .map_err(|e| parquet_err(&path, e))?;
        let mut stats = FileStats::new();
        while let Some(b) = out.next().await {
            let b = b.map_err(Error::from_datafusion)?;
            stats.observe(&b);
            w.write(&b).await.map_err(|e| parquet_err(&path, e))?;
        }
        w.close().await.map_err(|e| parquet_err(&path, e))?;
        let bytes = self.object_size(&path).await?;
        let added = if stats.rows > 0 {
            vec![stats.meta(path.clone(), bytes)]
        } else {
            // Everything was deleted: drop the empty file.
            let _ = self.store.delete(&Path::from(path.as_str())).await;
            Vec::new()
        };
        let report = JobReport {
            rows: stats.rows,
            files: added.len() as u64,
            bytes: if added.is_empty() { 0 } else { bytes },
        };
        let manifest = rt.store.manifest(&self.store, bucket).await?;
        let state = manifest
            .commit(&ManifestEntry {
                added,
                removed: files.files.iter().map(|f| f.meta.path.clone()).collect(),
                flushed_seq: files.flushed_seq,
                job: "compact".into(),
                committed_at_ms: now_ms(),
            })
            .await?;
        rt.store.install_bucket(&self.store, bucket, &state);
        Ok(report)
    }

    /// Removes STREAM files whose newest row is past the TTL.
    async fn expire_stream_files(&self, rt: &Arc<TableRuntime>) -> Result<()> {
        let Some(ttl) = rt.def.ttl_seconds else {
            return Ok(());
        };
        let cutoff = now_ms() - (ttl as i64) * 1000;
        for (bucket, files) in rt.store.buckets() {
            let expired: Vec<String> = files
                .files
                .iter()
                .filter(|f| f.meta.max_time_ms < cutoff)
                .map(|f| f.meta.path.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            let _one_at_a_time = rt.store.maintenance.lock().await;
            let job = self
                .stats
                .job_started("expire", &rt.qualified_name(), now_ms());
            let manifest = rt.store.manifest(&self.store, &bucket).await?;
            let state = manifest
                .commit(&ManifestEntry {
                    removed: expired.clone(),
                    flushed_seq: files.flushed_seq,
                    job: "expire".into(),
                    committed_at_ms: now_ms(),
                    ..Default::default()
                })
                .await;
            match state {
                Ok(state) => {
                    rt.store.install_bucket(&self.store, &bucket, &state);
                    self.stats.job_finished(
                        &job,
                        true,
                        format!("removed {} files", expired.len()),
                        now_ms(),
                    );
                }
                Err(e) => {
                    self.stats
                        .job_finished(&job, false, e.to_string(), now_ms());
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Waits while the write buffers are over their hard limit (never fails the writer).
    pub(crate) async fn wait_for_buffer_room(&self) {
        let limit = self.write_buffer_limit;
        if self.catalog.buffer_bytes() <= limit {
            return;
        }
        Stats::add(&self.stats.write_stalls, 1);
        let mut waited = Duration::ZERO;
        while self.catalog.buffer_bytes() > limit {
            self.flush_wanted.notify_one();
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.buffer_drained.notified())
                    .await;
            waited += Duration::from_millis(100);
            if waited.as_secs() >= 10 && waited.as_millis() % 10_000 < 100 {
                tracing::warn!(
                    used = self.catalog.buffer_bytes(),
                    limit,
                    "writers waiting for the write buffer to drain"
                );
            }
        }
    }

    /// One pass of the flush / compaction / expiry policy.
    pub async fn maintain_once(&self) {
        let limit = self.write_buffer_limit;
        let tables = self.catalog.tables(None);
        let over = self.catalog.buffer_bytes() > limit / 2;
        // Biggest buffers first, so pressure is relieved fastest.
        let mut by_size: Vec<(usize, Arc<TableRuntime>)> = tables
            .iter()
            .map(|rt| (rt.store.buffered_bytes(), Arc::clone(rt)))
            .collect();
        by_size.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (bytes, rt) in &by_size {
            let active = rt.store.active();
            let due = !active.buf.is_empty()
                && (*bytes > limit / 8
                    || active.created.elapsed() > self.flush_age
                    || (over && self.catalog.buffer_bytes() > limit / 2));
            if due && let Err(e) = self.flush_table(rt).await {
                tracing::warn!(table = %rt.qualified_name(), error = %e, "flush failed");
            }
        }
        for rt in &tables {
            if rt.def.kind == TableKind::Stream {
                if let Err(e) = self.expire_stream_files(rt).await {
                    tracing::warn!(table = %rt.qualified_name(), error = %e, "expiry failed");
                }
                continue;
            }
            for (bucket, files) in rt.store.buckets() {
                if files.files.len() > COMPACT_FILES
                    && let Err(e) = self.compact_bucket(rt, &bucket, false).await
                {
                    tracing::warn!(table = %rt.qualified_name(), %bucket, error = %e, "compaction failed");
                }
            }
        }
    }

    /// Runs the maintenance policy until the engine is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(engine) = weak.upgrade() else { return };
                let _ = tokio::time::timeout(TICK, engine.flush_wanted.notified()).await;
                engine.maintain_once().await;
            }
        });
    }
}

/// Returns memory freed by a flushed generation to the operating system: glibc keeps freed
/// heap pages otherwise, and a server's RSS would stay at its largest buffer.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sorts a flush batch by (`_user`, key, `_seq`) (append-only: `_user`, `_seq`).
fn sort_for_file(rt: &TableRuntime, b: &RecordBatch) -> Result<RecordBatch> {
    let s = &rt.file_schema;
    let idx = |n: &str| s.index_of(n).map_err(|e| Error::Internal(e.to_string()));
    let mut cols = vec![idx(USER_COLUMN)?];
    cols.extend(rt.pk_indices.iter().copied());
    cols.push(idx(SEQ_COLUMN)?);
    let sort: Vec<SortColumn> = cols
        .iter()
        .map(|i| SortColumn {
            values: Arc::clone(b.column(*i)) as ArrayRef,
            options: Some(SortOptions::default()),
        })
        .collect();
    let order = lexsort_to_indices(&sort, None).map_err(|e| Error::Internal(e.to_string()))?;
    take_record_batch(b, &order).map_err(|e| Error::Internal(e.to_string()))
}
