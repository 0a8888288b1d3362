//! The per-request catalog and table providers: isolation by construction.
//!
//! Every request plans on a clone of the one shared `SessionState` whose catalog list is a
//! [`RequestCatalogList`] carrying the caller's [`ExecutionContext`]. Looking up a table yields a
//! [`TableView`]: an `Arc` of the shared [`TableRuntime`] plus that identity. A USER/STREAM table
//! view can only ever scan the partition keyed by the caller's user id; there is no code path
//! that scans another partition, and a view cannot exist without an identity.

pub mod merge;
mod system;

pub use system::SystemTable;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider,
};
use datafusion::common::DFSchema;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, col, lit};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::Error;
use crate::catalog::{AccessLevel, Catalog, SYSTEM_NAMESPACE, TableKind, TableRuntime, now_ms};
use crate::context::{ExecutionContext, Role};
use crate::stats::Stats;
use crate::table::LayerSnapshot;
use kalam_storage::buffer::{DELETED_COLUMN, SEQ_COLUMN};
use merge::{LayeredInput, LayeredScanExec};

/// The catalog name every client sees.
pub const CATALOG_NAME: &str = "kalam";

/// Everything a request's providers need: shared state by `Arc`, plus the identity.
#[derive(Debug, Clone)]
pub struct RequestEnv {
    /// The shared catalog.
    pub catalog: Arc<Catalog>,
    /// Process counters (for `system.stats`).
    pub stats: Arc<Stats>,
    /// Memory pool of the shared runtime (for `system.stats`).
    pub memory_pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    /// Who is asking.
    pub exec: Arc<ExecutionContext>,
    /// Expose the hidden `_seq` column (the statement names it).
    pub expose_seq: bool,
    /// Live queries (for `system.live_queries`).
    pub live: Arc<crate::live::LiveManager>,
}

/// Per-request catalog list with the single catalog `kalam`.
#[derive(Debug)]
pub struct RequestCatalogList {
    catalog: Arc<RequestCatalog>,
}

impl RequestCatalogList {
    /// The catalog list for one request.
    pub fn new(env: RequestEnv) -> Self {
        Self {
            catalog: Arc::new(RequestCatalog { env }),
        }
    }
}

impl CatalogProviderList for RequestCatalogList {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        // Catalogs are fixed; requests never mutate shared state.
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec![CATALOG_NAME.to_string()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        (name == CATALOG_NAME).then(|| Arc::clone(&self.catalog) as Arc<dyn CatalogProvider>)
    }
}

/// The `kalam` catalog as seen by one request.
#[derive(Debug)]
struct RequestCatalog {
    env: RequestEnv,
}

