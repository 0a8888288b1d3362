//! The per-request catalog and table providers: isolation by construction.
//!
//! Every request plans on a clone of the one shared `SessionState` whose catalog list is a
//! [`RequestCatalogList`] carrying the caller's [`ExecutionContext`]. Looking up a table yields a
//! [`TableView`]: an `Arc` of the shared [`TableRuntime`] plus that identity. A USER/STREAM table
//! view can only ever scan the partition keyed by the caller's user id; there is no code path
//! that scans another partition, and a view cannot exist without an identity.

mod system;

pub use system::SystemTable;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider,
};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::Error;
use crate::catalog::{AccessLevel, Catalog, SYSTEM_NAMESPACE, TableKind, TableRuntime, now_ms};
use crate::context::{ExecutionContext, Role};
use crate::stats::Stats;

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

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let full = &self.runtime.schema_with_seq;
        let batches = self
            .runtime
            .buffer
            .snapshot_since(self.partition(), full, self.ttl_cutoff_ms())
            .map_err(|e| DataFusionError::External(Box::new(Error::Storage(e))))?;
        // Without `_seq` exposed, the visible schema is a prefix of the stored one, so the
        // projection indices line up; default to all visible columns.
        let projection = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema().fields().len()).collect(),
        };
        let exec =
            MemorySourceConfig::try_new_exec(&[batches], Arc::clone(full), Some(projection))?;
        Ok(exec)
    }
}
