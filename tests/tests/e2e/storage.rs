//! Durability: acknowledged writes survive restarts and crashes (SIGKILL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kalam_tests::TestServer;

use crate::common::{PW, fixture, fixture_with, i64s, ints, strs};

#[tokio::test]
async fn rows_survive_a_restart() {
    let f = fixture().await;
    f.a.execute("UPDATE app.m SET body = 'a-2x' WHERE id = 2")
        .await
        .unwrap();
    f.a.execute("DELETE FROM app.m WHERE id = 3").await.unwrap();
    f.svc
        .execute("INSERT INTO app.rooms VALUES ('r3', 'Room three')")
        .await
        .unwrap();
    let max_seq = ints(&f.a, "SELECT max(_seq) FROM app.m").await[0];
    let token_a = f.a.token().unwrap().to_string();
    drop((f.a, f.b, f.svc, f.root));
    let (code, dir) = f.server.stop().unwrap();
    assert_eq!(code, 0);

    let server = TestServer::start_in(dir, &[]).unwrap();
    // A token issued before the restart still works (the signing key is in the data dir).
    let old = kalam_client::KalamClient::connect(&server.url())
        .await
        .unwrap()
        .with_bearer_token(token_a)
        .unwrap();
    assert_eq!(ints(&old, "SELECT count(*) FROM app.m").await, vec![2]);
    let a = server.client("u_a", PW).await.unwrap();
    let b = server.client("u_b", PW).await.unwrap();
    assert_eq!(
        strs(&a, "SELECT body FROM app.m ORDER BY id", 0).await,
        vec!["a-1", "a-2x"]
    );
    assert_eq!(
        strs(&b, "SELECT body FROM app.m ORDER BY id", 0).await,
        vec!["b-1", "b-2"]
    );
    assert_eq!(ints(&a, "SELECT count(*) FROM app.rooms").await, vec![3]);
    // A deleted row stays deleted; its key can be used again; _seq keeps increasing.
    a.execute("INSERT INTO app.m VALUES (3, 'r1', 'a-3 again')")
        .await
        .unwrap();
    let seq = ints(&a, "SELECT _seq FROM app.m WHERE id = 3").await[0];
    assert!(seq > max_seq, "{seq} <= {max_seq}");
    // Duplicate detection sees recovered rows.
    assert!(
        a.execute("INSERT INTO app.m VALUES (1, 'r1', 'dup')")
            .await
            .is_err()
    );
}

/// Concurrent writers and flushes (so compactions run too), SIGKILL at a varying moment,
/// restart, ten rounds: every acknowledged row is there exactly once and no statement is
/// half-applied, whether it was in the WAL, a flushed file or a compacted one.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    sigkill_rounds(&[], 10).await;
}

/// The crash test with tables in S3 (moto on loopback): five rounds.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill_on_s3() {
    let moto = kalam_tests::Moto::start().unwrap();
    moto.create_bucket("crash").unwrap();
    let args = moto.server_args("crash", "db");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sigkill_rounds(&args, 5).await;
}

async fn sigkill_rounds(args: &[&str], rounds: u64) {
    const WRITERS: u64 = 4;
    let server = TestServer::start_with(args).unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE crash").await.unwrap();
    root.execute("CREATE SHARED TABLE crash.t (id BIGINT PRIMARY KEY, stmt BIGINT, v TEXT)")
        .await
        .unwrap();
    drop(root);
    let mut server = server;
    // statement id → rows acknowledged (3 per statement).
    let acked: Arc<Mutex<HashMap<i64, ()>>> = Arc::default();
    let flushes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = server.root().await.unwrap();
            let acked = Arc::clone(&acked);
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let stmt = ((round * WRITERS + w) * 1_000_000 + i) as i64;
                    let sql = format!(
                        "INSERT INTO crash.t VALUES ({a}, {stmt}, 'x'), ({b}, {stmt}, 'y'), ({c}, {stmt}, 'z')",
                        a = stmt * 3,
                        b = stmt * 3 + 1,
                        c = stmt * 3 + 2
                    );
                    match client.execute(&sql).await {
                        Ok(3) => {
                            acked.lock().unwrap().insert(stmt, ());
                        }
                        Ok(n) => panic!("inserted {n} rows"),
                        Err(_) => break, // the server died under us: not acknowledged
                    }
                }
            }));
        }
        // Flush all the time, so the kill lands before, during and after flushes, manifest
        // commits, WAL truncation and (with more than 8 files) compactions.
        let flusher = {
            let client = server.root().await.unwrap();
            let flushes = Arc::clone(&flushes);
            tokio::spawn(async move {
                while client.execute("FLUSH TABLE crash.t").await.is_ok() {
                    flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            })
        };
        // Let writes flow for a varying moment, then crash.
        let wait = 150 + (round * 97) % 400;
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 5 {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let dir = server.kill9().unwrap();
        flusher.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        server = TestServer::start_in(dir, args).unwrap();
        let root = server.root().await.unwrap();
        let batches = root
            .query_collect("SELECT stmt, count(*) FROM crash.t GROUP BY stmt")
            .await
            .unwrap();
        let stmts = i64s(&batches);
        let counts: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let c =
                    arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Int64).unwrap();
                c.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(
            counts.iter().all(|c| *c == 3),
            "a statement was half-applied: {counts:?}"
        );
        let present: std::collections::HashSet<i64> = stmts.into_iter().collect();
        let missing: Vec<i64> = {
            let acked_now = acked.lock().unwrap();
            acked_now
                .keys()
                .filter(|s| !present.contains(s))
                .copied()
                .collect()
        };
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged statements lost: {missing:?}"
        );
        let total = ints(&root, "SELECT count(*) FROM crash.t").await[0];
        assert_eq!(total as usize, present.len() * 3, "duplicates");
    }
    assert!(acked.lock().unwrap().len() > 30);
    let flushes = flushes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(flushes > rounds, "only {flushes} flushes ran");
}

