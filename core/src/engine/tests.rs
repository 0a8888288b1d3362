use super::*;
use crate::catalog::CatalogLimits;
use arrow::array::{Int64Array, StringArray};
use kalam_storage::buffer::BufferAccounting;
use object_store::memory::InMemory;

async fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let catalog = Arc::new(
        Catalog::open(
            Arc::clone(&store),
            CatalogLimits::default(),
            Arc::new(BufferAccounting::default()),
        )
        .await
        .unwrap(),
    );
    let cfg = EngineConfig {
        memory_limit: Some(256 << 20),
        spill_dir: dir.path().join("spill"),
        batch_size: 8192,
        target_partitions: 2,
        write_buffer_limit: 64 << 20,
        live: crate::live::LiveConfig::default(),
        flush_age: std::time::Duration::from_secs(60),
    };
    let (wal, _) = Wal::open(
        &dir.path().join("wal"),
        kalam_storage::wal::DEFAULT_SEGMENT_BYTES,
    )
    .unwrap();
    let seq = Arc::new(SeqAllocator::new(0));
    (
        Engine::new(catalog, seq, Arc::new(wal), store, &cfg).unwrap(),
        dir,
    )
}

fn ctx(id: &str, role: Role) -> Arc<ExecutionContext> {
    Arc::new(ExecutionContext {
        user_id: Arc::from(id),
        user_name: Arc::from(id),
        role,
        request_id: Arc::from("t"),
    })
}

async fn run(e: &Engine, sql: &str, who: &Arc<ExecutionContext>) -> Result<Vec<RecordBatch>> {
    match e.execute(sql, who, None).await? {
        Output::Stream(s) => Ok(s.try_collect().await.map_err(Error::from_datafusion)?),
        Output::Affected(_) => Ok(vec![]),
    }
}

async fn affected(e: &Engine, sql: &str, who: &Arc<ExecutionContext>) -> Result<u64> {
    match e.execute(sql, who, None).await? {
        Output::Affected(n) => Ok(n),
        Output::Stream(_) => panic!("expected a count"),
    }
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn users_see_only_their_rows_and_writes_are_isolated() {
    let (e, _d) = engine().await;
    let root = ctx("root", Role::System);
    let (a, b) = (ctx("ua", Role::User), ctx("ub", Role::User));
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, body TEXT)",
        &root,
    )
    .await
    .unwrap();
    assert_eq!(
        affected(&e, "INSERT INTO app.m VALUES (1, 'a1'), (2, 'a2')", &a)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        affected(&e, "INSERT INTO app.m (id, body) VALUES (1, 'b1')", &b)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.m", &a).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.m", &b).await.unwrap()),
        vec![1]
    );
    assert_eq!(
        ids(&run(
            &e,
            "SELECT count(*) FROM app.m x JOIN app.m y ON x.id = y.id",
            &a
        )
        .await
        .unwrap()),
        vec![2]
    );
    // Duplicate key: nothing of the statement is written.
    let err = e
        .execute("INSERT INTO app.m VALUES (3, 'x'), (1, 'dup')", &a, None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::Storage(kalam_storage::Error::DuplicateKey { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.m", &a).await.unwrap()),
        vec![1, 2]
    );
    // UPDATE / DELETE touch only the caller's rows.
    assert_eq!(
        affected(&e, "UPDATE app.m SET body = 'z' WHERE id = 1", &a)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        affected(&e, "DELETE FROM app.m WHERE id >= 1", &b)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.m", &a).await.unwrap()),
        vec![1, 2]
    );
    let body = run(&e, "SELECT body FROM app.m WHERE id = 1", &a)
        .await
        .unwrap();
    assert_eq!(
        body[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0),
        "z"
    );
    assert!(ids(&run(&e, "SELECT id FROM app.m", &b).await.unwrap()).is_empty());
    // _seq is selectable and increasing, and not writable.
    let seqs = run(&e, "SELECT id, _seq FROM app.m ORDER BY id", &a)
        .await
        .unwrap();
    assert_eq!(seqs[0].num_columns(), 2);
    assert!(
        e.execute(
            "INSERT INTO app.m (id, body, _seq) VALUES (9, 'x', 1)",
            &a,
            None
        )
        .await
        .is_err()
    );
    // Roles.
    assert!(matches!(
        e.execute("CREATE NAMESPACE x", &a, None).await,
        Err(Error::PermissionDenied(_))
    ));
    let err = e
        .execute("SELECT * FROM system.users", &a, None)
        .await
        .err()
        .unwrap();
    assert!(matches!(
        Error::from_datafusion_owned(err),
        Error::PermissionDenied(_)
    ));
    assert_eq!(Stats::get(&e.stats().session_contexts_created), 1);
}

#[tokio::test]
async fn describe_does_not_execute() {
    let (e, _d) = engine().await;
    let root = ctx("root", Role::System);
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY, t TEXT)",
        &root,
    )
    .await
    .unwrap();
    let d = e
        .describe("INSERT INTO app.s VALUES (1, 'x')", &root)
        .await
        .unwrap();
    assert!(d.is_update);
    let d = e
        .describe("SELECT t, id FROM app.s WHERE id = $1", &root)
        .await
        .unwrap();
    assert!(!d.is_update);
    assert_eq!(d.schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(d.parameter_schema.fields().len(), 1);
    assert!(ids(&run(&e, "SELECT id FROM app.s", &root).await.unwrap()).is_empty());
}

