//! Live queries over DoExchange, through `kalam-client`'s `subscribe`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, StringArray, UInt64Array};
use futures::StreamExt;
use kalam_client::{EventKind, KalamClient, LiveEvent, SubscribeOptions, Subscription};
use kalam_tests::TestServer;

use crate::common::{PW, fixture, ints};

const WAIT: Duration = Duration::from_secs(20);

fn opts(snapshot: bool) -> SubscribeOptions {
    SubscribeOptions {
        snapshot,
        heartbeat_ms: 200,
        ..Default::default()
    }
}

/// (id, `_change_type`, `_seq`) of an event's rows; `id` is the first column.
fn rows(e: &LiveEvent) -> Vec<(i64, String, u64)> {
    let Some(b) = &e.batch else { return vec![] };
    let id = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
    let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
    let n = b.num_columns();
    let seq = b
        .column(n - 2)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap();
    let kind = b
        .column(n - 1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..b.num_rows())
        .map(|i| (id.value(i), kind.value(i).to_string(), seq.value(i)))
        .collect()
}

/// Reads events until `n` change rows arrived (or fails after [`WAIT`]).
async fn changes(sub: &mut Subscription, n: usize) -> Vec<(i64, String, u64)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} changes arrived: {out:?}", out.len()))
            .expect("stream ended")
            .expect("stream failed");
        if e.kind == EventKind::Changes {
            out.extend(rows(&e));
        }
    }
    out
}

/// Reads the snapshot up to CURRENT; returns its rows and the snapshot seq.
async fn snapshot(sub: &mut Subscription) -> (Vec<(i64, String, u64)>, u64) {
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("snapshot timed out")
            .expect("stream ended")
            .expect("stream failed");
        match e.kind {
            EventKind::Snapshot => out.extend(rows(&e)),
            EventKind::Current => return (out, e.seq),
            other => panic!("{other:?} before CURRENT"),
        }
    }
}

/// Waits for the stream to end with an error and returns its gRPC code and message.
async fn ends_with(sub: &mut Subscription) -> (tonic::Code, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Err(_) => panic!("stream did not end"),
            Ok(None) => panic!("stream ended without a status"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => {
                let status = e.status().expect("a gRPC status").clone();
                return (status.code(), status.message().to_string());
            }
        }
    }
}

#[tokio::test]
async fn inserts_updates_deletes_arrive_in_order_with_their_types() {
    let f = fixture().await;
    let mut sub =
        f.a.subscribe("SELECT id, body FROM app.m", opts(true))
            .await
            .unwrap();
    let (snap, s) = snapshot(&mut sub).await;
    assert_eq!(
        snap.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
        vec![(1, "snapshot"), (2, "snapshot"), (3, "snapshot")]
    );
    assert!(snap.iter().all(|r| r.2 <= s));
    f.a.execute("INSERT INTO app.m VALUES (10, 'r1', 'ten'), (11, 'r1', 'eleven')")
        .await
        .unwrap();
    f.a.execute("UPDATE app.m SET body = 'TEN' WHERE id = 10")
        .await
        .unwrap();
    f.a.execute("DELETE FROM app.m WHERE id = 11")
        .await
        .unwrap();
    let got = changes(&mut sub, 4).await;
    let kinds: Vec<(i64, &str)> = got.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (10, "insert"),
            (11, "insert"),
            (10, "update"),
            (11, "delete")
        ]
    );
    assert!(
        got.windows(2).all(|w| w[0].2 < w[1].2),
        "strictly increasing _seq: {got:?}"
    );
    assert!(got[0].2 > s, "changes come after the snapshot position");
    // The other user's writes never reach this subscription.
    f.b.execute("INSERT INTO app.m VALUES (50, 'r1', 'b-50')")
        .await
        .unwrap();
    f.a.execute("INSERT INTO app.m VALUES (12, 'r1', 'twelve')")
        .await
        .unwrap();
    assert_eq!(changes(&mut sub, 1).await[0].0, 12);
    // system.live_queries shows it to its owner only.
    let mine = ints(&f.a, "SELECT count(*) FROM system.live_queries").await;
    let theirs = ints(&f.b, "SELECT count(*) FROM system.live_queries").await;
    assert_eq!((mine[0], theirs[0]), (1, 0));
}

