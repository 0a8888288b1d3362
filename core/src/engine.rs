//! The query engine: one shared `SessionContext`, per-request planning state, and the describe /
//! execute entry points the server calls.
//!
//! `describe` never executes anything (it serves `GetFlightInfo` and prepared-statement creation);
//! `execute` runs a statement exactly once and returns either a stream of batches or an affected
//! row count. Query results are never collected: the stream goes straight to the caller.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use futures::{StreamExt, TryStreamExt};
use kalam_storage::seq::SeqAllocator;
use kalam_storage::wal::{Wal, WalEntry, WalKind};
use object_store::ObjectStore;

use crate::auth::hash_password;
use crate::catalog::{
    AccessLevel, Catalog, CatalogEntry, ColumnDef, TableDef, TableKind, UserDef, now_ms,
};
use crate::context::{ExecutionContext, Role};
use crate::provider::{CATALOG_NAME, RequestCatalogList, RequestEnv, TableView, merge};
use crate::sql::{self, Statement};
use crate::stats::Stats;
use crate::{Error, Result};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// DataFusion memory pool size; `None` = unbounded.
    pub memory_limit: Option<usize>,
    /// Where sorts and aggregates spill.
    pub spill_dir: PathBuf,
    /// Rows per batch.
    pub batch_size: usize,
    /// Partitions per query (defaults to cores).
    pub target_partitions: usize,
    /// Hard limit on buffered (not yet flushed) row bytes; writers wait beyond it.
    pub write_buffer_limit: usize,
    /// Live-query limits and bounds.
    pub live: crate::live::LiveConfig,
    /// Buffered rows older than this are flushed even if the buffer is small.
    pub flush_age: std::time::Duration,
}

/// What a statement will return, known without running it.
#[derive(Debug, Clone)]
pub struct Described {
    /// The exact schema of the result stream (empty for statements that return a count).
    pub schema: SchemaRef,
    /// True for DDL/DML (a row count, no rows).
    pub is_update: bool,
    /// Parameter types (`$1`, `$2`, ...), `Null` where unknown.
    pub parameter_schema: SchemaRef,
}

/// What running a statement produced.
pub enum Output {
    /// Rows, streamed.
    Stream(SendableRecordBatchStream),
    /// Rows changed (0 for DDL).
    Affected(u64),
}

/// Ingest behaviour, as Flight SQL's TableDefinitionOptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// Create the table; fail if it exists.
    Create,
    /// Append; fail if the table is missing.
    Append,
    /// Create if missing, else replace the caller's rows.
    Replace,
    /// Create if missing, else append.
    CreateAppend,
}

/// The engine. One per process.
pub struct Engine {
    /// THE SessionContext (DESIGN §5.1). Requests clone its state; nobody builds another.
    session: SessionContext,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    seq: Arc<SeqAllocator>,
    /// Every row change is logged and fsynced here before it is applied.
    wal: Arc<Wal>,
    memory_pool: Arc<dyn MemoryPool>,
    /// Where tables' Parquet files and manifests live.
    store: Arc<dyn ObjectStore>,
    /// See [`EngineConfig::write_buffer_limit`].
    write_buffer_limit: usize,
    /// See [`EngineConfig::flush_age`].
    flush_age: std::time::Duration,
    /// Wakes the maintenance task early (a writer is waiting for buffer room).
    flush_wanted: tokio::sync::Notify,
    /// Signalled after every flush (writers waiting for buffer room re-check).
    buffer_drained: tokio::sync::Notify,
    /// Live queries: registry, fan-out, retention ring.
    live: Arc<crate::live::LiveManager>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// Arrow types as they leave the server: view types become their plain forms (DESIGN §5.7).
pub fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// `schema` with view types replaced by plain ones.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(wire_type(f.data_type())))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn conform_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> datafusion::error::Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), cols)?)
}

/// Only queries, DML and EXPLAIN of those reach DataFusion: no DataFusion DDL, COPY, SET or
/// external tables (our DDL is handled by [`crate::sql`]).
fn check_statement_kind(stmt: &datafusion::sql::parser::Statement) -> Result<()> {
    use datafusion::sql::parser::Statement as DF;
    match stmt {
        DF::Statement(s) => match s.as_ref() {
            ast::Statement::Query(_)
            | ast::Statement::Insert(_)
            | ast::Statement::Update(_)
            | ast::Statement::Delete(_)
            | ast::Statement::Explain { .. }
            | ast::Statement::ShowTables { .. }
            | ast::Statement::ShowColumns { .. } => Ok(()),
            other => Err(Error::InvalidArgument(format!(
                "statement not supported: {}",
                other
                    .to_string()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            ))),
        },
        DF::Explain(e) => check_statement_kind(&e.statement),
        _ => Err(Error::InvalidArgument("statement not supported".into())),
    }
}

/// Converts parameter row `row` of `params` to positional values.
fn param_values(params: &RecordBatch, row: usize) -> Result<ParamValues> {
    let values = params
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, row).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(ParamValues::from(values))
}