#[tokio::test]
async fn stream_tables_are_append_only_per_user_and_expire() {
    let (e, _d) = engine().await;
    let root = ctx("root", Role::System);
    let (a, b) = (ctx("ua", Role::User), ctx("ub", Role::User));
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE STREAM TABLE app.typing (room TEXT, n BIGINT) WITH (TTL_SECONDS = 1)",
        &root,
    )
    .await
    .unwrap();
    affected(&e, "INSERT INTO app.typing VALUES ('r', 1), ('r', 1)", &a)
        .await
        .unwrap();
    affected(&e, "INSERT INTO app.typing VALUES ('r', 2)", &b)
        .await
        .unwrap();
    let count = |who| {
        let e = &e;
        async move {
            ids(&run(e, "SELECT count(*) FROM app.typing", who)
                .await
                .unwrap())
        }
    };
    assert_eq!(
        count(&a).await,
        vec![2],
        "duplicates allowed: no primary key"
    );
    assert_eq!(count(&b).await, vec![1]);
    assert!(
        e.execute("UPDATE app.typing SET n = 3", &a, None)
            .await
            .is_err()
    );
    assert!(e.execute("DELETE FROM app.typing", &a, None).await.is_err());
    // Rows older than the TTL disappear (bounded wait on the condition).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(&a).await != vec![0] {
        assert!(std::time::Instant::now() < deadline, "rows never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn flushed_rows_merge_with_the_buffer_through_flush_and_compaction() {
    let (e, _dir) = engine().await;
    let root = ctx("root", Role::System);
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, body TEXT)",
        &root,
    )
    .await
    .unwrap();
    let (a, b) = (ctx("ua", Role::User), ctx("ub", Role::User));
    let values = |r: std::ops::Range<i64>| {
        r.map(|i| format!("({i}, 'v{i}')"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let sql = format!("INSERT INTO app.t VALUES {}", values(0..100));
    assert_eq!(affected(&e, &sql, &a).await.unwrap(), 100);
    let sql = format!("INSERT INTO app.t VALUES {}", values(0..50));
    assert_eq!(affected(&e, &sql, &b).await.unwrap(), 50);
    let rt = e.catalog.table("app", "t").unwrap();
    let report = e.flush_table(&rt).await.unwrap();
    assert_eq!(report.rows, 150);
    assert!(report.files >= 1);

    let n = |who: &Arc<ExecutionContext>, sql: &'static str| {
        let who = Arc::clone(who);
        let e = &e;
        async move { count(&run(e, sql, &who).await.unwrap()) }
    };
    assert_eq!(n(&a, "SELECT COUNT(*) FROM app.t").await, 100);
    assert_eq!(n(&b, "SELECT COUNT(*) FROM app.t").await, 50);
    // Uniqueness holds against rows that live only in Parquet.
    let err = affected(&e, "INSERT INTO app.t VALUES (5, 'dup')", &a)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("duplicate primary key (5)"),
        "{err}"
    );
    affected(&e, "INSERT INTO app.t VALUES (500, 'new')", &a)
        .await
        .unwrap();
    // UPDATE and DELETE of flushed rows.
    assert_eq!(
        affected(&e, "UPDATE app.t SET body = 'x' WHERE id < 10", &a)
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        affected(&e, "DELETE FROM app.t WHERE id >= 90 AND id < 100", &a)
            .await
            .unwrap(),
        10
    );
    let check = |label: &'static str| {
        let e = &e;
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        async move {
            assert_eq!(
                n(&a, "SELECT COUNT(*) FROM app.t").await,
                91,
                "{label}: 100 + 1 - 10"
            );
            assert_eq!(
                n(&a, "SELECT COUNT(*) FROM app.t WHERE body = 'x'").await,
                10,
                "{label}"
            );
            assert_eq!(
                n(&a, "SELECT COUNT(DISTINCT id) FROM app.t").await,
                91,
                "{label}: no duplicates"
            );
            assert_eq!(
                n(&a, "SELECT COUNT(*) FROM app.t WHERE id = 95").await,
                0,
                "{label}: deleted stays deleted"
            );
            assert_eq!(n(&b, "SELECT COUNT(*) FROM app.t").await, 50, "{label}");
            let _ = e;
        }
    };
    check("buffer over parquet").await;
    e.flush_table(&rt).await.unwrap();
    check("two files").await;
    let bucket = rt.store.bucket_of("ua");
    let r = e.compact_bucket(&rt, &bucket, true).await.unwrap();
    if rt.store.bucket_of("ub") == bucket {
        assert_eq!(
            r.rows, 141,
            "compaction drops superseded versions and tombstones"
        );
    } else {
        assert_eq!(r.rows, 91);
    }
    check("compacted").await;
    // A deleted key can come back, and the new row wins over every older layer.
    affected(&e, "INSERT INTO app.t VALUES (95, 'again')", &a)
        .await
        .unwrap();
    assert_eq!(n(&a, "SELECT COUNT(*) FROM app.t WHERE id = 95").await, 1);
    let jobs = run(&e, "SELECT kind, status FROM system.jobs", &root)
        .await
        .unwrap();
    assert_eq!(jobs.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
}