#[tokio::test]
async fn where_filter_turns_moves_into_inserts_and_deletes() {
    let f = fixture().await;
    let mut sub =
        f.a.subscribe("SELECT id, room FROM app.m WHERE room = 'r9'", opts(false))
            .await
            .unwrap();
    let (snap, _) = snapshot(&mut sub).await;
    assert!(snap.is_empty());
    f.a.execute("INSERT INTO app.m VALUES (20, 'r1', 'x'), (21, 'r9', 'y')")
        .await
        .unwrap();
    f.a.execute("UPDATE app.m SET room = 'r9' WHERE id = 20") // enters
        .await
        .unwrap();
    f.a.execute("UPDATE app.m SET body = 'z' WHERE id = 21") // stays
        .await
        .unwrap();
    f.a.execute("UPDATE app.m SET room = 'r1' WHERE id = 21") // leaves
        .await
        .unwrap();
    f.a.execute("UPDATE app.m SET body = 'w' WHERE id = 1") // never in
        .await
        .unwrap();
    let got: Vec<(i64, String)> = changes(&mut sub, 4)
        .await
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(
        got,
        vec![
            (21, "insert".into()),
            (20, "insert".into()),
            (21, "update".into()),
            (21, "delete".into())
        ]
    );
}

#[tokio::test]
async fn snapshot_under_concurrent_writes_has_every_row_once() {
    let f = fixture().await;
    let writer = f.a.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut id = 1000;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            writer
                .execute(&format!(
                    "INSERT INTO app.m VALUES ({id}, 'r1', 'w'), ({}, 'r1', 'w')",
                    id + 1
                ))
                .await
                .unwrap();
            id += 2;
        }
        id
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub =
        f.a.subscribe("SELECT id FROM app.m", opts(true))
            .await
            .unwrap();
    let (snap, _) = snapshot(&mut sub).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let next_id = task.await.unwrap();
    let expected: BTreeSet<i64> = [1, 2, 3].into_iter().chain(1000..next_id).collect();
    let mut seen: Vec<i64> = snap.iter().map(|r| r.0).collect();
    let want_changes = expected.len() - seen.len();
    seen.extend(changes(&mut sub, want_changes).await.iter().map(|r| r.0));
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a row arrived twice");
    assert_eq!(unique, expected, "a row is missing");
}

#[tokio::test]
async fn shared_tables_stream_to_readers_and_forbidden_tables_are_refused() {
    let f = fixture().await;
    let mut a =
        f.a.subscribe("SELECT id, title FROM app.rooms", opts(false))
            .await
            .unwrap();
    let mut b =
        f.b.subscribe("SELECT id FROM app.rooms", opts(false))
            .await
            .unwrap();
    snapshot(&mut a).await;
    snapshot(&mut b).await;
    f.svc
        .execute("INSERT INTO app.rooms VALUES ('r7', 'Room seven')")
        .await
        .unwrap();
    for sub in [&mut a, &mut b] {
        let e = loop {
            let e = sub.next().await.unwrap().unwrap();
            if e.kind == EventKind::Changes {
                break e;
            }
        };
        let batch = e.batch.unwrap();
        let id = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(id.value(0), "r7");
    }
    for (sql, code) in [
        ("SELECT id FROM app.secret", tonic::Code::PermissionDenied),
        (
            "SELECT name FROM system.users",
            tonic::Code::PermissionDenied,
        ),
        (
            "SELECT id FROM system.live_queries",
            tonic::Code::InvalidArgument,
        ),
        ("SELECT id FROM app.nope", tonic::Code::NotFound),
        ("SELEKT id FROM app.m", tonic::Code::InvalidArgument),
        (
            "SELECT room, count(*) FROM app.m GROUP BY room",
            tonic::Code::InvalidArgument,
        ),
        (
            "SELECT m.id FROM app.m m JOIN app.rooms r ON m.room = r.id",
            tonic::Code::InvalidArgument,
        ),
        ("SELECT id + 1 FROM app.m", tonic::Code::InvalidArgument),
        ("DROP TABLE app.m", tonic::Code::InvalidArgument),
    ] {
        let err = f.a.subscribe(sql, opts(false)).await.err();
        let err = err.unwrap_or_else(|| panic!("{sql} was accepted"));
        assert_eq!(err.code(), Some(code), "{sql}: {err}");
    }
    assert_eq!(
        ints(&f.root, "SELECT count(*) FROM system.live_queries").await,
        vec![2],
        "refused subscriptions leave nothing registered"
    );
}

