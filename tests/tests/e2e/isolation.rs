//! A user sees only their own rows of a USER table, on every read path.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::future::join_all;
use std::sync::Arc;

use crate::common::{code, fixture, ints, strings, strs, text};

/// Query shapes that must never show another user's rows.
const READ_PATHS: &[&str] = &[
    "SELECT id, body FROM app.m ORDER BY id",
    "SELECT * FROM app.m",
    "SELECT count(*) FROM app.m",
    "SELECT room, count(*), max(body) FROM app.m GROUP BY room ORDER BY room",
    "SELECT x.id, y.body FROM app.m x JOIN app.m y ON x.id = y.id ORDER BY x.id",
    "SELECT m.body, r.title FROM app.m m JOIN app.rooms r ON m.room = r.id ORDER BY m.id",
    "SELECT body FROM app.m WHERE id IN (SELECT id FROM app.m WHERE id > 0)",
    "SELECT (SELECT max(body) FROM app.m) AS top",
    "SELECT body FROM app.m UNION SELECT body FROM app.m",
    "SELECT body FROM app.m UNION ALL SELECT title FROM app.rooms",
    "WITH c AS (SELECT * FROM app.m) SELECT body FROM c ORDER BY body",
    "SELECT body, row_number() OVER (ORDER BY id DESC) FROM app.m",
    "SELECT body FROM app.m WHERE body LIKE 'b-%' OR body LIKE 'a-%'",
    "SELECT body, _seq FROM app.m",
    "EXPLAIN ANALYZE SELECT body FROM app.m",
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'app'",
    "SELECT * FROM system.live_queries",
];

#[tokio::test]
async fn every_read_path_shows_only_own_rows() {
    let f = fixture().await;
    for sql in READ_PATHS {
        let a = text(&f.a, sql).await;
        let b = text(&f.b, sql).await;
        assert!(!a.contains("b-"), "u_a saw u_b's rows via `{sql}`:\n{a}");
        assert!(!b.contains("a-"), "u_b saw u_a's rows via `{sql}`:\n{b}");
    }
    assert_eq!(ints(&f.a, "SELECT count(*) FROM app.m").await, vec![3]);
    assert_eq!(ints(&f.b, "SELECT count(*) FROM app.m").await, vec![2]);
    assert_eq!(
        strs(&f.a, "SELECT body FROM app.m ORDER BY id", 0).await,
        vec!["a-1", "a-2", "a-3"]
    );
    // EXPLAIN ANALYZE reports the rows the scan produced: only the caller's.
    let plan = text(
        &f.b,
        "EXPLAIN ANALYZE SELECT body FROM app.m WHERE body IS NOT NULL",
    )
    .await;
    assert!(plan.contains("output_rows=2"), "{plan}");
    // Root sees no user's rows without EXECUTE AS USER (its own partition is empty).
    assert_eq!(ints(&f.root, "SELECT count(*) FROM app.m").await, vec![0]);
    // information_schema: u_a does not see the PRIVATE shared table's name.
    let tables = text(
        &f.a,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'app'",
    )
    .await;
    assert!(
        tables.contains("rooms") && !tables.contains("secret"),
        "{tables}"
    );
}

#[tokio::test]
async fn prepared_statements_are_isolated_and_owned() {
    let f = fixture().await;
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![0]))],
    )
    .unwrap();
    for (client, expect) in [
        (&f.a, vec!["a-1", "a-2", "a-3"]),
        (&f.b, vec!["b-1", "b-2"]),
    ] {
        let mut p = client
            .prepare("SELECT body FROM app.m WHERE id > $1 ORDER BY id")
            .await
            .unwrap();
        p.bind(params.clone());
        assert_eq!(strings(&p.query_collect().await.unwrap(), 0), expect);
        p.close().await.unwrap();
    }
    // A handle replayed with another user's token is not found.
    let mut p = f.a.prepare("SELECT body FROM app.m").await.unwrap();
    let stolen = f.b.clone().with_bearer_token(f.b.token().unwrap()).unwrap();
    let info = f.a.query_info("SELECT body FROM app.m").await.unwrap();
    let err = match stolen.fetch(info) {
        Ok(mut s) => {
            use futures::StreamExt;
            s.next().await.expect("an item").expect_err("must fail")
        }
        Err(e) => e,
    };
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    let handle = p.handle().clone();
    let mut raw = arrow_flight::sql::client::FlightSqlServiceClient::new(
        tonic::transport::Channel::from_shared(f.server.url().replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.set_token(f.b.token().unwrap().to_string());
    use arrow_flight::sql::ProstMessageExt;
    use prost::Message;
    let cmd = arrow_flight::sql::CommandPreparedStatementQuery {
        prepared_statement_handle: handle,
    };
    let err = raw
        .do_get(arrow_flight::Ticket::new(cmd.as_any().encode_to_vec()))
        .await
        .expect_err("another user's handle must not work");
    assert!(err.to_string().contains("not found"), "{err}");
    assert_eq!(strings(&p.query_collect().await.unwrap(), 0).len(), 3);
}

#[tokio::test]
async fn two_hundred_interleaved_concurrent_queries() {
    let f = fixture().await;
    let queries = (0..200).map(|i| {
        let (client, marker, n) = if i % 2 == 0 {
            (&f.a, "a-", 3)
        } else {
            (&f.b, "b-", 2)
        };
        let sql = match i % 4 {
            0 | 1 => "SELECT body FROM app.m",
            _ => "SELECT m.body FROM app.m m JOIN app.rooms r ON m.room = r.id",
        };
        async move {
            let rows = strs(client, sql, 0).await;
            assert_eq!(rows.len(), n, "{sql}");
            assert!(rows.iter().all(|r| r.starts_with(marker)), "{rows:?}");
        }
    });
    join_all(queries).await;
}

#[tokio::test]
async fn updates_and_deletes_touch_only_own_rows() {
    let f = fixture().await;
    assert_eq!(
        f.a.execute("UPDATE app.m SET body = 'a-x' WHERE id <= 2")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        f.a.execute("DELETE FROM app.m WHERE id >= 0")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        strs(&f.b, "SELECT body FROM app.m ORDER BY id", 0).await,
        vec!["b-1", "b-2"]
    );
    assert_eq!(
        f.b.execute("UPDATE app.m SET body = 'b-z' WHERE id = 3")
            .await
            .unwrap(),
        0,
        "no such row of u_b"
    );
    // EXECUTE AS USER (service) acts on the named user's rows only.
    assert_eq!(
        f.svc
            .execute("EXECUTE AS USER 'u_b' DELETE FROM app.m WHERE id = 1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(ints(&f.b, "SELECT id FROM app.m").await, vec![2]);
}