#[tokio::test]
async fn flushed_stream_rows_expire_and_their_files_go() {
    let (e, _d) = engine().await;
    let root = ctx("root", Role::System);
    let a = ctx("ua", Role::User);
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE STREAM TABLE app.typing (room TEXT, n BIGINT) WITH (TTL_SECONDS = 1)",
        &root,
    )
    .await
    .unwrap();
    affected(&e, "INSERT INTO app.typing VALUES ('r', 1), ('r', 2)", &a)
        .await
        .unwrap();
    let rt = e.catalog.table("app", "typing").unwrap();
    assert_eq!(e.flush_table(&rt).await.unwrap().rows, 2);
    affected(&e, "INSERT INTO app.typing VALUES ('r', 3)", &a)
        .await
        .unwrap();
    let n = || async {
        count(
            &run(&e, "SELECT count(*) FROM app.typing", &a)
                .await
                .unwrap(),
        )
    };
    assert_eq!(n().await, 3, "file rows and buffered rows");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while n().await != 0 {
        assert!(std::time::Instant::now() < deadline, "rows never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    e.maintain_once().await;
    assert!(
        rt.store.buckets().iter().all(|(_, f)| f.files.is_empty()),
        "expired files are dropped"
    );
}

#[tokio::test]
async fn replace_and_add_column_over_flushed_rows() {
    let (e, _d) = engine().await;
    let root = ctx("root", Role::System);
    let a = ctx("ua", Role::User);
    affected(&e, "CREATE NAMESPACE app", &root).await.unwrap();
    affected(
        &e,
        "CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, body TEXT)",
        &root,
    )
    .await
    .unwrap();
    affected(
        &e,
        "INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        &a,
    )
    .await
    .unwrap();
    let rt = e.catalog.table("app", "t").unwrap();
    e.flush_table(&rt).await.unwrap();
    affected(&e, "ALTER TABLE app.t ADD COLUMN edited BOOLEAN", &root)
        .await
        .unwrap();
    affected(&e, "INSERT INTO app.t VALUES (4, 'd', true)", &a)
        .await
        .unwrap();
    assert_eq!(
        count(
            &run(&e, "SELECT count(*) FROM app.t WHERE edited IS NULL", &a)
                .await
                .unwrap()
        ),
        3,
        "rows flushed before ADD COLUMN read the new column as NULL"
    );
    // Replace the partition: rows in Parquet and in the buffer all go.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
        Field::new("edited", DataType::Boolean, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![2, 9])),
            Arc::new(StringArray::from(vec!["B", "Z"])),
            Arc::new(arrow::array::BooleanArray::from(vec![false, false])),
        ],
    )
    .unwrap();
    e.ingest(
        &a,
        "app",
        "t",
        IngestMode::Replace,
        &Default::default(),
        schema,
        vec![batch],
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.t ORDER BY id", &a)
            .await
            .unwrap()),
        vec![2, 9]
    );
    e.flush_table(&e.catalog.table("app", "t").unwrap())
        .await
        .unwrap();
    assert_eq!(
        ids(&run(&e, "SELECT id FROM app.t ORDER BY id", &a)
            .await
            .unwrap()),
        vec![2, 9],
        "after flushing the replacement"
    );
}
