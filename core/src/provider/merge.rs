//! Merge-on-read of one partition: buffer generations ∪ Parquet files, newest `_seq` per key.
//!
//! [`LayeredScanExec`] is a leaf for the optimizer (nothing can be pushed between the layers and
//! the merge by mistake). At execution it opens one stream per Parquet file of the partition's
//! bucket (pruned to the partition's row groups by `_user` statistics, and to the key filter's
//! by statistics and bloom filters), one stream over the buffered rows, merges them by
//! (key, `_seq`) and keeps the last version of each key unless it is a tombstone. Every input is
//! sorted by (key, `_seq`), so the merge streams: memory stays one batch per input.

use std::fmt;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::arrow::compute::SortOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, Partitioning, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use kalam_storage::buffer::{SEQ_COLUMN, deleted_flags};

use crate::table::FileRef;

/// Name of the partition column in Parquet files.
pub const USER_COLUMN: &str = "_user";
/// Name of the commit-time column in Parquet files (ms since the epoch).
pub const TIME_COLUMN: &str = "_ts";

/// The object-store URL the shared runtime knows the table store by.
pub fn store_url() -> ObjectStoreUrl {
    // A constant, valid URL: parsing cannot fail.
    ObjectStoreUrl::parse("kalam://store").unwrap_or_else(|_| ObjectStoreUrl::local_filesystem())
}

/// Everything needed to read one partition's layers.
#[derive(Debug, Clone)]
pub struct LayeredInput {
    /// User columns + `_seq` + `_deleted` (the merge's schema).
    pub mem_schema: SchemaRef,
    /// `mem_schema` + `_ts` + `_user` (the Parquet files' schema).
    pub file_schema: SchemaRef,
    /// Positions of the primary-key columns (empty: append-only, no merge).
    pub pk: Vec<usize>,
    /// Buffered rows shaped as `mem_schema`: newest version per key per generation,
    /// tombstones included.
    pub mem: Vec<RecordBatch>,
    /// Files of the partition's bucket (held so they are not deleted while read).
    pub files: Vec<Arc<FileRef>>,
    /// Row filter over `file_schema` (`_user = p`, TTL).
    pub row_filter: Arc<dyn PhysicalExpr>,
    /// Pruning predicate over `file_schema` (row filter AND key filters).
    pub prune: Arc<dyn PhysicalExpr>,
    /// Output columns, as indices into `mem_schema`.
    pub projection: Vec<usize>,
}

/// The merge-on-read scan (see the module docs).
#[derive(Debug)]
pub struct LayeredScanExec {
    input: LayeredInput,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl LayeredScanExec {
    /// A scan of `input`, producing its projection.
    pub fn try_new(mut input: LayeredInput) -> DfResult<Self> {
        let schema = Arc::new(input.mem_schema.project(&input.projection)?);
        if !input.pk.is_empty() {
            input.mem = sort_by_key(&input.mem_schema, &input.pk, &input.mem)?;
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            schema,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

/// The merge order (key columns, then `_seq`, ascending) over `schema`.
pub fn sort_ordering(schema: &SchemaRef, key: &[usize]) -> DfResult<LexOrdering> {
    let seq = schema.index_of(SEQ_COLUMN)?;
    let exprs = key.iter().chain(std::iter::once(&seq)).map(|i| {
        PhysicalSortExpr::new(
            Arc::new(Column::new(schema.field(*i).name(), *i)),
            SortOptions::default(),
        )
    });
    LexOrdering::new(exprs).ok_or_else(|| DataFusionError::Internal("empty merge ordering".into()))
}

/// One Parquet file read in its stored order: scan (pruned by `prune`) → `row_filter` → the
/// first `out.len()` columns (the file schema starts with the merge schema's columns).
pub fn file_stream(
    file: &FileRef,
    file_schema: &SchemaRef,
    prune: Option<&Arc<dyn PhysicalExpr>>,
    row_filter: Option<&Arc<dyn PhysicalExpr>>,
    out: &SchemaRef,
    ctx: &Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
    // Footers and page indexes come from the runtime's file-metadata cache (an LRU bounded by
    // `metadata_cache_limit`, DataFusion's default 50 MiB), so a point query on a file read
    // before fetches only the pages it needs. Data files are immutable, so entries never go
    // stale; those of deleted files age out.
    let store = ctx.runtime_env().object_store(store_url())?;
    let metadata_cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
    let mut source = ParquetSource::new(Arc::clone(file_schema)).with_parquet_file_reader_factory(
        Arc::new(CachedParquetFileReaderFactory::new(store, metadata_cache)),
    );
    if let Some(p) = prune {
        source = source.with_predicate(Arc::clone(p));
    }
    let config = FileScanConfigBuilder::new(store_url(), Arc::new(source))
        .with_file(PartitionedFile::new(
            file.meta.path.clone(),
            file.meta.bytes,
        ))
        .build();
    let mut plan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
    if let Some(f) = row_filter {
        plan = Arc::new(FilterExec::try_new(Arc::clone(f), plan)?);
    }
    if out.fields().len() != file_schema.fields().len() {
        let cols = out
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>,
                    f.name().clone(),
                )
            })
            .collect::<Vec<_>>();
        plan = Arc::new(ProjectionExec::try_new(cols, plan)?);
    }
    plan.execute(0, Arc::clone(ctx))
}

/// Sorts `batches` by (key, `_seq`) into one batch.
fn sort_by_key(
    schema: &SchemaRef,
    pk: &[usize],
    batches: &[RecordBatch],
) -> DfResult<Vec<RecordBatch>> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let all = concat_batches(schema, batches)?;
    let seq = schema.index_of(SEQ_COLUMN)?;
    let cols: Vec<SortColumn> = pk
        .iter()
        .chain(std::iter::once(&seq))
        .map(|i| SortColumn {
            values: Arc::clone(all.column(*i)),
            options: Some(SortOptions::default()),
        })
        .collect();
    let idx = lexsort_to_indices(&cols, None)?;
    Ok(vec![take_record_batch(&all, &idx)?])
}

