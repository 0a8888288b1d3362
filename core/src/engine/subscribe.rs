//! Opening a live query: validate the SQL (one table, columns, optional WHERE), compile the
//! filter once, register under the partition's writer lock, and take the snapshot (or replay
//! from the ring) at exactly that point, so snapshot and changes neither overlap nor leave a gap.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::DFSchema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use kalam_storage::buffer::SEQ_COLUMN;

use super::Engine;
use crate::context::{ExecutionContext, Role};
use crate::live::{LiveInfo, SubscriptionHandle};
use crate::provider::TableView;
use crate::sql::{self, Statement};
use crate::{Error, Result};

/// An open live query.
pub struct Subscribed {
    /// The registration; dropping it unsubscribes.
    pub handle: SubscriptionHandle,
    /// Schema of every batch: projected columns + `_seq` + `_change_type`.
    pub schema: SchemaRef,
    /// The snapshot rows (`_change_type = 'snapshot'`), when asked for.
    pub snapshot: Option<SendableRecordBatchStream>,
    /// The snapshot position: changes after it follow.
    pub snapshot_seq: u64,
}

fn shape_error(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "live queries support `SELECT <columns> FROM <table> [WHERE <condition>]` on one \
         table; {what} is not supported"
    ))
}

/// The parts of a subscription's plan.
struct Shape {
    /// Projected column names (without `_seq`), `None` for all.
    columns: Vec<String>,
    filter: Option<Expr>,
    /// Filter over TableScan (what the snapshot re-projects).
    input: LogicalPlan,
    scan: datafusion::logical_expr::TableScan,
}

fn shape(plan: &LogicalPlan) -> Result<Shape> {
    let (columns, below) = match plan {
        LogicalPlan::Projection(p) => {
            let mut names = Vec::with_capacity(p.expr.len());
            for e in &p.expr {
                match e {
                    Expr::Column(c) => {
                        if c.name != SEQ_COLUMN {
                            names.push(c.name.clone());
                        }
                    }
                    other => return Err(shape_error(&format!("the expression `{other}`"))),
                }
            }
            (names, p.input.as_ref())
        }
        other => return Err(shape_error(&format!("`{}`", other.display()))),
    };
    let mut filter: Option<Expr> = None;
    let mut node = below;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                filter = Some(match filter {
                    Some(e) => e.and(f.predicate.clone()),
                    None => f.predicate.clone(),
                });
                node = f.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) => node = a.input.as_ref(),
            LogicalPlan::TableScan(scan) => {
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(shape_error("a pushed-down scan"));
                }
                return Ok(Shape {
                    columns,
                    filter,
                    input: below.clone(),
                    scan: scan.clone(),
                });
            }
            LogicalPlan::Join(_) => return Err(shape_error("a join")),
            LogicalPlan::Aggregate(_) => return Err(shape_error("an aggregate")),
            other => return Err(shape_error(&format!("`{}`", other.display()))),
        }
    }
}