impl Engine {
    /// Builds the engine and its one `SessionContext`.
    pub fn new(
        catalog: Arc<Catalog>,
        seq: Arc<SeqAllocator>,
        wal: Arc<Wal>,
        store: Arc<dyn ObjectStore>,
        config: &EngineConfig,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.spill_dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create spill dir {}: {e}",
                config.spill_dir.display()
            ))
        })?;
        let mut rt = RuntimeEnvBuilder::new().with_temp_file_path(config.spill_dir.clone());
        if let Some(limit) = config.memory_limit {
            // A fair pool gives every spilling operator its share, so concurrent sorts and
            // aggregates spill rather than one starving the others into an error.
            use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
            let consumers = std::num::NonZeroUsize::MIN.saturating_add(4);
            rt = rt.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(limit),
                consumers,
            )));
        }
        let stats = Arc::new(Stats {
            wal: Arc::clone(&wal.stats),
            ..Stats::default()
        });
        // Table files are read and written through a counting wrapper (`store_bytes_read`).
        let store: Arc<dyn ObjectStore> = Arc::new(kalam_storage::counting::CountingStore::new(
            store,
            Arc::clone(&stats.store),
        ));
        let runtime = rt.build_arc()?;
        runtime.register_object_store(merge::store_url().as_ref(), Arc::clone(&store));
        let mut cfg = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, "public")
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_batch_size(config.batch_size)
            .with_target_partitions(config.target_partitions.max(1));
        let opts = cfg.options_mut();
        if let Some(limit) = config.memory_limit {
            // Each sort reserves this much up front for merging its spills; keep it well inside
            // small pools so sorts spill instead of failing.
            opts.execution.sort_spill_reservation_bytes = opts
                .execution
                .sort_spill_reservation_bytes
                .min(limit / (4 * config.target_partitions.max(1)));
        }
        opts.sql_parser.map_string_types_to_utf8view = false;
        opts.execution.parquet.schema_force_view_types = false;
        let memory_pool = Arc::clone(&runtime.memory_pool);
        let session = SessionContext::new_with_config_rt(cfg, runtime);
        Stats::add(&stats.session_contexts_created, 1);
        let live = Arc::new(crate::live::LiveManager::new(
            config.live.clone(),
            seq.last(),
            Arc::clone(&stats),
        ));
        Ok(Self {
            wal,
            session,
            catalog,
            stats,
            seq,
            memory_pool,
            store,
            write_buffer_limit: config.write_buffer_limit,
            flush_age: config.flush_age,
            flush_wanted: tokio::sync::Notify::new(),
            buffer_drained: tokio::sync::Notify::new(),
            live,
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Process counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The key figures of `system.stats` and `/metrics`.
    pub fn key_figures(&self) -> Vec<crate::stats::Figure> {
        crate::stats::key_figures(&self.stats, &self.catalog, self.memory_pool.as_ref())
    }

    /// The planning state for one request: a clone of the shared state whose catalog list
    /// carries the caller's identity. Never registers anything in the shared context.
    pub fn request_state(&self, exec: &Arc<ExecutionContext>, expose_seq: bool) -> SessionState {
        let mut state = self.session.state();
        let env = RequestEnv {
            catalog: Arc::clone(&self.catalog),
            stats: Arc::clone(&self.stats),
            memory_pool: Arc::clone(&self.memory_pool),
            exec: Arc::clone(exec),
            expose_seq,
            live: Arc::clone(&self.live),
        };
        state.register_catalog_list(Arc::new(RequestCatalogList::new(env)));
        state
    }

    /// Resolves `EXECUTE AS USER` to the identity it runs under.
    /// Resolves `EXECUTE AS USER 'user' <inner>` to the identity `inner` runs under.
    fn impersonate(
        &self,
        exec: &Arc<ExecutionContext>,
        user: &str,
        inner: &str,
    ) -> Result<Arc<ExecutionContext>> {
        if !exec.has_role(Role::Service) {
            return Err(Error::PermissionDenied(
                "permission denied: EXECUTE AS USER requires role service".into(),
            ));
        }
        let target = self
            .catalog
            .user(user)
            .ok_or_else(|| Error::NotFound(format!("user '{user}' does not exist")))?;
        let target = Arc::new(ExecutionContext {
            user_id: Arc::from(target.id.as_str()),
            user_name: Arc::from(target.name.as_str()),
            // Never more power than the caller has.
            role: target.role.min(exec.role),
            request_id: Arc::clone(&exec.request_id),
        });
        if matches!(sql::parse(inner)?, Statement::ExecuteAs { .. }) {
            return Err(Error::InvalidArgument(
                "EXECUTE AS USER cannot be nested".into(),
            ));
        }
        Ok(target)
    }

    async fn plan_sql(&self, sql: &str, state: &SessionState) -> Result<LogicalPlan> {
        let dialect = state.config().options().sql_parser.dialect;
        let stmt = state
            .sql_to_statement(sql, &dialect)
            .map_err(Error::from_datafusion)?;
        check_statement_kind(&stmt)?;
        let plan = state
            .statement_to_plan(stmt)
            .await
            .map_err(Error::from_datafusion)?;
        match &plan {
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_) => {
                Err(Error::InvalidArgument("statement not supported".into()))
            }
            LogicalPlan::Dml(d)
                if !matches!(
                    d.op,
                    WriteOp::Insert(InsertOp::Append) | WriteOp::Update | WriteOp::Delete
                ) =>
            {
                Err(Error::Unsupported(format!("{} is not supported", d.op)))
            }
            _ => Ok(plan),
        }
    }

    /// Describes `sql` for `exec` without executing it.
    pub async fn describe(&self, sql: &str, exec: &Arc<ExecutionContext>) -> Result<Described> {
        let update = || Described {
            schema: Arc::new(Schema::empty()),
            is_update: true,
            parameter_schema: Arc::new(Schema::empty()),
        };
        match sql::parse(sql)? {
            Statement::ExecuteAs { user, sql } => {
                let target = self.impersonate(exec, &user, &sql)?;
                Box::pin(self.describe(&sql, &target)).await
            }
            Statement::Sql => {
                let expose = sql::mentions_seq(sql);
                let state = self.request_state(exec, expose);
                let plan = self.plan_sql(sql, &state).await?;
                let mut params: Vec<(String, Option<DataType>)> = plan
                    .get_parameter_types()
                    .map_err(Error::from_datafusion)?
                    .into_iter()
                    .collect();
                params.sort_by_key(|(name, _)| {
                    name.trim_start_matches('$')
                        .parse::<usize>()
                        .unwrap_or(usize::MAX)
                });
                let parameter_schema = Arc::new(Schema::new(
                    params
                        .into_iter()
                        .map(|(n, t)| Field::new(n, t.unwrap_or(DataType::Null), true))
                        .collect::<Vec<_>>(),
                ));
                if let LogicalPlan::Dml(_) = plan {
                    return Ok(Described {
                        parameter_schema,
                        ..update()
                    });
                }
                Ok(Described {
                    schema: wire_schema(plan.schema().as_arrow()),
                    is_update: false,
                    parameter_schema,
                })
            }
            _ => Ok(update()),
        }
    }

    /// Runs `sql` once as `exec`. With `params`, a query binds the first row; an update runs once
    /// per row and returns the total.
    pub async fn execute(
        &self,
        sql: &str,
        exec: &Arc<ExecutionContext>,
        params: Option<&RecordBatch>,
    ) -> Result<Output> {
        match sql::parse(sql)? {
            Statement::ExecuteAs { user, sql } => {
                let target = self.impersonate(exec, &user, &sql)?;
                Box::pin(self.execute(&sql, &target, params)).await
            }
            Statement::Sql => self.execute_sql(sql, exec, params).await,
            stmt => {
                if params.is_some_and(|p| p.num_columns() > 0) {
                    return Err(Error::InvalidArgument(
                        "this statement takes no parameters".into(),
                    ));
                }
                self.execute_command(stmt, exec).await.map(Output::Affected)
            }
        }
    }

    async fn execute_sql(
        &self,
        sql: &str,
        exec: &Arc<ExecutionContext>,
        params: Option<&RecordBatch>,
    ) -> Result<Output> {
        let expose = sql::mentions_seq(sql);
        let state = self.request_state(exec, expose);
        let plan = self.plan_sql(sql, &state).await?;
        let params = params.filter(|p| p.num_columns() > 0);
        if let LogicalPlan::Dml(dml) = &plan {
            if expose {
                return Err(Error::InvalidArgument(
                    "_seq is a system column and cannot be written".into(),
                ));
            }
            let mut total = 0;
            match params {
                Some(p) => {
                    for row in 0..p.num_rows() {
                        let bound = plan
                            .clone()
                            .with_param_values(param_values(p, row)?)
                            .map_err(Error::from_datafusion)?;
                        let LogicalPlan::Dml(dml) = bound else {
                            return Err(Error::Internal("binding changed the plan kind".into()));
                        };
                        total += self.execute_dml(&state, &dml).await?;
                    }
                }
                None => total = self.execute_dml(&state, dml).await?,
            }
            Stats::add(&self.stats.statements_executed, 1);
            return Ok(Output::Affected(total));
        }
        let plan = match params {
            Some(p) if p.num_rows() > 0 => plan
                .with_param_values(param_values(p, 0)?)
                .map_err(Error::from_datafusion)?,
            _ => plan,
        };
        let schema = wire_schema(plan.schema().as_arrow());
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(Error::from_datafusion)?;
        let stream = execute_stream(physical, state.task_ctx()).map_err(Error::from_datafusion)?;
        Stats::add(&self.stats.queries_started, 1);
        let out_schema = Arc::clone(&schema);
        let mapped = stream.map(move |b| b.and_then(|b| conform_batch(&b, &out_schema)));
        Ok(Output::Stream(Box::pin(RecordBatchStreamAdapter::new(
            schema, mapped,
        ))))
    }

    /// Runs the input of a DML plan and applies the result to the target's buffer.
    async fn execute_dml(&self, state: &SessionState, dml: &DmlStatement) -> Result<u64> {
        let provider = source_as_provider(&dml.target).map_err(Error::from_datafusion)?;
        let Some(view) = provider.downcast_ref::<TableView>() else {
            return Err(Error::PermissionDenied(format!(
                "permission denied: {} is read-only",
                dml.table_name
            )));
        };
        view.check_write()?;
        let rt = &view.runtime;
        let physical = state
            .create_physical_plan(&dml.input)
            .await
            .map_err(Error::from_datafusion)?;
        let batches: Vec<RecordBatch> = execute_stream(physical, state.task_ctx())
            .map_err(Error::from_datafusion)?
            .try_collect()
            .await
            .map_err(Error::from_datafusion)?;
        // DML inputs carry every column; align them to the table's order and types.
        let batch = align_to(&rt.schema, &batches)?;
        let n = batch.num_rows() as u64;
        let part = view.partition();
        let written = match dml.op {
            WriteOp::Insert(_) => {
                if n == 0 {
                    return Ok(0);
                }
                if rt.def.kind == TableKind::Stream {
                    // Free this partition's rows past their TTL (reads skip them anyway).
                    rt.store.active().buf.expire(part, view.ttl_cutoff_ms());
                }
                self.commit(rt, WalKind::Insert, part, batch).await?
            }
            WriteOp::Update | WriteOp::Delete => {
                if rt.def.kind == TableKind::Stream {
                    return Err(Error::InvalidArgument(
                        "STREAM tables are append-only".into(),
                    ));
                }
                if n == 0 {
                    return Ok(0);
                }
                let kind = if dml.op == WriteOp::Update {
                    self.check_pk_unchanged(dml)?;
                    WalKind::Update
                } else {
                    WalKind::Delete
                };
                self.commit(rt, kind, part, batch).await?
            }
            _ => return Err(Error::Unsupported(format!("{} is not supported", dml.op))),
        };
        Stats::add(&self.stats.rows_written, written as u64);
        Ok(written as u64)
    }

    /// Makes one change durable and visible: under the partition's writer lock and the active
    /// generation's gate, validate against every layer, append to the WAL (fsynced,
    /// group-committed with other writers), then apply to the buffer. Returns the rows written.
    async fn commit(
        &self,
        rt: &crate::catalog::TableRuntime,
        kind: WalKind,
        partition: &str,
        batch: RecordBatch,
    ) -> Result<usize> {
        self.wait_for_buffer_room().await;
        let _writer = rt.store.lock_partition(partition).await;
        let (generation, _gate) = rt.store.begin_write().await;
        let keyed = generation.buf.is_keyed();
        let batch = match kind {
            WalKind::Insert if keyed => {
                generation.buf.check_unique(&batch)?;
                let live = self.live_keys(rt, partition, &batch).await?;
                if let Some(i) = live.iter().position(|l| *l) {
                    return Err(Error::Storage(kalam_storage::Error::DuplicateKey {
                        table: rt.qualified_name(),
                        key: generation.buf.render_key(&batch, i),
                    }));
                }
                batch
            }
            WalKind::Update | WalKind::Delete if keyed => {
                // Rows deleted since the statement read them are skipped.
                let live = self.live_keys(rt, partition, &batch).await?;
                if live.iter().all(|l| *l) {
                    batch
                } else {
                    arrow::compute::filter_record_batch(&batch, &BooleanArray::from(live))
                        .map_err(|e| Error::Internal(e.to_string()))?
                }
            }
            WalKind::Replace if keyed => {
                generation.buf.check_unique(&batch)?;
                self.replacement(rt, partition, batch).await?
            }
            _ => batch,
        };
        if batch.num_rows() == 0 && kind != WalKind::Replace {
            return Ok(0);
        }
        // Subscribers decide update/insert/delete from the old and the new row.
        let old = if kind == WalKind::Update && self.live.watched(rt.def.id, partition) {
            Some(self.current_rows(rt, partition, &batch).await?)
        } else {
            None
        };
        // Before reserving: WAL truncation must never pass a commit under way.
        generation.buf.note_min_seq(self.seq.last() + 1);
        let first_seq = self.seq.reserve((batch.num_rows() as u64).max(1));
        let entry = WalEntry {
            kind,
            table_id: rt.def.id,
            partition: partition.to_string(),
            first_seq,
            batch,
            committed_at_ms: now_ms(),
        };
        self.wal.append(&entry).await?;
        let written = generation.buf.apply(&entry)?;
        self.publish(rt, entry, old);
        Ok(written)
    }

    /// Hands a committed entry to the live-query manager (still under the writer lock, so each
    /// partition's changes arrive in commit order).
    fn publish(
        &self,
        rt: &crate::catalog::TableRuntime,
        entry: WalEntry,
        old: Option<RecordBatch>,
    ) {
        if let Some(change) = self.change_of(rt, entry, old) {
            self.live.publish(change);
        }
    }

    /// A logged entry as a live-query change (its rows with `_seq`, and `_deleted` if any).
    pub(crate) fn change_of(
        &self,
        rt: &crate::catalog::TableRuntime,
        entry: WalEntry,
        old: Option<RecordBatch>,
    ) -> Option<crate::live::Change> {
        let n = entry.batch.num_rows();
        let seq: ArrayRef = Arc::new(arrow::array::UInt64Array::from_iter_values(
            (0..n as u64).map(|i| entry.first_seq + i),
        ));
        let mut fields: Vec<Arc<Field>> = Vec::with_capacity(entry.batch.num_columns() + 1);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(entry.batch.num_columns() + 1);
        let user_cols = rt.schema.fields().len().min(entry.batch.num_columns());
        for i in 0..user_cols {
            fields.push(Arc::new(entry.batch.schema().field(i).clone()));
            cols.push(Arc::clone(entry.batch.column(i)));
        }
        fields.push(Arc::new(Field::new(
            kalam_storage::buffer::SEQ_COLUMN,
            DataType::UInt64,
            false,
        )));
        cols.push(seq);
        if let Some(d) = kalam_storage::buffer::deleted_flags(&entry.batch) {
            fields.push(Arc::new(Field::new(
                kalam_storage::buffer::DELETED_COLUMN,
                DataType::Boolean,
                false,
            )));
            cols.push(Arc::new(d.clone()));
        }
        match RecordBatch::try_new(Arc::new(Schema::new(fields)), cols) {
            Ok(rows) => Some(crate::live::Change::new(
                rt.def.id,
                &entry.partition,
                entry.kind,
                rows,
                old,
                entry.last_seq(),
            )),
            Err(e) => {
                tracing::error!(error = %e, "could not publish a change to live queries");
                None
            }
        }
    }

    /// The current version (user columns + `_seq`) of each row of `batch`'s keys, in `batch`'s
    /// order (rows that do not exist read as the new row itself).
    async fn current_rows(
        &self,
        rt: &crate::catalog::TableRuntime,
        partition: &str,
        batch: &RecordBatch,
    ) -> Result<RecordBatch> {
        let snap = rt.store.snapshot(partition);
        let mut cols: Vec<usize> = (0..rt.schema.fields().len()).collect();
        cols.push(rt.schema.fields().len()); // `_seq`
        // Key filters prune the files to the rows' pages; buffered rows are merged as usual.
        let filters = key_filters(rt, batch)?;
        let input =
            crate::provider::layered_input(rt, &snap, partition, i64::MIN, true, &filters, cols)
                .map_err(Error::from_datafusion)?;
        let found = self.merged(input).await?;
        let current = concat_batches(&rt.schema_with_seq, &found)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let keys = &rt.store.active().buf;
        let have = keys.keys(&current)?;
        let index: std::collections::HashMap<_, u32> = have
            .iter()
            .enumerate()
            .map(|(i, k)| (k, i as u32))
            .collect();
        let want = keys.keys(batch)?;
        let idx: UInt32Array = want.iter().map(|k| index.get(&k).copied()).collect();
        arrow::compute::take_record_batch(&current, &idx)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Runs a merge-on-read over `input` (newest version per key, tombstones dropped) and
    /// collects it: the write path's lookups, which are pruned to the keys they ask about.
    async fn merged(&self, input: merge::LayeredInput) -> Result<Vec<RecordBatch>> {
        let exec =
            Arc::new(merge::LayeredScanExec::try_new(input).map_err(Error::from_datafusion)?);
        execute_stream(exec, self.session.task_ctx())
            .map_err(Error::from_datafusion)?
            .try_collect()
            .await
            .map_err(Error::from_datafusion)
    }

    /// For each row of `batch`, does its key currently exist (newest version not deleted) in
    /// `partition`? Buffer generations answer first (newest first); keys they do not know are
    /// looked up in the bucket's files, pruned by `_user` and key statistics / bloom filters.
    async fn live_keys(
        &self,
        rt: &crate::catalog::TableRuntime,
        partition: &str,
        batch: &RecordBatch,
    ) -> Result<Vec<bool>> {
        use kalam_storage::buffer::KeyState;
        let snap = rt.store.snapshot(partition);
        let Some(first) = snap.generations.first() else {
            return Ok(vec![false; batch.num_rows()]);
        };
        let keys = first.buf.keys(batch)?;
        let mut state = vec![KeyState::Unknown; batch.num_rows()];
        for g in &snap.generations {
            for (s, found) in state.iter_mut().zip(g.buf.lookup(partition, &keys)) {
                if *s == KeyState::Unknown {
                    *s = found;
                }
            }
        }
        let unknown: Vec<u32> = (0..state.len() as u32)
            .filter(|i| state[*i as usize] == KeyState::Unknown)
            .collect();
        let has_files = snap.files.as_ref().is_some_and(|f| !f.files.is_empty());
        if !unknown.is_empty() && has_files {
            let probe =
                arrow::compute::take_record_batch(batch, &UInt32Array::from(unknown.clone()))
                    .map_err(|e| Error::Internal(e.to_string()))?;
            let in_files = self.keys_in_files(rt, &snap, partition, &probe).await?;
            for (j, i) in unknown.iter().enumerate() {
                if in_files[j] {
                    state[*i as usize] = KeyState::Live;
                }
            }
        }
        Ok(state.into_iter().map(|s| s == KeyState::Live).collect())
    }

    /// Which keys of `probe` are live in the files of `snap` (ignoring the buffer).
    async fn keys_in_files(
        &self,
        rt: &crate::catalog::TableRuntime,
        snap: &crate::table::LayerSnapshot,
        partition: &str,
        probe: &RecordBatch,
    ) -> Result<Vec<bool>> {
        let filters = key_filters(rt, probe)?;
        let input = crate::provider::key_lookup_input(rt, snap, partition, &filters)
            .map_err(Error::from_datafusion)?;
        let found = self.merged(input).await?;
        let conv = &rt.store.active().buf;
        let mut live = std::collections::HashSet::new();
        for b in &found {
            // The lookup returns the key columns only, in primary-key order.
            live.extend(conv.key_rows(b.columns())?.iter().map(|r| r.owned()));
        }
        let keys = conv.keys(probe)?;
        Ok(keys.iter().map(|k| live.contains(&k.owned())).collect())
    }

    /// The batch a REPLACE logs: tombstones for the partition's rows in older layers that the
    /// new rows do not overwrite, then the new rows. (The active generation's rows of the
    /// partition are dropped when the entry is applied.)
    async fn replacement(
        &self,
        rt: &crate::catalog::TableRuntime,
        partition: &str,
        batch: RecordBatch,
    ) -> Result<RecordBatch> {
        let mut snap = rt.store.snapshot(partition);
        snap.generations.remove(0);
        let with_flag = |b: &RecordBatch, deleted: bool| -> Result<RecordBatch> {
            let mut fields: Vec<Arc<Field>> = rt.schema.fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(
                kalam_storage::buffer::DELETED_COLUMN,
                DataType::Boolean,
                false,
            )));
            let mut cols = b.columns()[..rt.schema.fields().len()].to_vec();
            cols.push(Arc::new(BooleanArray::from(vec![deleted; b.num_rows()])));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
                .map_err(|e| Error::Internal(e.to_string()))
        };
        let new_rows = with_flag(&batch, false)?;
        if snap.generations.is_empty() && snap.files.as_ref().is_none_or(|f| f.files.is_empty()) {
            return Ok(new_rows);
        }
        let all_cols: Vec<usize> = (0..rt.schema.fields().len()).collect();
        let input =
            crate::provider::layered_input(rt, &snap, partition, i64::MIN, true, &[], all_cols)
                .map_err(Error::from_datafusion)?;
        let old = self.merged(input).await?;
        let mut parts = Vec::with_capacity(old.len() + 1);
        for b in &old {
            parts.push(with_flag(b, true)?);
        }
        parts.push(new_rows);
        let schema = parts[0].schema();
        concat_batches(&schema, &parts).map_err(|e| Error::Internal(e.to_string()))
    }

    /// UPDATE may not assign primary-key columns (a key is the row's identity).
    fn check_pk_unchanged(&self, dml: &DmlStatement) -> Result<()> {
        if let LogicalPlan::Projection(p) = dml.input.as_ref() {
            let provider = source_as_provider(&dml.target).map_err(Error::from_datafusion)?;
            let Some(view) = provider.downcast_ref::<TableView>() else {
                return Ok(());
            };
            for (expr, field) in p.expr.iter().zip(p.schema.fields()) {
                if view
                    .runtime
                    .def
                    .primary_key
                    .iter()
                    .any(|k| k == field.name())
                {
                    let untouched = matches!(expr.clone().unalias(), datafusion::logical_expr::Expr::Column(ref c) if c.name == *field.name());
                    if !untouched {
                        return Err(Error::InvalidArgument(format!(
                            "primary key column '{}' cannot be updated",
                            field.name()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn require(exec: &ExecutionContext, role: Role) -> Result<()> {
        if exec.has_role(role) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "permission denied: requires role {role}"
            )))
        }
    }

    async fn execute_command(&self, stmt: Statement, exec: &Arc<ExecutionContext>) -> Result<u64> {
        if stmt.is_ddl() {
            Self::require(exec, Role::Dba)?;
        }
        let dropped_tables = matches!(
            stmt,
            Statement::DropTable { .. } | Statement::DropNamespace { .. }
        );
        let res = match stmt {
            Statement::CreateNamespace {
                name,
                if_not_exists,
            } => {
                if if_not_exists && self.catalog.namespace_exists(&name) {
                    return Ok(0);
                }
                self.catalog
                    .commit(CatalogEntry::CreateNamespace { name })
                    .await
            }
            Statement::DropNamespace {
                name,
                if_exists,
                cascade,
            } => {
                if !self.catalog.namespace_exists(&name) || name == crate::catalog::SYSTEM_NAMESPACE
                {
                    if if_exists {
                        return Ok(0);
                    }
                    return Err(Error::NotFound(format!(
                        "namespace '{name}' does not exist"
                    )));
                }
                if cascade {
                    for t in self.catalog.tables(Some(&name)) {
                        self.catalog
                            .commit(CatalogEntry::DropTable {
                                namespace: name.clone(),
                                name: t.def.name.clone(),
                            })
                            .await?;
                    }
                }
                self.catalog
                    .commit(CatalogEntry::DropNamespace { name })
                    .await
            }
            Statement::CreateTable(ct) => {
                if ct.if_not_exists && self.catalog.table(&ct.namespace, &ct.name).is_some() {
                    return Ok(0);
                }
                let def = TableDef {
                    id: 0, // assigned by Catalog::commit
                    namespace: ct.namespace,
                    name: ct.name,
                    kind: ct.kind,
                    access: ct.access,
                    columns: ct
                        .columns
                        .iter()
                        .map(|(n, t, null)| ColumnDef::new(n, t, *null))
                        .collect(),
                    primary_key: ct.primary_key,
                    ttl_seconds: ct.ttl_seconds,
                    created_at_ms: now_ms(),
                };
                self.catalog.commit(CatalogEntry::CreateTable(def)).await
            }
            Statement::DropTable {
                namespace,
                name,
                if_exists,
            } => {
                if if_exists && self.catalog.table(&namespace, &name).is_none() {
                    return Ok(0);
                }
                self.catalog
                    .commit(CatalogEntry::DropTable { namespace, name })
                    .await
            }
            Statement::AddColumn {
                namespace,
                table,
                column,
                data_type,
            } => {
                self.catalog
                    .commit(CatalogEntry::AddColumn {
                        namespace,
                        table,
                        column: ColumnDef::new(column, &data_type, true),
                    })
                    .await
            }
            Statement::CreateUser {
                name,
                password,
                role,
            } => {
                if role > exec.role {
                    return Err(Error::PermissionDenied(
                        "permission denied: cannot grant a role above your own".into(),
                    ));
                }
                let hash = tokio::task::spawn_blocking(move || hash_password(&password))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
                let mut id = [0u8; 12];
                rand::fill(&mut id);
                let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
                self.catalog
                    .commit(CatalogEntry::CreateUser(UserDef {
                        id,
                        name,
                        password_hash: hash,
                        role,
                        created_at_ms: now_ms(),
                    }))
                    .await
            }
            Statement::AlterUser {
                name,
                password,
                role,
            } => {
                if role.is_some_and(|r| r > exec.role) {
                    return Err(Error::PermissionDenied(
                        "permission denied: cannot grant a role above your own".into(),
                    ));
                }
                let password_hash = match password {
                    Some(pw) => Some(
                        tokio::task::spawn_blocking(move || hash_password(&pw))
                            .await
                            .map_err(|e| Error::Internal(e.to_string()))??,
                    ),
                    None => None,
                };
                self.catalog
                    .commit(CatalogEntry::AlterUser {
                        name,
                        password_hash,
                        role,
                    })
                    .await
            }
            Statement::DropUser { name, if_exists } => {
                if if_exists && self.catalog.user(&name).is_none() {
                    return Ok(0);
                }
                if *name == *exec.user_name {
                    return Err(Error::InvalidArgument(
                        "you cannot drop the user you are logged in as".into(),
                    ));
                }
                self.catalog.commit(CatalogEntry::DropUser { name }).await
            }
            Statement::FlushTable { namespace, name } => {
                if self.catalog.table(&namespace, &name).is_none() {
                    return Err(Error::NotFound(format!(
                        "table '{namespace}.{name}' does not exist"
                    )));
                }
                Self::require(exec, Role::Dba)?;
                let Some(rt) = self.catalog.table(&namespace, &name) else {
                    return Err(Error::NotFound(format!(
                        "table '{namespace}.{name}' does not exist"
                    )));
                };
                self.flush_table(&rt).await.map(|_| ())
            }
            Statement::KillLiveQuery { id } => self.kill_live_query(&id, exec),
            Statement::ExecuteAs { .. } | Statement::Sql => Err(Error::Internal(
                "statement routed to the wrong executor".into(),
            )),
        };
        res?;
        if dropped_tables {
            self.end_live_queries_of_dropped_tables();
        }
        Stats::add(&self.stats.statements_executed, 1);
        Ok(0)
    }

    /// Ends, with ABORTED, the live queries of tables that no longer exist.
    fn end_live_queries_of_dropped_tables(&self) {
        let tables = self.catalog.tables_by_id();
        self.live.retain_tables(|id| tables.contains_key(&id));
    }

    /// Bulk ingest (`CommandStatementIngest`), atomic: either every row lands or none.
    ///
    /// A created table is SHARED/PRIVATE with its first column as primary key unless `options`
    /// say otherwise (`kalam.table_type` = user|shared, `kalam.primary_key` = "a,b"). `Replace`
    /// replaces the caller's partition; when the incoming columns differ from the table's, it
    /// recreates the table (role dba), as ADBC's replace mode expects.
    #[allow(clippy::too_many_arguments)]
    pub async fn ingest(
        &self,
        exec: &Arc<ExecutionContext>,
        namespace: &str,
        table: &str,
        mode: IngestMode,
        options: &std::collections::HashMap<String, String>,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        let namespace = namespace.to_ascii_lowercase();
        let table = table.to_ascii_lowercase();
        let existing = self.catalog.table(&namespace, &table);
        match (mode, &existing) {
            (IngestMode::Create, Some(_)) => {
                return Err(Error::AlreadyExists(format!(
                    "table '{namespace}.{table}' already exists"
                )));
            }
            (IngestMode::Append, None) => {
                return Err(Error::NotFound(format!(
                    "table '{namespace}.{table}' does not exist"
                )));
            }
            _ => {}
        }
        let same_columns = |rt: &crate::catalog::TableRuntime| {
            rt.schema.fields().len() == schema.fields().len()
                && rt
                    .schema
                    .fields()
                    .iter()
                    .zip(schema.fields())
                    .all(|(a, b)| a.name().eq_ignore_ascii_case(b.name()))
        };
        let recreate =
            mode == IngestMode::Replace && existing.as_ref().is_some_and(|rt| !same_columns(rt));
        let def = match &existing {
            Some(rt) if !recreate => rt.def.clone(),
            _ => {
                Self::require(exec, Role::Dba)?;
                self.ingest_table_def(&namespace, &table, options, &schema)?
            }
        };
        // Shape and validate the rows before touching the catalog or the table.
        let target = crate::catalog::TableRuntime::schema_of(&def)?;
        let batch = align_to(&target, &batches)?;
        if existing.is_none() || recreate {
            // The table does not exist yet to validate against: check the keys with a scratch
            // buffer of the new shape, so a bad upload changes no catalog entry. (Uploads into
            // an existing table are validated by `commit`.)
            let pk = def
                .primary_key
                .iter()
                .filter_map(|k| target.index_of(k).ok())
                .collect();
            kalam_storage::buffer::TableBuffer::new("ingest", &target, pk, Arc::default(), false)?
                .check_unique(&batch)?;
        }

        if recreate {
            self.catalog
                .commit(CatalogEntry::DropTable {
                    namespace: namespace.clone(),
                    name: table.clone(),
                })
                .await?;
            self.end_live_queries_of_dropped_tables();
        }
        if existing.is_none() || recreate {
            self.catalog.commit(CatalogEntry::CreateTable(def)).await?;
        }
        let view = self.table_view(exec, &namespace, &table).await?;
        let view: &TableView = view.downcast_ref::<TableView>().ok_or_else(|| {
            Error::PermissionDenied("permission denied: table is read-only".into())
        })?;
        view.check_write()?;
        let rt = &view.runtime;
        let written = if mode == IngestMode::Replace {
            self.commit(rt, WalKind::Replace, view.partition(), batch)
                .await?
        } else if batch.num_rows() == 0 {
            0
        } else {
            self.commit(rt, WalKind::Insert, view.partition(), batch)
                .await?
        };
        Stats::add(&self.stats.rows_written, written as u64);
        Ok(written as u64)
    }

    fn ingest_table_def(
        &self,
        namespace: &str,
        table: &str,
        options: &std::collections::HashMap<String, String>,
        schema: &Schema,
    ) -> Result<TableDef> {
        let kind = match options
            .get("kalam.table_type")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("shared") => TableKind::Shared,
            Some("user") => TableKind::User,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "unknown kalam.table_type '{other}'"
                )));
            }
        };
        let pk: Vec<String> = match options.get("kalam.primary_key") {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            None => schema
                .fields()
                .first()
                .map(|f| vec![f.name().to_ascii_lowercase()])
                .unwrap_or_default(),
        };
        let columns: Vec<ColumnDef> = schema
            .fields()
            .iter()
            .map(|f| {
                let name = f.name().to_ascii_lowercase();
                ColumnDef::new(
                    &name,
                    &wire_type(f.data_type()),
                    f.is_nullable() && !pk.contains(&name),
                )
            })
            .collect();
        if let Some(k) = pk.iter().find(|k| !columns.iter().any(|c| &c.name == *k)) {
            return Err(Error::InvalidArgument(format!(
                "primary key column '{k}' is not in the data"
            )));
        }
        Ok(TableDef {
            id: 0, // assigned by Catalog::commit
            namespace: namespace.to_string(),
            name: table.to_string(),
            kind,
            access: AccessLevel::Private,
            columns,
            primary_key: pk,
            ttl_seconds: None,
            created_at_ms: now_ms(),
        })
    }

    /// The caller's view of `namespace.table`, with the role rules applied.
    pub async fn table_view(
        &self,
        exec: &Arc<ExecutionContext>,
        namespace: &str,
        table: &str,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        let state = self.request_state(exec, false);
        state
            .catalog_list()
            .catalog(CATALOG_NAME)
            .and_then(|c| c.schema(namespace))
            .ok_or_else(|| Error::NotFound(format!("namespace '{namespace}' does not exist")))?
            .table(table)
            .await
            .map_err(Error::from_datafusion)?
            .ok_or_else(|| Error::NotFound(format!("table '{namespace}.{table}' does not exist")))
    }
}