impl DisplayAs for LayeredScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LayeredScanExec: buffered_batches={}, files={}, keyed={}",
            self.input.mem.len(),
            self.input.files.len(),
            !self.input.pk.is_empty()
        )
    }
}

impl ExecutionPlan for LayeredScanExec {
    fn name(&self) -> &'static str {
        "LayeredScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LayeredScanExec has one partition, asked for {partition}"
            )));
        }
        let mem_schema = Arc::clone(&self.input.mem_schema);
        let mut streams: Vec<SendableRecordBatchStream> = Vec::new();
        if !self.input.mem.is_empty() {
            streams.push(Box::pin(MemoryStream::try_new(
                self.input.mem.clone(),
                Arc::clone(&mem_schema),
                None,
            )?));
        }
        for f in &self.input.files {
            streams.push(file_stream(
                f,
                &self.input.file_schema,
                Some(&self.input.prune),
                Some(&self.input.row_filter),
                &mem_schema,
                &ctx,
            )?);
        }
        let projection = self.input.projection.clone();
        let out_schema = Arc::clone(&self.schema);
        let keep_files = self.input.files.clone();
        if streams.is_empty() {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                out_schema,
                futures::stream::empty(),
            )));
        }
        let merged: SendableRecordBatchStream = if self.input.pk.is_empty() {
            // Append-only: no versions to resolve, read the layers one after another.
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&mem_schema),
                futures::stream::iter(streams).flatten(),
            ))
        } else if streams.len() == 1 {
            dedupe(streams.remove(0), &self.input.pk, &mem_schema)?
        } else {
            let ordering = sort_ordering(&mem_schema, &self.input.pk)?;
            let reservation =
                datafusion::execution::memory_pool::MemoryConsumer::new("LayeredScanExec merge")
                    .register(ctx.memory_pool());
            let merged = StreamingMergeBuilder::new()
                .with_streams(streams)
                .with_schema(Arc::clone(&mem_schema))
                .with_expressions(&ordering)
                .with_metrics(BaselineMetrics::new(&self.metrics, partition))
                .with_batch_size(ctx.session_config().batch_size())
                .with_reservation(reservation)
                .build()?;
            dedupe(merged, &self.input.pk, &mem_schema)?
        };
        let projected = merged.map(move |b| {
            // Files stay alive (not deleted by a compaction) until the stream is done.
            let _files = &keep_files;
            b.and_then(|b| b.project(&projection).map_err(DataFusionError::from))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            out_schema, projected,
        )))
    }
}

/// Keeps the last (newest) version of each run of equal keys, dropping tombstones. `input` is
/// sorted by (key, `_seq`).
pub fn dedupe(
    input: SendableRecordBatchStream,
    pk: &[usize],
    schema: &SchemaRef,
) -> DfResult<SendableRecordBatchStream> {
    let converter = RowConverter::new(
        pk.iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect(),
    )?;
    let state = DedupeState {
        input,
        converter,
        pk: pk.to_vec(),
        schema: Arc::clone(schema),
        pending: None,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.input.next().await {
                Some(Ok(b)) => match st.push(&b) {
                    Ok(Some(out)) => return Some((Ok(out), st)),
                    Ok(None) => continue,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                },
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let last = st.pending.take().and_then(|(row, _)| live(&row));
                    return last.map(|b| (Ok(b), st));
                }
            }
        }
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        Arc::clone(schema),
        stream,
    )))
}

struct DedupeState {
    input: SendableRecordBatchStream,
    converter: RowConverter,
    pk: Vec<usize>,
    schema: SchemaRef,
    /// The last row seen: it wins unless the next row has the same key.
    pending: Option<(RecordBatch, OwnedRow)>,
    done: bool,
}

/// `row` (one row) unless it is a tombstone.
fn live(row: &RecordBatch) -> Option<RecordBatch> {
    match deleted_flags(row) {
        Some(d) if d.value(0) => None,
        _ => Some(row.clone()),
    }
}

impl DedupeState {
    fn push(&mut self, b: &RecordBatch) -> DfResult<Option<RecordBatch>> {
        let n = b.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let cols: Vec<_> = self.pk.iter().map(|i| Arc::clone(b.column(*i))).collect();
        let keys = self.converter.convert_columns(&cols)?;
        let mut out = Vec::with_capacity(2);
        if let Some((row, key)) = self.pending.take()
            && key.row() != keys.row(0)
            && let Some(r) = live(&row)
        {
            out.push(r);
        }
        let deleted = deleted_flags(b);
        let keep: BooleanArray = (0..n)
            .map(|i| {
                let last_of_run = i + 1 < n && keys.row(i) != keys.row(i + 1);
                Some(last_of_run && !deleted.is_some_and(|d| d.value(i)))
            })
            .collect();
        self.pending = Some((b.slice(n - 1, 1), keys.row(n - 1).owned()));
        let kept = filter_record_batch(b, &keep)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
        match out.len() {
            0 => Ok(None),
            1 => Ok(out.pop()),
            _ => Ok(Some(concat_batches(&self.schema, &out)?)),
        }
    }
}
