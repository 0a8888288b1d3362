//! Criterion micro-benchmarks of `kalam-core` hot paths, in process, on the real code.
//!
//! - `schema_lookup`: resolving a table's schema the way planning a query does — the catalog
//!   lookup, the request's `TableView`, and its memoized schema (plus, for comparison, building
//!   the schema from the definition, which the memoization saves).
//! - `request_planning`: the per-request `SessionState` (`Engine::request_state`) and planning
//!   a point query on it (`Engine::describe`, the `GetFlightInfo` path).
//! - `live_publish_1k_rows`: fan-out of one 1,000-row INSERT to 1 / 100 / 10,000 subscriptions
//!   of one partition, each with its own WHERE filter (`LiveManager::publish`).
//!
//! Run with `cargo bench -p kalam-bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_expr::create_physical_expr;
use futures::FutureExt;
use kalam_core::Error;
use kalam_core::catalog::{Catalog, CatalogLimits, TableRuntime};
use kalam_core::context::{ExecutionContext, Role};
use kalam_core::engine::{Engine, EngineConfig, Output};
use kalam_core::live::{Change, LiveConfig, LiveInfo, LiveManager, SubscriptionHandle};
use kalam_core::provider::CATALOG_NAME;
use kalam_core::stats::Stats;
use kalam_storage::buffer::BufferAccounting;
use kalam_storage::seq::SeqAllocator;
use kalam_storage::wal::{DEFAULT_SEGMENT_BYTES, Wal, WalKind};
use object_store::ObjectStore;
use object_store::memory::InMemory;

/// Namespace and table every bench uses.
const NAMESPACE: &str = "app";
const TABLE: &str = "messages";
/// The point query planned by `request_planning/describe_point_query`.
const POINT_QUERY: &str = "SELECT * FROM app.messages WHERE id = 1";
/// Rows of the published change.
const CHANGE_ROWS: usize = 1_000;
/// Distinct rooms among those rows: subscription `i` watches room `r{i}`, so with 100 or more
/// subscriptions 100 of them receive 10 rows each and the rest match nothing.
const ROOMS: usize = 100;

/// A real engine over a temp dir (WAL, spill) and an in-memory object store, with one USER
/// table `app.messages (id BIGINT PRIMARY KEY, room TEXT, body TEXT)`; as the engine tests build it.
struct Fixture {
    engine: Engine,
    /// The caller of the request benches.
    user: Arc<ExecutionContext>,
    _dir: tempfile::TempDir,
}

fn ctx(id: &str, role: Role) -> Arc<ExecutionContext> {
    Arc::new(ExecutionContext {
        user_id: Arc::from(id),
        user_name: Arc::from(id),
        role,
        request_id: Arc::from("bench"),
    })
}

impl Fixture {
    fn new(rt: &tokio::runtime::Runtime) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = rt.block_on(async {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let catalog = Arc::new(
                Catalog::open(
                    Arc::clone(&store),
                    CatalogLimits::default(),
                    Arc::new(BufferAccounting::default()),
                )
                .await
                .expect("catalog"),
            );
            let cfg = EngineConfig {
                memory_limit: Some(256 << 20),
                spill_dir: dir.path().join("spill"),
                batch_size: 8192,
                target_partitions: 2,
                write_buffer_limit: 64 << 20,
                live: LiveConfig::default(),
                flush_age: Duration::from_secs(60),
            };
            let (wal, _) = Wal::open(&dir.path().join("wal"), DEFAULT_SEGMENT_BYTES).expect("wal");
            let seq = Arc::new(SeqAllocator::new(0));
            let engine = Engine::new(catalog, seq, Arc::new(wal), store, &cfg).expect("engine");
            let root = ctx("root", Role::System);
            for sql in [
                format!("CREATE NAMESPACE {NAMESPACE}"),
                format!(
                    "CREATE USER TABLE {NAMESPACE}.{TABLE} \
                     (id BIGINT PRIMARY KEY, room TEXT, body TEXT)"
                ),
            ] {
                match engine.execute(&sql, &root, None).await.expect(&sql) {
                    Output::Affected(_) => {}
                    Output::Stream(_) => panic!("{sql}: expected a count"),
                }
            }
            engine
        });
        Self {
            engine,
            user: ctx("u1", Role::User),
            _dir: dir,
        }
    }

    fn table(&self) -> Arc<TableRuntime> {
        self.engine
            .catalog()
            .table(NAMESPACE, TABLE)
            .expect("table exists")
    }
}

fn schema_lookup(c: &mut Criterion) {
    let rt = runtime();
    let fx = Fixture::new(&rt);
    let mut g = c.benchmark_group("schema_lookup");

    // The catalog's memoized runtime: map lookup under a read lock, then an `Arc` clone.
    g.bench_function("catalog_table", |b| {
        b.iter(|| {
            let rt = fx
                .engine
                .catalog()
                .table(black_box(NAMESPACE), black_box(TABLE));
            rt.map(|rt| Arc::clone(&rt.schema))
        })
    });

    // As DataFusion's planner resolves `app.messages` on a request's state: catalog list →
    // catalog → schema (namespace) → `TableView` → its schema.
    let state = fx.engine.request_state(&fx.user, false);
    g.bench_function("request_catalog", |b| {
        b.iter(|| {
            let provider = state
                .catalog_list()
                .catalog(CATALOG_NAME)
                .and_then(|c| c.schema(black_box(NAMESPACE)))
                .expect("namespace")
                .table(black_box(TABLE))
                .now_or_never()
                .expect("lookup does not wait")
                .expect("lookup")
                .expect("table");
            provider.schema()
        })
    });

    // What each lookup would cost without memoization: the schema built from the definition.
    let table = fx.table();
    g.bench_function("rebuild_unmemoized", |b| {
        b.iter(|| TableRuntime::schema_of(black_box(&table.def)).expect("schema"))
    });
    g.finish();
}