/// Rows flushed to Parquet, then updated and deleted in the buffer, then flushed again and
/// compacted: the newest version wins everywhere, deleted rows never come back, across a clean
/// restart and a SIGKILL.
#[tokio::test]
async fn flushed_updates_and_deletes_survive_compaction_and_restarts() {
    flushed_updates_and_deletes(&[]).await;
}

/// The same with tables in S3 (moto on loopback).
#[tokio::test]
async fn flushed_updates_and_deletes_survive_compaction_and_restarts_on_s3() {
    let moto = kalam_tests::Moto::start().unwrap();
    moto.create_bucket("flush").unwrap();
    let args = moto.server_args("flush", "db");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    flushed_updates_and_deletes(&args).await;
}

async fn flushed_updates_and_deletes(args: &[&str]) {
    let f = fixture_with(args).await;
    let values = |r: std::ops::Range<i64>, tag: &str| {
        r.map(|i| format!("({i}, 'r1', '{tag}-{i}')"))
            .collect::<Vec<_>>()
            .join(",")
    };
    f.a.execute(&format!(
        "INSERT INTO app.m VALUES {}",
        values(10..200, "a")
    ))
    .await
    .unwrap();
    f.root.execute("FLUSH TABLE app.m").await.unwrap();
    assert_eq!(
        f.a.execute("UPDATE app.m SET body = 'edited' WHERE id < 50")
            .await
            .unwrap(),
        43,
        "ids 1,2,3 and 10..49"
    );
    assert_eq!(
        f.a.execute("DELETE FROM app.m WHERE id >= 150")
            .await
            .unwrap(),
        50
    );
    assert!(
        f.a.execute("INSERT INTO app.m VALUES (100, 'r1', 'dup')")
            .await
            .is_err(),
        "key 100 is only in Parquet and must still be unique"
    );
    let check = |a: kalam_client::KalamClient,
                 b: kalam_client::KalamClient,
                 label: &'static str| async move {
        assert_eq!(
            ints(&a, "SELECT count(*) FROM app.m").await,
            vec![143],
            "{label}"
        );
        assert_eq!(
            ints(&a, "SELECT count(DISTINCT id) FROM app.m").await,
            vec![143],
            "{label}: one version per key"
        );
        assert_eq!(
            ints(&a, "SELECT count(*) FROM app.m WHERE body = 'edited'").await,
            vec![43],
            "{label}"
        );
        assert_eq!(
            ints(&a, "SELECT count(*) FROM app.m WHERE id >= 150").await,
            vec![0],
            "{label}: deleted rows stay deleted"
        );
        assert_eq!(
            strs(&a, "SELECT body FROM app.m WHERE id = 120", 0).await,
            vec!["a-120"],
            "{label}: point query on a flushed row"
        );
        assert_eq!(
            strs(&b, "SELECT body FROM app.m ORDER BY id", 0).await,
            vec!["b-1", "b-2"],
            "{label}: the other user is untouched"
        );
    };
    check(f.a.clone(), f.b.clone(), "buffer over parquet").await;
    // Nine more flushes leave more than eight files in u_a's bucket: compaction kicks in.
    for round in 0..9 {
        f.a.execute(&format!(
            "UPDATE app.m SET room = 'r{round}' WHERE id = {}",
            60 + round
        ))
        .await
        .unwrap();
        f.root.execute("FLUSH TABLE app.m").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ints(
        &f.root,
        "SELECT count(*) FROM system.jobs WHERE kind = 'compact' AND status = 'done'",
    )
    .await[0]
        == 0
    {
        assert!(Instant::now() < deadline, "no compaction ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(f.a.clone(), f.b.clone(), "compacted").await;
    drop((f.a, f.b, f.svc, f.root));
    let (code, dir) = f.server.stop().unwrap();
    assert_eq!(code, 0);
    let server = TestServer::start_in(dir, args).unwrap();
    let a = server.client("u_a", PW).await.unwrap();
    let b = server.client("u_b", PW).await.unwrap();
    check(a.clone(), b.clone(), "after restart").await;
    a.execute("DELETE FROM app.m WHERE id = 120").await.unwrap();
    let dir = server.kill9().unwrap();
    let server = TestServer::start_in(dir, args).unwrap();
    let a = server.client("u_a", PW).await.unwrap();
    assert_eq!(ints(&a, "SELECT count(*) FROM app.m").await, vec![142]);
    assert_eq!(
        ints(&a, "SELECT count(*) FROM app.m WHERE id = 120").await,
        vec![0],
        "a delete of a compacted row survives SIGKILL"
    );
}

/// Readers running while writers update and flushes and compactions swap files: every query
/// sees every key exactly once.
#[tokio::test]
async fn queries_see_each_key_once_during_flush_and_compaction() {
    const KEYS: i64 = 500;
    let server = TestServer::start().unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE c").await.unwrap();
    root.execute(
        "CREATE SHARED TABLE c.t (id BIGINT PRIMARY KEY, v BIGINT) WITH (ACCESS_LEVEL = 'PUBLIC')",
    )
    .await
    .unwrap();
    let rows: Vec<String> = (0..KEYS).map(|i| format!("({i}, 0)")).collect();
    root.execute(&format!("INSERT INTO c.t VALUES {}", rows.join(",")))
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..2i64 {
        let c = server.root().await.unwrap();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let lo = (i * 37 + w * 250) % KEYS;
                c.execute(&format!(
                    "UPDATE c.t SET v = v + 1 WHERE id >= {lo} AND id < {}",
                    lo + 20
                ))
                .await
                .unwrap();
                i += 1;
            }
        }));
    }
    {
        let c = server.root().await.unwrap();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute("FLUSH TABLE c.t").await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }
    let reader = server.root().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut checks = 0;
    while Instant::now() < deadline {
        let r = ints(&reader, "SELECT count(*), count(DISTINCT id) FROM c.t").await;
        assert_eq!(r[0], KEYS, "a key was missing or doubled");
        let distinct = i64s(
            &reader
                .query_collect("SELECT count(DISTINCT id) FROM c.t")
                .await
                .unwrap(),
        );
        assert_eq!(distinct, vec![KEYS]);
        checks += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let compactions = ints(
        &root,
        "SELECT count(*) FROM system.jobs WHERE kind = 'compact' AND status = 'done'",
    )
    .await[0];
    assert!(checks > 10, "{checks} checks");
    assert!(compactions > 0, "compaction ran during the test");
}