impl CatalogProvider for RequestCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.env.catalog.namespaces();
        names.push(SYSTEM_NAMESPACE.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.env.catalog.namespace_exists(name).then(|| {
            Arc::new(RequestSchema {
                env: self.env.clone(),
                namespace: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// One namespace as seen by one request.
#[derive(Debug)]
struct RequestSchema {
    env: RequestEnv,
    namespace: String,
}

/// May `exec` read the shared table `rt`?
fn can_read_shared(exec: &ExecutionContext, rt: &TableRuntime) -> bool {
    rt.def.access == AccessLevel::Public || exec.has_role(Role::Service)
}

#[async_trait]
impl SchemaProvider for RequestSchema {
    fn table_names(&self) -> Vec<String> {
        if self.namespace == SYSTEM_NAMESPACE {
            return SystemTable::visible_to(&self.env.exec)
                .iter()
                .map(|t| t.name().to_string())
                .collect();
        }
        self.env
            .catalog
            .tables(Some(&self.namespace))
            .into_iter()
            .filter(|t| t.def.kind != TableKind::Shared || can_read_shared(&self.env.exec, t))
            .map(|t| t.def.name.clone())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.namespace == SYSTEM_NAMESPACE {
            let Some(table) = SystemTable::from_name(name) else {
                return Ok(None);
            };
            if !table.allowed(&self.env.exec) {
                return Err(Error::PermissionDenied(format!(
                    "permission denied: system.{name} requires role dba"
                ))
                .into_datafusion());
            }
            return Ok(Some(Arc::new(system::SystemTableProvider::new(
                table,
                self.env.clone(),
            ))));
        }
        let Some(rt) = self.env.catalog.table(&self.namespace, name) else {
            return Ok(None);
        };
        if rt.def.kind == TableKind::Shared && !can_read_shared(&self.env.exec, &rt) {
            return Err(Error::PermissionDenied(format!(
                "permission denied for table {}.{name}",
                self.namespace
            ))
            .into_datafusion());
        }
        Ok(Some(Arc::new(TableView::new(rt, self.env.clone()))))
    }

    fn table_exist(&self, name: &str) -> bool {
        if self.namespace == SYSTEM_NAMESPACE {
            return SystemTable::from_name(name).is_some();
        }
        self.env.catalog.table(&self.namespace, name).is_some()
    }
}

/// A user, shared or stream table as seen by one request.
#[derive(Debug)]
pub struct TableView {
    /// Shared table state (definition, memoized schemas, rows).
    pub runtime: Arc<TableRuntime>,
    /// The request's environment and identity.
    env: RequestEnv,
}

impl TableView {
    fn new(runtime: Arc<TableRuntime>, env: RequestEnv) -> Self {
        Self { runtime, env }
    }

    /// The partition this request may touch: the caller's own for USER/STREAM tables, the single
    /// shared partition otherwise.
    pub fn partition(&self) -> &str {
        match self.runtime.def.kind {
            TableKind::User | TableKind::Stream => &self.env.exec.user_id,
            TableKind::Shared => "",
        }
    }

    /// Checks that the caller may write this table.
    pub fn check_write(&self) -> crate::Result<()> {
        if self.runtime.def.kind == TableKind::Shared && !self.env.exec.has_role(Role::Service) {
            return Err(Error::PermissionDenied(format!(
                "permission denied: table {} is read-only for role {}",
                self.runtime.qualified_name(),
                self.env.exec.role
            )));
        }
        Ok(())
    }

    /// The oldest commit time still visible (STREAM TTL), or `i64::MIN`.
    pub fn ttl_cutoff_ms(&self) -> i64 {
        match self.runtime.def.ttl_seconds {
            Some(ttl) if self.runtime.def.kind == TableKind::Stream => {
                now_ms() - (ttl as i64) * 1000
            }
            _ => i64::MIN,
        }
    }
}

#[async_trait]
impl TableProvider for TableView {
    fn schema(&self) -> SchemaRef {
        if self.env.expose_seq {
            Arc::clone(&self.runtime.schema_with_seq)
        } else {
            Arc::clone(&self.runtime.schema)
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters on key columns only prune Parquet row groups below the merge (all versions
        // of a key pass or fail together); the plan still applies every filter above the scan.
        Ok(filters
            .iter()
            .map(|f| {
                if key_only(f, &self.runtime) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Without `_seq` exposed, the visible schema is a prefix of the stored one, so the
        // projection indices line up; default to all visible columns.
        let projection = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema().fields().len()).collect(),
        };
        let rt = &self.runtime;
        let part = self.partition();
        let snap = rt.store.snapshot(part);
        let cutoff = self.ttl_cutoff_ms();
        if snap.buffer_only() {
            let full = &rt.schema_with_seq;
            let batches = snap.generations[0]
                .buf
                .snapshot_since(part, full, cutoff, false)
                .map_err(|e| DataFusionError::External(Box::new(Error::Storage(e))))?;
            return Ok(MemorySourceConfig::try_new_exec(
                &[batches],
                Arc::clone(full),
                Some(projection),
            )?);
        }
        let input = layered_input(rt, &snap, part, cutoff, true, filters, projection)?;
        Ok(Arc::new(LayeredScanExec::try_new(input)?))
    }
}

/// Does `e` reference key columns only (and at least one)?
fn key_only(e: &Expr, rt: &TableRuntime) -> bool {
    let cols = e.column_refs();
    !cols.is_empty()
        && !rt.def.primary_key.is_empty()
        && cols
            .iter()
            .all(|c| rt.def.primary_key.iter().any(|k| k == &c.name))
}

/// The inputs of a merge-on-read scan of `partition`: the snapshot's generations (if
/// `with_buffer`) and files, pruned by `key_filters`, producing `projection` (indices into
/// `rt.mem_schema`).
pub fn layered_input(
    rt: &TableRuntime,
    snap: &LayerSnapshot,
    partition: &str,
    cutoff_ms: i64,
    with_buffer: bool,
    key_filters: &[Expr],
    projection: Vec<usize>,
) -> DfResult<LayeredInput> {
    let mut mem = Vec::new();
    if with_buffer {
        for g in &snap.generations {
            let batches = g
                .buf
                .snapshot_since(partition, &rt.mem_schema, cutoff_ms, true)
                .map_err(|e| DataFusionError::External(Box::new(Error::Storage(e))))?;
            mem.extend(batches);
        }
    }
    let files: Vec<_> = snap
        .files
        .as_ref()
        .map(|b| {
            b.files
                .iter()
                .filter(|f| f.meta.max_time_ms >= cutoff_ms)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let df_schema = DFSchema::try_from(Arc::clone(&rt.file_schema))?;
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let mut row_filter = col(merge::USER_COLUMN).eq(lit(partition));
    if cutoff_ms > i64::MIN {
        row_filter = row_filter.and(col(merge::TIME_COLUMN).gt_eq(lit(cutoff_ms)));
    }
    let mut prune = row_filter.clone();
    for f in key_filters {
        if key_only(f, rt) {
            prune = prune.and(unqualify(f.clone())?);
        }
    }
    Ok(LayeredInput {
        mem_schema: Arc::clone(&rt.mem_schema),
        file_schema: Arc::clone(&rt.file_schema),
        pk: rt.pk_indices.clone(),
        mem,
        files,
        row_filter: create_physical_expr(&row_filter, &df_schema, &props, &planning)?,
        prune: create_physical_expr(&prune, &df_schema, &props, &planning)?,
        projection,
    })
}

/// The inputs of a lookup of live keys in `partition`'s files only: reads just the key
/// columns, `_seq` and `_deleted`, pruned by `key_filters`; produces the key columns.
pub fn key_lookup_input(
    rt: &TableRuntime,
    snap: &LayerSnapshot,
    partition: &str,
    key_filters: &[Expr],
) -> DfResult<LayeredInput> {
    let mut fields: Vec<_> = rt
        .pk_indices
        .iter()
        .map(|i| Arc::new(rt.schema.field(*i).clone()))
        .collect();
    for name in [SEQ_COLUMN, DELETED_COLUMN] {
        fields.push(Arc::new(rt.mem_schema.field_with_name(name)?.clone()));
    }
    let mem_schema = Arc::new(arrow::datatypes::Schema::new(fields.clone()));
    for name in [merge::TIME_COLUMN, merge::USER_COLUMN] {
        fields.push(Arc::new(rt.file_schema.field_with_name(name)?.clone()));
    }
    let file_schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let keys: Vec<usize> = (0..rt.pk_indices.len()).collect();
    let files = snap
        .files
        .as_ref()
        .map(|b| b.files.clone())
        .unwrap_or_default();
    let df_schema = DFSchema::try_from(Arc::clone(&file_schema))?;
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let row_filter = col(merge::USER_COLUMN).eq(lit(partition));
    let mut prune = row_filter.clone();
    for f in key_filters {
        prune = prune.and(unqualify(f.clone())?);
    }
    Ok(LayeredInput {
        mem_schema,
        file_schema,
        pk: keys.clone(),
        mem: Vec::new(),
        files,
        row_filter: create_physical_expr(&row_filter, &df_schema, &props, &planning)?,
        prune: create_physical_expr(&prune, &df_schema, &props, &planning)?,
        projection: keys,
    })
}

/// `e` with table qualifiers removed from its columns (the file schema has none).
pub(crate) fn unqualify(e: Expr) -> DfResult<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    Ok(e.transform(|e| {
        Ok(match e {
            Expr::Column(c) => Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            )),
            other => Transformed::no(other),
        })
    })?
    .data)
}