/// Pruning filters for a lookup of `probe`'s keys: the range of the first key column, plus the
/// exact keys for small batches (bloom filters prune by those).
fn key_filters(
    rt: &crate::catalog::TableRuntime,
    probe: &RecordBatch,
) -> Result<Vec<datafusion::logical_expr::Expr>> {
    /// Up to this many keys are also matched exactly; larger batches prune by range only.
    const EXACT_KEYS: usize = 16;
    use datafusion::logical_expr::{Expr, col, lit};
    let first = rt.pk_indices[0];
    let first_name = rt.schema.field(first).name();
    let order = arrow::compute::sort_to_indices(probe.column(first), None, None)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut filters: Vec<Expr> = Vec::new();
    if let (Some(lo), Some(hi)) = (order.values().first(), order.values().last()) {
        let lo = ScalarValue::try_from_array(probe.column(first), *lo as usize)
            .map_err(Error::from_datafusion)?;
        let hi = ScalarValue::try_from_array(probe.column(first), *hi as usize)
            .map_err(Error::from_datafusion)?;
        filters.push(
            col(first_name)
                .gt_eq(lit(lo))
                .and(col(first_name).lt_eq(lit(hi))),
        );
    }
    if probe.num_rows() <= EXACT_KEYS {
        let mut any: Option<Expr> = None;
        for row in 0..probe.num_rows() {
            let mut all: Option<Expr> = None;
            for &k in &rt.pk_indices {
                let v = ScalarValue::try_from_array(probe.column(k), row)
                    .map_err(Error::from_datafusion)?;
                let eq = col(rt.schema.field(k).name()).eq(lit(v));
                all = Some(match all {
                    Some(a) => a.and(eq),
                    None => eq,
                });
            }
            if let Some(all) = all {
                any = Some(match any {
                    Some(a) => a.or(all),
                    None => all,
                });
            }
        }
        filters.extend(any);
    }
    Ok(filters)
}