/// A write buffer far smaller than the data written: writers are slowed, never failed, and the
/// server's memory stays near the limit.
#[tokio::test]
async fn writers_wait_at_the_write_buffer_limit() {
    let server = TestServer::start_with(&["--write-buffer-limit", "4MiB"]).unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE bp").await.unwrap();
    root.execute("CREATE SHARED TABLE bp.t (id BIGINT PRIMARY KEY, body TEXT)")
        .await
        .unwrap();
    let body = "x".repeat(1000);
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let c = server.root().await.unwrap();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for s in 0..40i64 {
                let rows: Vec<String> = (0..250)
                    .map(|i| format!("({}, '{body}')", (w * 1000 + s) * 1000 + i))
                    .collect();
                c.execute(&format!("INSERT INTO bp.t VALUES {}", rows.join(",")))
                    .await
                    .expect("a writer at the limit waits, it does not fail");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ints(&root, "SELECT count(*) FROM bp.t").await, vec![40_000]);
    let stats = ints(
        &root,
        "SELECT value FROM system.stats WHERE name IN ('write_stalls', 'flushes') ORDER BY name",
    )
    .await;
    assert!(stats[0] > 0, "flushes: {stats:?}");
    let rss = server.rss_bytes().unwrap();
    assert!(
        rss < 400 << 20,
        "RSS {} MiB for 40 MB written through a 4 MiB buffer",
        rss >> 20
    );
}