#[tokio::test]
async fn resume_replays_without_gap_or_duplicate_and_old_positions_fail() {
    let f = fixture().await;
    let mut sub =
        f.a.subscribe("SELECT id FROM app.m", opts(false))
            .await
            .unwrap();
    snapshot(&mut sub).await;
    f.a.execute("INSERT INTO app.m VALUES (30, 'r1', 'x')")
        .await
        .unwrap();
    let first = changes(&mut sub, 1).await;
    let last_seen = first[0].2;
    drop(sub); // disconnect
    f.a.execute("INSERT INTO app.m VALUES (31, 'r1', 'x'), (32, 'r1', 'x')")
        .await
        .unwrap();
    f.a.execute("DELETE FROM app.m WHERE id = 30")
        .await
        .unwrap();
    let mut resumed =
        f.a.subscribe(
            "SELECT id FROM app.m",
            SubscribeOptions {
                resume_after_seq: Some(last_seen),
                heartbeat_ms: 200,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (snap, _) = snapshot(&mut resumed).await;
    assert!(snap.is_empty(), "resume sends no snapshot");
    f.a.execute("INSERT INTO app.m VALUES (33, 'r1', 'x')")
        .await
        .unwrap();
    let got: Vec<(i64, String)> = changes(&mut resumed, 4)
        .await
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(
        got,
        vec![
            (31, "insert".into()),
            (32, "insert".into()),
            (30, "delete".into()),
            (33, "insert".into())
        ]
    );
    let after_all = changes_seq_max(&f.a).await;
    // Across a restart the WAL still holds the changes: resuming replays them from disk.
    drop((resumed, f.b, f.svc));
    let root = f.root;
    drop(root);
    drop(f.a);
    let (_, dir) = f.server.stop().unwrap();
    let server = TestServer::start_in(
        dir,
        &["--wal-segment-bytes", "4KiB", "--live-retention-bytes", "1"],
    )
    .unwrap();
    let a = server.client("u_a", PW).await.unwrap();
    let mut again = a
        .subscribe(
            "SELECT id FROM app.m",
            SubscribeOptions {
                resume_after_seq: Some(last_seen),
                heartbeat_ms: 200,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    snapshot(&mut again).await;
    let replayed: Vec<(i64, String)> = changes(&mut again, 4)
        .await
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(
        replayed,
        vec![
            (31, "insert".into()),
            (32, "insert".into()),
            (30, "delete".into()),
            (33, "insert".into())
        ],
        "replayed from the WAL after a restart"
    );
    drop(again);
    // Once everything is flushed and the WAL segments are gone, the position is too old.
    let body = "x".repeat(400);
    for i in 0..30 {
        a.execute(&format!(
            "INSERT INTO app.m VALUES ({}, 'r1', '{body}')",
            100 + i
        ))
        .await
        .unwrap();
    }
    let root = server.root().await.unwrap();
    for t in ["app.m", "app.rooms", "app.secret"] {
        root.execute(&format!("FLUSH TABLE {t}")).await.unwrap();
    }
    let err = a
        .subscribe(
            "SELECT id FROM app.m",
            SubscribeOptions {
                resume_after_seq: Some(after_all),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("too old");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("resume position too old"), "{err}");
}

/// The highest `_seq` of the caller's rows.
async fn changes_seq_max(c: &KalamClient) -> u64 {
    ints(c, "SELECT max(_seq) FROM app.m").await[0] as u64
}

#[tokio::test]
async fn kill_and_drop_table_end_streams_with_their_codes() {
    let f = fixture().await;
    f.root
        .execute("CREATE USER TABLE app.u (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let mut killed =
        f.a.subscribe("SELECT id FROM app.m", opts(false))
            .await
            .unwrap();
    let mut dropped =
        f.a.subscribe("SELECT id FROM app.u", opts(false))
            .await
            .unwrap();
    snapshot(&mut killed).await;
    snapshot(&mut dropped).await;
    let id = killed.id().unwrap().to_string();
    // Only the owner (or a dba) can kill it.
    let err =
        f.b.execute(&format!("KILL LIVE QUERY '{id}'"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    f.a.execute(&format!("KILL LIVE QUERY '{id}'"))
        .await
        .unwrap();
    assert_eq!(ends_with(&mut killed).await.0, tonic::Code::Cancelled);
    f.root.execute("DROP TABLE app.u").await.unwrap();
    assert_eq!(ends_with(&mut dropped).await.0, tonic::Code::Aborted);
    assert_eq!(
        ints(&f.root, "SELECT count(*) FROM system.live_queries").await,
        vec![0]
    );
}

#[tokio::test]
async fn token_expiry_ends_the_stream_unauthenticated() {
    let server = TestServer::start_with(&["--token-ttl-secs", "2"]).unwrap();
    let root = server.root().await.unwrap();
    for sql in [
        "CREATE NAMESPACE k",
        "CREATE USER TABLE k.t (id BIGINT PRIMARY KEY)",
        &format!("CREATE USER ka WITH PASSWORD '{PW}' ROLE user"),
    ] {
        root.execute(sql).await.unwrap();
    }
    let a = server.client("ka", PW).await.unwrap();
    let mut expiring = a
        .subscribe("SELECT id FROM k.t", opts(false))
        .await
        .unwrap();
    let (code, msg) = ends_with(&mut expiring).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
}

#[tokio::test]
async fn a_stalled_subscriber_ends_with_its_position_and_others_keep_up() {
    let f = fixture().await;
    // Never polled after the first message: its queue fills while the other one keeps up.
    // (Its own connection: unread data must not hold the other stream's HTTP/2 window.)
    let slow = f.server.client("u_a", PW).await.unwrap();
    let mut stalled = slow
        .subscribe("SELECT id, body FROM app.m", opts(false))
        .await
        .unwrap();
    let mut live =
        f.a.subscribe("SELECT id FROM app.m", opts(false))
            .await
            .unwrap();
    snapshot(&mut live).await;
    let body = "x".repeat(2000);
    let writer = f.a.clone();
    let task = tokio::spawn(async move {
        for i in 0..1500i64 {
            let rows: Vec<String> = (0..10)
                .map(|j| format!("({}, 'r1', '{body}')", 10_000 + i * 10 + j))
                .collect();
            writer
                .execute(&format!("INSERT INTO app.m VALUES {}", rows.join(",")))
                .await
                .unwrap();
        }
    });
    let got = changes(&mut live, 15_000).await;
    task.await.unwrap();
    assert_eq!(got.len(), 15_000, "the live subscriber got everything");
    let (code, msg) = ends_with(&mut stalled).await;
    assert_eq!(code, tonic::Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("last delivered seq"), "{msg}");
    let rss = f.server.rss_bytes().unwrap();
    assert!(rss < 512 << 20, "server RSS {} MiB", rss >> 20);
}

#[tokio::test]
async fn a_thousand_subscriptions_come_and_go_without_a_trace() {
    let f = fixture().await;
    let a: KalamClient = f.a.clone();
    let cycle = |n: usize| {
        let a = a.clone();
        async move {
            for _ in 0..n / 50 {
                let mut subs = Vec::new();
                for _ in 0..50 {
                    subs.push(
                        a.subscribe("SELECT id FROM app.m WHERE id > 1", opts(true))
                            .await
                            .unwrap(),
                    );
                }
                for s in &mut subs {
                    snapshot(s).await;
                }
            }
        }
    };
    cycle(200).await; // warm-up
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = f.server.rss_bytes().unwrap();
    cycle(1000).await;
    let deadline = Instant::now() + WAIT;
    while ints(&f.root, "SELECT count(*) FROM system.live_queries").await != vec![0] {
        assert!(Instant::now() < deadline, "subscriptions left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = f.server.rss_bytes().unwrap();
    assert!(
        after < base + (16 << 20),
        "RSS grew from {} to {} MiB",
        base >> 20,
        after >> 20
    );
}