fn request_planning(c: &mut Criterion) {
    let rt = runtime();
    let fx = Fixture::new(&rt);
    let mut g = c.benchmark_group("request_planning");

    // A clone of the shared state with a per-request catalog list carrying the identity.
    g.bench_function("request_state", |b| {
        b.iter(|| fx.engine.request_state(black_box(&fx.user), false))
    });

    // What `GetFlightInfo` does: request state, statement recognition, SQL parse, logical plan.
    g.bench_function("describe_point_query", |b| {
        b.iter(|| {
            rt.block_on(fx.engine.describe(black_box(POINT_QUERY), &fx.user))
                .expect("describe")
        })
    });
    g.finish();
}

/// One 1,000-row insert of `table` (user columns + `_seq`), rooms `r0` .. `r{ROOMS-1}` in turn.
fn insert_rows(table: &TableRuntime) -> RecordBatch {
    let n = CHANGE_ROWS as i64;
    RecordBatch::try_new(
        Arc::clone(&table.schema_with_seq),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(StringArray::from_iter_values(
                (0..CHANGE_ROWS).map(|i| format!("r{}", i % ROOMS)),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..CHANGE_ROWS).map(|i| format!("message number {i} of the batch")),
            )),
            Arc::new(UInt64Array::from_iter_values(1..=n as u64)),
        ],
    )
    .expect("rows")
}

/// Registers `n` subscriptions of user `u1` on `table`, subscription `i` filtered by
/// `room = 'r{i}'` (distinct filters, so each is evaluated on every change), compiled and
/// interned as `Engine::subscribe` does.
fn subscribe(live: &Arc<LiveManager>, table: &TableRuntime, n: usize) -> Vec<SubscriptionHandle> {
    let schema = &table.schema_with_seq;
    let df_schema = DFSchema::try_from(Arc::clone(schema)).expect("schema");
    let id = table.def.id;
    (0..n)
        .map(|i| {
            let expr = col("room").eq(lit(format!("r{i}")));
            let filter = live
                .filter(id, format!("{expr}"), || {
                    create_physical_expr(
                        &expr,
                        &df_schema,
                        &ExecutionProps::new(),
                        &PhysicalPlanningContext::default(),
                    )
                    .map_err(Error::from_datafusion)
                })
                .expect("filter");
            let projection = live.projection(id, schema, vec![0, 1, 2]);
            live.register(
                Arc::from("u1"),
                Arc::from("conn"),
                id,
                "u1",
                Some(filter),
                projection,
                LiveInfo {
                    sql: format!("SELECT * FROM {NAMESPACE}.{TABLE} WHERE room = 'r{i}'"),
                    table: table.qualified_name(),
                    created_at_ms: 0,
                },
                0,
            )
        })
        .collect()
}

/// Empties every queue as a client stream would; returns the rows taken.
fn drain(handles: &mut [SubscriptionHandle]) -> u64 {
    let mut rows = 0;
    for h in handles {
        while let Ok(d) = h.rx.try_recv() {
            h.delivered(&d);
            rows += d.batch.num_rows() as u64;
        }
    }
    rows
}

fn live_publish(c: &mut Criterion) {
    let rt = runtime();
    let fx = Fixture::new(&rt);
    let table = fx.table();
    let rows = insert_rows(&table);
    let mut g = c.benchmark_group("live_publish_1k_rows");
    // About a millisecond per publish at 100 subscriptions: 100 samples need ~5 s.
    g.measurement_time(Duration::from_secs(5));
    for n in [1, 100, 10_000] {
        let live = Arc::new(LiveManager::new(
            LiveConfig::default(),
            0,
            Arc::new(Stats::default()),
        ));
        let mut handles = subscribe(&live, &table, n);
        let (mut published, mut delivered) = (0u64, 0u64);
        if n >= 10_000 {
            // Tens of milliseconds per publish: fewer, single-iteration samples.
            g.sampling_mode(SamplingMode::Flat).sample_size(20);
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            // Only `publish` is timed. Queues are drained after each one (outside the timing),
            // so no subscription is ever ended as lagging and every iteration does the same work.
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let change = Change::new(
                        table.def.id,
                        "u1",
                        WalKind::Insert,
                        rows.clone(),
                        None,
                        CHANGE_ROWS as u64,
                    );
                    let start = Instant::now();
                    live.publish(change);
                    timed += start.elapsed();
                    published += 1;
                    delivered += drain(&mut handles);
                }
                timed
            })
        });
        // The figure is only meaningful if every subscription stayed live and got its rows.
        assert!(
            handles.iter().all(|h| h.sub.end_reason().is_none()),
            "a subscription was ended during the bench"
        );
        assert_eq!(live.len(), n);
        let per_publish = (n.min(ROOMS) * (CHANGE_ROWS / ROOMS)) as u64;
        assert_eq!(delivered, published * per_publish, "rows delivered");
        drop(handles);
    }
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = schema_lookup, request_planning, live_publish
}
criterion_main!(benches);
