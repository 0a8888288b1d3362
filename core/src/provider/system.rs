//! `system.*` tables, built from live state at scan time.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::RequestEnv;
use crate::catalog::TableKind;
use crate::context::{ExecutionContext, Role};

/// The system tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemTable {
    /// Users without password hashes.
    Users,
    /// Namespaces.
    Namespaces,
    /// Tables and their kinds.
    Tables,
    /// Live queries (own rows only for `user`/`service`).
    LiveQueries,
    /// Flush and compaction jobs.
    Jobs,
    /// Process counters.
    Stats,
}

const ALL: [SystemTable; 6] = [
    SystemTable::Users,
    SystemTable::Namespaces,
    SystemTable::Tables,
    SystemTable::LiveQueries,
    SystemTable::Jobs,
    SystemTable::Stats,
];

impl SystemTable {
    /// Table name within `system`.
    pub fn name(self) -> &'static str {
        match self {
            SystemTable::Users => "users",
            SystemTable::Namespaces => "namespaces",
            SystemTable::Tables => "tables",
            SystemTable::LiveQueries => "live_queries",
            SystemTable::Jobs => "jobs",
            SystemTable::Stats => "stats",
        }
    }

    /// Looks a table up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|t| t.name() == name)
    }

    /// May `exec` read it? `dba` and above read everything; others only their own live queries.
    pub fn allowed(self, exec: &ExecutionContext) -> bool {
        exec.has_role(Role::Dba) || self == SystemTable::LiveQueries
    }

    /// The tables `exec` may read.
    pub fn visible_to(exec: &ExecutionContext) -> Vec<SystemTable> {
        ALL.into_iter().filter(|t| t.allowed(exec)).collect()
    }

    fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
        Arc::new(Schema::new(match self {
            SystemTable::Users => vec![
                f("user_id", DataType::Utf8, false),
                f("name", DataType::Utf8, false),
                f("role", DataType::Utf8, false),
                f("created_at", ts(), false),
            ],
            SystemTable::Namespaces => vec![f("name", DataType::Utf8, false)],
            SystemTable::Tables => vec![
                f("namespace", DataType::Utf8, false),
                f("name", DataType::Utf8, false),
                f("table_id", DataType::UInt64, false),
                f("type", DataType::Utf8, false),
                f("access_level", DataType::Utf8, true),
                f("primary_key", DataType::Utf8, false),
                f("ttl_seconds", DataType::UInt64, true),
                f("created_at", ts(), false),
            ],
            SystemTable::LiveQueries => vec![
                f("id", DataType::Utf8, false),
                f("user_id", DataType::Utf8, false),
                f("table", DataType::Utf8, false),
                f("sql", DataType::Utf8, false),
                f("created_at", ts(), false),
                f("last_seq", DataType::UInt64, false),
                f("delivered", DataType::UInt64, false),
            ],
            SystemTable::Jobs => vec![
                f("job_id", DataType::Utf8, false),
                f("kind", DataType::Utf8, false),
                f("table", DataType::Utf8, false),
                f("status", DataType::Utf8, false),
                f("started_at", ts(), false),
                f("finished_at", ts(), true),
                f("ok", DataType::Boolean, true),
                f("detail", DataType::Utf8, false),
            ],
            SystemTable::Stats => vec![
                f("name", DataType::Utf8, false),
                f("value", DataType::Int64, false),
            ],
        }))
    }

    fn rows(self, env: &RequestEnv) -> Vec<ArrayRef> {
        fn s<I: IntoIterator<Item = String>>(i: I) -> ArrayRef {
            Arc::new(StringArray::from_iter_values(i))
        }
        match self {
            SystemTable::Users => {
                let users = env.catalog.users();
                vec![
                    s(users.iter().map(|u| u.id.clone())),
                    s(users.iter().map(|u| u.name.clone())),
                    s(users.iter().map(|u| u.role.to_string())),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        users.iter().map(|u| u.created_at_ms),
                    )),
                ]
            }
            SystemTable::Namespaces => vec![s(env.catalog.namespaces())],
            SystemTable::Tables => {
                let t = env.catalog.tables(None);
                vec![
                    s(t.iter().map(|t| t.def.namespace.clone())),
                    s(t.iter().map(|t| t.def.name.clone())),
                    Arc::new(UInt64Array::from_iter_values(t.iter().map(|t| t.def.id))),
                    s(t.iter().map(|t| t.def.kind.as_str().to_string())),
                    Arc::new(StringArray::from_iter(t.iter().map(|t| {
                        (t.def.kind == TableKind::Shared)
                            .then(|| format!("{:?}", t.def.access).to_ascii_uppercase())
                    }))),
                    s(t.iter().map(|t| t.def.primary_key.join(","))),
                    Arc::new(UInt64Array::from_iter(t.iter().map(|t| t.def.ttl_seconds))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        t.iter().map(|t| t.def.created_at_ms),
                    )),
                ]
            }
            // No live-query registry exists in this build, so there are no rows to show; the
            // table is here so its contract (schema, visibility) holds from the start.
            SystemTable::Jobs => {
                let jobs = env.stats.jobs();
                vec![
                    s(jobs.iter().map(|j| j.id.clone())),
                    s(jobs.iter().map(|j| j.kind.to_string())),
                    s(jobs.iter().map(|j| j.table.clone())),
                    s(jobs.iter().map(|j| j.status.to_string())),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        jobs.iter().map(|j| j.started_at_ms),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter(
                        jobs.iter().map(|j| j.finished_at_ms),
                    )),
                    Arc::new(arrow::array::BooleanArray::from_iter(
                        jobs.iter()
                            .map(|j| j.finished_at_ms.map(|_| j.status == "done")),
                    )),
                    s(jobs.iter().map(|j| j.detail.clone())),
                ]
            }
            SystemTable::LiveQueries => {
                let subs = env
                    .live
                    .list(&env.exec.user_id, env.exec.has_role(Role::Dba));
                vec![
                    s(subs.iter().map(|(q, _)| q.id.to_string())),
                    s(subs.iter().map(|(q, _)| q.user_id.to_string())),
                    s(subs.iter().map(|(_, i)| i.table.clone())),
                    s(subs.iter().map(|(_, i)| i.sql.clone())),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        subs.iter().map(|(_, i)| i.created_at_ms),
                    )),
                    Arc::new(UInt64Array::from_iter_values(subs.iter().map(|(q, _)| {
                        q.last_seq.load(std::sync::atomic::Ordering::Relaxed)
                    }))),
                    Arc::new(UInt64Array::from_iter_values(subs.iter().map(|(q, _)| {
                        q.delivered.load(std::sync::atomic::Ordering::Relaxed)
                    }))),
                ]
            }
            SystemTable::Stats => {
                let figures =
                    crate::stats::key_figures(&env.stats, &env.catalog, env.memory_pool.as_ref());
                let pairs: Vec<(&str, i64)> = figures
                    .iter()
                    .map(|f| (f.name, i64::try_from(f.value).unwrap_or(i64::MAX)))
                    .collect();
                vec![
                    s(pairs.iter().map(|(n, _)| n.to_string())),
                    Arc::new(Int64Array::from_iter_values(pairs.iter().map(|(_, v)| *v))),
                ]
            }
        }
    }
}

/// Provider for one system table in one request.
#[derive(Debug)]
pub(crate) struct SystemTableProvider {
    table: SystemTable,
    schema: SchemaRef,
    env: RequestEnv,
}

impl SystemTableProvider {
    pub(crate) fn new(table: SystemTable, env: RequestEnv) -> Self {
        Self {
            schema: table.schema(),
            table,
            env,
        }
    }
}

#[async_trait]
impl TableProvider for SystemTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), self.table.rows(&self.env))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}