impl Engine {
    /// Opens a live query for `exec` on `connection` (an id of the client connection, for the
    /// per-connection limit).
    pub async fn subscribe(
        &self,
        exec: &Arc<ExecutionContext>,
        connection: &str,
        sql_text: &str,
        snapshot: bool,
        resume_after_seq: Option<u64>,
    ) -> Result<Subscribed> {
        if !matches!(sql::parse(sql_text)?, Statement::Sql) {
            return Err(shape_error("a command"));
        }
        let state = self.request_state(exec, true);
        let plan = self.plan_sql(sql_text, &state).await?;
        let shape = shape(&plan)?;
        let provider = source_as_provider(&shape.scan.source).map_err(Error::from_datafusion)?;
        let Some(view) = provider.downcast_ref::<TableView>() else {
            return Err(Error::InvalidArgument(format!(
                "system table {} cannot be subscribed to",
                shape.scan.table_name
            )));
        };
        let rt = Arc::clone(&view.runtime);
        let partition = view.partition().to_string();
        let table = &rt.schema_with_seq;
        let cols: Vec<usize> = shape
            .columns
            .iter()
            .map(|n| {
                table
                    .index_of(n)
                    .map_err(|_| Error::InvalidArgument(format!("unknown column '{n}'")))
            })
            .collect::<Result<_>>()?;
        let filter = match &shape.filter {
            None => None,
            Some(f) => {
                let f = crate::provider::unqualify(f.clone()).map_err(Error::from_datafusion)?;
                let key = format!("{f}");
                let df_schema =
                    DFSchema::try_from(Arc::clone(table)).map_err(Error::from_datafusion)?;
                Some(self.live.filter(rt.def.id, key, || {
                    create_physical_expr(
                        &f,
                        &df_schema,
                        &ExecutionProps::new(),
                        &PhysicalPlanningContext::default(),
                    )
                    .map_err(Error::from_datafusion)
                })?)
            }
        };
        let projection = self.live.projection(rt.def.id, table, cols);
        let out_schema = Arc::clone(&projection.schema);
        self.live.check_limits(&exec.user_id, connection)?;

        // Register, then snapshot or replay, with no commit of the partition in between.
        let _writer = rt.store.lock_partition(&partition).await;
        let snapshot_seq = self.seq.last();
        let handle = self.live.register(
            Arc::clone(&exec.user_id),
            Arc::from(connection),
            rt.def.id,
            &partition,
            filter,
            projection,
            LiveInfo {
                sql: sql_text.to_string(),
                table: rt.qualified_name(),
                created_at_ms: crate::catalog::now_ms(),
            },
            resume_after_seq.unwrap_or(snapshot_seq),
        );
        if let Some(after) = resume_after_seq {
            let floor = self.live.ring_floor();
            if after < floor {
                // Older than the in-memory ring: replay from the WAL while it still holds them.
                let (entries, oldest) = self.wal.read_after(rt.def.id, &partition, after)?;
                if after.saturating_add(1) < oldest {
                    return Err(Error::FailedPrecondition(format!(
                        "resume position too old: changes after seq {after} are no longer \
                         retained (the oldest retained change is seq {oldest})"
                    )));
                }
                let changes: Vec<crate::live::Change> = entries
                    .into_iter()
                    .filter(|e| e.first_seq <= floor)
                    .filter_map(|e| self.change_of(&rt, e, None))
                    .collect();
                self.live.replay_changes(&handle, &changes, after);
            }
            self.live.replay(&handle, after.max(floor))?;
        }
        let snapshot = if snapshot && resume_after_seq.is_none() {
            let mut exprs: Vec<Expr> = shape.columns.iter().map(|c| col(c.as_str())).collect();
            exprs.push(col(SEQ_COLUMN));
            let snap_plan = LogicalPlanBuilder::from(shape.input.clone())
                .project(exprs)
                .and_then(|b| b.build())
                .map_err(Error::from_datafusion)?;
            // Planning snapshots the buffer and pins the files: the rows are exactly those
            // committed up to `snapshot_seq`.
            let physical = state
                .create_physical_plan(&snap_plan)
                .await
                .map_err(Error::from_datafusion)?;
            let stream =
                execute_stream(physical, state.task_ctx()).map_err(Error::from_datafusion)?;
            let schema = Arc::clone(&out_schema);
            let tagged = stream.map(move |b| {
                b.and_then(|b| {
                    let mut cols = b.columns().to_vec();
                    cols.push(Arc::new(StringArray::from(vec!["snapshot"; b.num_rows()])));
                    RecordBatch::try_new(Arc::clone(&schema), cols).map_err(Into::into)
                })
            });
            Some(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&out_schema),
                tagged,
            )) as SendableRecordBatchStream)
        } else {
            None
        };
        Ok(Subscribed {
            handle,
            schema: out_schema,
            snapshot,
            snapshot_seq,
        })
    }

    /// `KILL LIVE QUERY '<id>'`: the owner, or a dba, ends it.
    pub(crate) fn kill_live_query(&self, id: &str, exec: &ExecutionContext) -> Result<()> {
        self.live.kill(id, &exec.user_id, exec.has_role(Role::Dba))
    }
}
