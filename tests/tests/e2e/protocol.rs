//! Flight SQL coverage with arrow-flight's own client, ingest modes, restart and shutdown.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use kalam_client::IngestMode;
use kalam_tests::{ROOT_PASSWORD, TestServer};
use tonic::transport::Channel;

use crate::common::{code, fixture, ints, strings};

async fn raw_client(server: &TestServer) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for ep in info.endpoint {
        let s = client.do_get(ep.ticket.unwrap()).await.unwrap();
        out.extend(s.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

#[tokio::test]
async fn arrow_flight_sql_client_end_to_end() {
    let f = fixture().await;
    let mut c = raw_client(&f.server).await;
    c.handshake("u_a", crate::common::PW).await.unwrap();
    // Statement query; the announced schema equals the streamed one.
    let info = c
        .execute("SELECT id, body FROM app.m ORDER BY id".into(), None)
        .await
        .unwrap();
    let announced: Schema = info.clone().try_decode_schema().unwrap();
    let batches = fetch(&mut c, info).await;
    assert_eq!(batches[0].schema().as_ref(), &announced);
    assert_eq!(strings(&batches, 1), vec!["a-1", "a-2", "a-3"]);
    // Statement update.
    assert_eq!(
        c.execute_update("INSERT INTO app.m VALUES (4, 'r1', 'a-4')".into(), None)
            .await
            .unwrap(),
        1
    );
    // Prepared update with a multi-row parameter batch (executemany).
    let mut p = c
        .prepare(
            "INSERT INTO app.m (id, room, body) VALUES ($1, 'r2', $2)".into(),
            None,
        )
        .await
        .unwrap();
    p.set_parameters(
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Int64, false),
                Field::new("$2", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![5, 6])),
                Arc::new(StringArray::from(vec!["a-5", "a-6"])),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(p.execute_update().await.unwrap(), 2);
    p.close().await.unwrap();
    // DDL/DML sent as a prepared *query* (what ADBC does) runs exactly once, at DoGet.
    let mut p = c
        .prepare("INSERT INTO app.m VALUES (7, 'r1', 'a-7')".into(), None)
        .await
        .unwrap();
    let info = p.execute().await.unwrap();
    assert_eq!(
        ints(&f.a, "SELECT count(*) FROM app.m WHERE id = 7").await,
        vec![0],
        "not at GetFlightInfo"
    );
    fetch(&mut c, info).await;
    assert_eq!(
        ints(&f.a, "SELECT count(*) FROM app.m WHERE id = 7").await,
        vec![1]
    );
    p.close().await.unwrap();
    // Metadata.
    let info_ = c.get_catalogs().await.unwrap();
    let cats = fetch(&mut c, info_).await;
    assert_eq!(strings(&cats, 0), vec!["kalam"]);
    let info_ = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let schemas = fetch(&mut c, info_).await;
    assert!(strings(&schemas, 1).contains(&"app".to_string()));
    for catalog in [None, Some("kalam".to_string())] {
        let req = CommandGetTables {
            catalog,
            db_schema_filter_pattern: Some("app".into()),
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        };
        let info_ = c.get_tables(req).await.unwrap();
        let tables = fetch(&mut c, info_).await;
        let names = strings(&tables, 2);
        assert!(
            names.contains(&"m".to_string()) && names.contains(&"rooms".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"secret".to_string()),
            "PRIVATE table hidden from a user"
        );
    }
    let info_ = c
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("app".into()),
            table: "m".into(),
        })
        .await
        .unwrap();
    let pk = fetch(&mut c, info_).await;
    assert_eq!(strings(&pk, 3), vec!["id"]);
    let info_ = c.get_table_types().await.unwrap();
    let types = fetch(&mut c, info_).await;
    assert!(strings(&types, 0).contains(&"TABLE".to_string()));
    let info_ = c
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerTransaction,
        ])
        .await
        .unwrap();
    let info = fetch(&mut c, info_).await;
    assert_eq!(info[0].num_rows(), 2);
    let info_ = c
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let xdbc = fetch(&mut c, info_).await;
    assert!(xdbc[0].num_rows() > 5);
}

fn events(ids: &[i64], v: &str) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8View, true),
        ])),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(arrow::array::StringViewArray::from(vec![v; ids.len()])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn ingest_all_four_modes() {
    let f = fixture().await;
    let r = &f.root;
    assert_eq!(
        r.ingest(
            "ev",
            Some("app"),
            IngestMode::Create,
            vec![events(&[1, 2], "c")]
        )
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        code(
            &r.ingest(
                "ev",
                Some("app"),
                IngestMode::Create,
                vec![events(&[3], "c")]
            )
            .await
            .unwrap_err()
        ),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        r.ingest(
            "ev",
            Some("app"),
            IngestMode::Append,
            vec![events(&[3], "a")]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        code(
            &r.ingest(
                "nope",
                Some("app"),
                IngestMode::Append,
                vec![events(&[3], "a")]
            )
            .await
            .unwrap_err()
        ),
        tonic::Code::NotFound
    );
    // Atomic: a duplicate key anywhere in the upload writes nothing.
    let err = r
        .ingest(
            "ev",
            Some("app"),
            IngestMode::Append,
            vec![events(&[10, 11], "x"), events(&[1], "dup")],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::AlreadyExists);
    assert_eq!(
        ints(r, "SELECT id FROM app.ev ORDER BY id").await,
        vec![1, 2, 3]
    );
    assert_eq!(
        r.ingest(
            "ev",
            Some("app"),
            IngestMode::CreateAppend,
            vec![events(&[4], "ca")]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        r.ingest(
            "ev2",
            Some("app"),
            IngestMode::CreateAppend,
            vec![events(&[1], "ca")]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        r.ingest(
            "ev",
            Some("app"),
            IngestMode::Replace,
            vec![events(&[9], "r")]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(ints(r, "SELECT id FROM app.ev").await, vec![9]);
    // Views arrive as Utf8View and are stored / returned as Utf8.
    let schema = r.query_schema("SELECT v FROM app.ev").await.unwrap();
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
}

#[tokio::test]
async fn catalog_survives_restart_and_sigterm_exits_zero() {
    let server = TestServer::start().unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE keep").await.unwrap();
    root.execute("CREATE USER TABLE keep.t (id BIGINT PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    root.execute("CREATE USER carol WITH PASSWORD 'c-pw' ROLE user")
        .await
        .unwrap();
    root.execute("ALTER TABLE keep.t ADD COLUMN extra BOOLEAN")
        .await
        .unwrap();
    let (code, dir) = server.stop().unwrap();
    assert_eq!(code, 0);
    let server = TestServer::start_in(dir, &[]).unwrap();
    let carol = server.client("carol", "c-pw").await.unwrap();
    carol
        .execute("INSERT INTO keep.t (id, v, extra) VALUES (1, 'x', true)")
        .await
        .unwrap();
    assert_eq!(ints(&carol, "SELECT id FROM keep.t").await, vec![1]);
    let root = server.client("root", ROOT_PASSWORD).await.unwrap();
    assert_eq!(
        ints(
            &root,
            "SELECT value FROM system.stats WHERE name = 'session_contexts_created'"
        )
        .await,
        vec![1]
    );
    assert_eq!(server.stop().unwrap().0, 0);
}