/// Matches incoming columns to `target` by (case-insensitive) name, casting types; missing
/// nullable columns read as NULL. Returns one batch.
fn align_to(target: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let mut aligned = Vec::with_capacity(batches.len());
    for b in batches {
        let cols = target
            .fields()
            .iter()
            .map(|f| {
                let idx = b
                    .schema()
                    .fields()
                    .iter()
                    .position(|g| g.name().eq_ignore_ascii_case(f.name()));
                match idx {
                    Some(i) => cast(b.column(i), f.data_type())
                        .map_err(|e| Error::InvalidArgument(format!("column '{}': {e}", f.name()))),
                    None if f.is_nullable() => {
                        Ok(arrow::array::new_null_array(f.data_type(), b.num_rows()))
                    }
                    None => Err(Error::InvalidArgument(format!(
                        "missing required column '{}'",
                        f.name()
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        aligned.push(
            RecordBatch::try_new(Arc::clone(target), cols)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        );
    }
    concat_batches(target, &aligned).map_err(|e| Error::Internal(e.to_string()))
}

/// Loads every table's manifests, then replays the recovered WAL entries the files do not
/// already hold. Entries of dropped tables are skipped, as are STREAM rows already past their
/// TTL. Returns the highest sequence number in use (WAL or files), where numbering resumes.
pub async fn recover(
    catalog: &Catalog,
    store: &Arc<dyn ObjectStore>,
    entries: &[WalEntry],
) -> Result<u64> {
    let tables = catalog.tables_by_id();
    let mut flushed: std::collections::HashMap<u64, std::collections::HashMap<String, u64>> =
        std::collections::HashMap::with_capacity(tables.len());
    let mut max_seq = 0;
    for (id, rt) in &tables {
        let positions = rt.store.load(store).await?;
        for (_, files) in rt.store.buckets() {
            max_seq = max_seq.max(files.flushed_seq);
            for f in &files.files {
                max_seq = max_seq.max(f.meta.max_seq);
            }
        }
        flushed.insert(*id, positions);
    }
    let now = now_ms();
    let (mut applied, mut skipped) = (0usize, 0usize);
    for e in entries {
        max_seq = max_seq.max(e.last_seq());
        let Some(rt) = tables.get(&e.table_id) else {
            skipped += 1;
            continue;
        };
        let done = flushed
            .get(&e.table_id)
            .and_then(|b| b.get(&rt.store.bucket_of(&e.partition)))
            .is_some_and(|upto| e.first_seq <= *upto);
        let expired = rt
            .def
            .ttl_seconds
            .is_some_and(|ttl| e.committed_at_ms < now - (ttl as i64) * 1000);
        if done || expired {
            skipped += 1;
            continue;
        }
        // Entries were validated before they were logged, so replay in log order succeeds.
        rt.store.active().buf.apply(e)?;
        applied += 1;
    }
    tracing::info!(applied, skipped, max_seq, "WAL replayed");
    Ok(max_seq)
}

mod maintenance;
mod subscribe;

pub use subscribe::Subscribed;
#[cfg(test)]
mod tests;
