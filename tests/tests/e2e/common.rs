use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::util::pretty::pretty_format_batches;
use kalam_client::KalamClient;
use kalam_tests::TestServer;

pub(crate) const PW: &str = "pw-of-test-users";

/// A server with namespace `app`, USER table `app.m`, PUBLIC shared `app.rooms`, PRIVATE shared
/// `app.secret`, users `u_a`, `u_b` (role user) and `svc` (role service), and rows:
/// u_a: ids 1..=3 with body `a-<id>`; u_b: ids 1..=2 with body `b-<id>`.
pub(crate) struct Fixture {
    pub server: TestServer,
    pub root: KalamClient,
    pub a: KalamClient,
    pub b: KalamClient,
    pub svc: KalamClient,
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(&[]).await
}

/// [`fixture`] on a server started with `args` (e.g. S3 storage flags).
pub(crate) async fn fixture_with(args: &[&str]) -> Fixture {
    let server = TestServer::start_with(args).expect("server starts");
    let root = server.root().await.expect("root login");
    for sql in [
        "CREATE NAMESPACE app",
        "CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, room TEXT, body TEXT)",
        "CREATE SHARED TABLE app.rooms (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')",
        "CREATE SHARED TABLE app.secret (id BIGINT PRIMARY KEY, v TEXT)",
        &format!("CREATE USER u_a WITH PASSWORD '{PW}' ROLE user"),
        &format!("CREATE USER u_b WITH PASSWORD '{PW}' ROLE user"),
        &format!("CREATE USER svc WITH PASSWORD '{PW}' ROLE service"),
        "INSERT INTO app.rooms VALUES ('r1', 'Room one'), ('r2', 'Room two')",
        "INSERT INTO app.secret VALUES (1, 'classified')",
    ] {
        root.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let a = server.client("u_a", PW).await.expect("u_a login");
    let b = server.client("u_b", PW).await.expect("u_b login");
    let svc = server.client("svc", PW).await.expect("svc login");
    assert_eq!(
        a.execute("INSERT INTO app.m VALUES (1, 'r1', 'a-1'), (2, 'r2', 'a-2'), (3, 'r1', 'a-3')")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        b.execute("INSERT INTO app.m VALUES (1, 'r1', 'b-1'), (2, 'r2', 'b-2')")
            .await
            .unwrap(),
        2
    );
    Fixture {
        server,
        root,
        a,
        b,
        svc,
    }
}

/// Query result as an aligned text table.
pub(crate) async fn text(c: &KalamClient, sql: &str) -> String {
    let batches = c
        .query_collect(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// First column as i64s.
pub(crate) fn i64s(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
            c.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// A column as strings.
pub(crate) fn strings(batches: &[RecordBatch], col: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8).unwrap();
            let s = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..s.len())
                .map(move |i| s.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `sql`'s first column as i64s (the query must succeed).
pub(crate) async fn ints(c: &KalamClient, sql: &str) -> Vec<i64> {
    i64s(
        &c.query_collect(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

/// Column `col` of `sql`'s result as strings (the query must succeed).
pub(crate) async fn strs(c: &KalamClient, sql: &str, col: usize) -> Vec<String> {
    strings(
        &c.query_collect(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
        col,
    )
}

pub(crate) fn code(e: &kalam_client::Error) -> tonic::Code {
    e.code()
        .unwrap_or_else(|| panic!("not a server status: {e}"))
}
