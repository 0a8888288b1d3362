//! Data sets the subcommands load: users, a USER table with rows per user, sessions.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt, stream};
use kalam_client::KalamClient;

use crate::common::Target;

/// Password of every benchmark user.
pub(crate) const PW: &str = "bench-user-pw";

/// Statements in flight at once while loading.
const LOAD_PARALLEL: usize = 4;

/// Creates users `u{first}..u{last}` (role user); returns the seconds it took.
pub(crate) async fn create_users(target: &Target, first: usize, last: usize) -> Result<f64> {
    let t = Instant::now();
    stream::iter(first..last)
        .map(|u| {
            let root = target.root.clone();
            async move {
                root.execute(&format!("CREATE USER u{u} WITH PASSWORD '{PW}' ROLE user"))
                    .await
            }
        })
        .buffer_unordered(LOAD_PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(t.elapsed().as_secs_f64())
}

/// `CREATE USER TABLE ns.table (id BIGINT PRIMARY KEY, room TEXT, body TEXT)`, the table the
/// point-query figures use.
pub(crate) async fn create_messages(target: &Target, table: &str) -> Result<()> {
    target
        .root
        .execute(&format!(
            "CREATE USER TABLE {table} (id BIGINT PRIMARY KEY, room TEXT, body TEXT)"
        ))
        .await?;
    Ok(())
}

/// Writes rows `0..rows` for each user `u{first}..u{last}` into the messages `table`, one
/// `EXECUTE AS USER … INSERT … SELECT … FROM range(…)` per user; returns the seconds it took.
///
/// Row `i` of user `u` is `(i, 'room-{i % 10}', 'message {i} of user u{u}')`, which
/// [`check_message`] verifies.
pub(crate) async fn load_messages(
    target: &Target,
    table: &str,
    first: usize,
    last: usize,
    rows: usize,
) -> Result<f64> {
    let t = Instant::now();
    stream::iter(first..last)
        .map(|u| {
            let root = target.root.clone();
            let sql = format!(
                "EXECUTE AS USER 'u{u}' INSERT INTO {table} \
                 SELECT value, concat('room-', CAST(value % 10 AS VARCHAR)), \
                 concat('message ', CAST(value AS VARCHAR), ' of user u{u}') FROM range(0, {rows})"
            );
            async move { root.execute(&sql).await }
        })
        .buffer_unordered(LOAD_PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Bearer tokens of users `users` (each login runs argon2 on the server, so few are needed).
pub(crate) async fn sessions(target: &Target, users: &[usize]) -> Result<Vec<(usize, String)>> {
    stream::iter(users.iter().copied())
        .map(|u| {
            let mut c = target.root.clone();
            async move {
                c.login(&format!("u{u}"), PW).await?;
                let token = c.token().context("login gave no token")?.to_string();
                Ok::<_, anyhow::Error>((u, token))
            }
        })
        .buffer_unordered(LOAD_PARALLEL)
        .try_collect()
        .await
}

/// Point query of the messages table by key, checked: exactly row `key` of user `u{user}`.
pub(crate) async fn point_query(
    client: &KalamClient,
    table: &str,
    user: usize,
    key: u64,
) -> Result<()> {
    let batches = client
        .query_collect(&format!(
            "SELECT id, room, body FROM {table} WHERE id = {key}"
        ))
        .await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        bail!("u{user}: no row for id {key}")
    };
    if rows != 1 {
        bail!("u{user}: {rows} rows for id {key}");
    }
    check_message(b.column(0).as_ref(), b.column(2).as_ref(), user, key)
}

fn check_message(id: &dyn Array, body: &dyn Array, user: usize, key: u64) -> Result<()> {
    let id = id
        .as_primitive_opt::<arrow::datatypes::Int64Type>()
        .context("id is not BIGINT")?
        .value(0);
    let body = body
        .as_string_opt::<i32>()
        .context("body is not Utf8")?
        .value(0);
    if id as u64 != key || body != format!("message {key} of user u{user}") {
        bail!("u{user} asked for id {key}, got ({id}, {body:?})");
    }
    Ok(())
}

/// Rows per generated batch.
pub(crate) const BATCH_ROWS: usize = 65_536;

/// (id BIGINT, v BIGINT, body TEXT): the bulk-load and scan table.
pub(crate) fn hex_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("body", DataType::Utf8, true),
    ]))
}

/// Rows `first..first + n`: bodies are 100 hex characters from a xorshift of the id.
pub(crate) fn hex_rows(
    schema: &SchemaRef,
    first: usize,
    n: usize,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let ids = (first..first + n).map(|i| i as i64);
    let bodies = (first..first + n).map(|i| {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut s = String::with_capacity(100);
        while s.len() < 100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        s.truncate(100);
        s
    });
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int64Array::from_iter_values(ids.map(|i| i * 7))),
            Arc::new(StringArray::from_iter_values(bodies)),
        ],
    )
}

/// Bulk-loads `rows` of [`hex_rows`] into a new table `ns.table` in one atomic
/// `CommandStatementIngest` streamed in 64k-row batches; returns the seconds it took.
pub(crate) async fn bulk_ingest(
    target: &Target,
    ns: &str,
    table: &str,
    rows: usize,
) -> Result<f64> {
    let schema = hex_schema();
    let gen_schema = Arc::clone(&schema);
    let batches = stream::iter((0..rows).step_by(BATCH_ROWS)).map(move |first| {
        hex_rows(&gen_schema, first, BATCH_ROWS.min(rows - first))
            .map_err(kalam_client::Error::from)
    });
    let t = Instant::now();
    let ingested = target
        .root
        .ingest_stream(
            table,
            Some(ns),
            kalam_client::IngestMode::Create,
            schema,
            batches,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    if ingested as usize != rows {
        bail!("ingested {ingested} rows into {ns}.{table}, expected {rows}");
    }
    Ok(secs)
}
