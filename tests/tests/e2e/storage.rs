//! Durability: acknowledged writes survive restarts and crashes (SIGKILL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kalam_tests::TestServer;

use crate::common::{PW, fixture, i64s, ints, strs};

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

/// Concurrent writers, SIGKILL at a varying moment, restart: every acknowledged row is there
/// exactly once and no statement is half-applied.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    const ROUNDS: u64 = 6;
    const WRITERS: u64 = 4;
    let server = TestServer::start().unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE crash").await.unwrap();
    root.execute("CREATE SHARED TABLE crash.t (id BIGINT PRIMARY KEY, stmt BIGINT, v TEXT)")
        .await
        .unwrap();
    drop(root);
    let mut server = server;
    // statement id → rows acknowledged (3 per statement).
    let acked: Arc<Mutex<HashMap<i64, ()>>> = Arc::default();
    for round in 0..ROUNDS {
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
        for t in tasks {
            t.await.unwrap();
        }
        server = TestServer::start_in(dir, &[]).unwrap();
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
}
