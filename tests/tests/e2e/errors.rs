//! Bad input gets a clear error, loses nothing, and the server keeps serving.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use kalam_client::{IngestMode, KalamClient};

use kalam_tests::TestServer;
use tonic::Code;

use crate::common::{code, fixture, ints, strs};

#[tokio::test]
async fn bad_sql_and_bad_values() {
    let f = fixture().await;
    for (sql, want) in [
        ("SELEC 1", Code::InvalidArgument),
        ("SELECT * FROM app.m WHERE", Code::InvalidArgument),
        ("SELECT nope FROM app.m", Code::InvalidArgument),
        ("SELECT * FROM app.no_such_table", Code::NotFound),
        (
            "INSERT INTO app.m (id, room, body) VALUES ('x', 'r', 'b')",
            Code::InvalidArgument,
        ),
        (
            "INSERT INTO app.m (id, room) VALUES (1)",
            Code::InvalidArgument,
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            Code::InvalidArgument,
        ),
        ("COPY app.m TO '/tmp/x.csv'", Code::InvalidArgument),
    ] {
        let err = f.a.query_collect(sql).await.expect_err(sql);
        assert_eq!(code(&err), want, "{sql}: {err}");
        assert!(!err.to_string().contains("internal"), "{sql}: {err}");
    }
    let err =
        f.a.query_collect("SELECT * FROM app.no_such_table")
            .await
            .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // Duplicate primary key: ALREADY_EXISTS, and no row of the statement is written.
    let err =
        f.a.execute("INSERT INTO app.m VALUES (7, 'r', 'a-7'), (1, 'r', 'dup')")
            .await
            .unwrap_err();
    assert_eq!(code(&err), Code::AlreadyExists, "{err}");
    assert_eq!(
        ints(&f.a, "SELECT id FROM app.m ORDER BY id").await,
        vec![1, 2, 3]
    );

    // Wrong parameter types.
    let mut p =
        f.a.prepare("SELECT body FROM app.m WHERE id = $1")
            .await
            .unwrap();
    p.bind(
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec!["not a number"]))],
        )
        .unwrap(),
    );
    let err = p.query_collect().await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    assert_eq!(
        strs(&f.a, "SELECT body FROM app.m WHERE id = 1", 0).await,
        vec!["a-1"]
    );
}

#[tokio::test]
async fn bad_credentials_tokens_and_tickets() {
    let server = TestServer::start_with(&["--token-ttl-secs", "1"]).unwrap();
    let mut c = KalamClient::connect(&server.url()).await.unwrap();
    let e1 = c.login("root", "wrong").await.unwrap_err();
    let e2 = c.login("nobody", "wrong").await.unwrap_err();
    assert_eq!(code(&e1), Code::Unauthenticated);
    assert_eq!(
        e1.status().unwrap().message(),
        e2.status().unwrap().message(),
        "same message for both"
    );

    let forged = KalamClient::connect(&server.url())
        .await
        .unwrap()
        .with_bearer_token("Zm9yZ2VkfDk5OTk5OTk5OTk5OTk5fAAAAAAAAAAAAAAAAAAAAAA")
        .unwrap();
    assert_eq!(
        code(&forged.query_collect("SELECT 1").await.unwrap_err()),
        Code::Unauthenticated
    );

    // An expired token is refused (TTL 1 s here); wait on the condition, bounded.
    let root = server.root().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match root.query_collect("SELECT 1").await {
            Err(e) => {
                assert_eq!(code(&e), Code::Unauthenticated, "{e}");
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Ok(_) => panic!("token never expired"),
        }
    }

    // Garbage ticket.
    let root = server.root().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = FlightSqlServiceClient::new(channel);
    raw.set_token(root.token().unwrap().to_string());
    let err = raw
        .do_get(arrow_flight::Ticket::new(b"\x00garbage\xff".to_vec()))
        .await
        .expect_err("garbage ticket");
    assert!(err.to_string().to_lowercase().contains("invalid"), "{err}");
    // Still serving.
    assert_eq!(ints(&root, "SELECT 41 + 1").await, vec![42]);
}

#[tokio::test]
async fn oversize_message_is_refused_and_nothing_is_lost() {
    let f = fixture().await;
    // One 80 MiB string: above the 64 MiB inbound limit.
    let big = "x".repeat(80 << 20);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec![big.as_str()])),
        ],
    )
    .unwrap();
    // A raw client with a larger send limit, so the server's own limit is what refuses it.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", f.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_encoding_message_size(256 << 20)
        .max_decoding_message_size(256 << 20);
    let mut raw = FlightSqlServiceClient::new_from_inner(inner);
    raw.set_token(f.root.token().unwrap().to_string());
    let cmd = arrow_flight::sql::CommandStatementIngest {
        table_definition_options: Some(arrow_flight::sql::TableDefinitionOptions {
            if_not_exist: arrow_flight::sql::TableNotExistOption::Create as i32,
            if_exists: arrow_flight::sql::TableExistsOption::Fail as i32,
        }),
        table: "blob".into(),
        schema: Some("app".into()),
        ..Default::default()
    };
    let err = raw
        .execute_ingest(cmd, futures::stream::iter([Ok(batch)]))
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("message"), "{err}");
    // The normal client refuses to send it at all.
    let small = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    assert_eq!(
        f.root
            .ingest("small", Some("app"), IngestMode::Create, vec![small])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        code(
            &f.root
                .query_collect("SELECT * FROM app.blob")
                .await
                .unwrap_err()
        ),
        Code::NotFound
    );
    assert_eq!(ints(&f.a, "SELECT count(*) FROM app.m").await, vec![3]);
}
