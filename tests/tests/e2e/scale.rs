//! One SessionContext under load, and streaming results with bounded server memory.

use futures::StreamExt;
use futures::future::join_all;

use crate::common::{fixture, ints};

#[tokio::test]
async fn one_session_context_after_ten_thousand_queries() {
    let f = fixture().await;
    let clients = vec![
        f.a.clone(),
        f.b.clone(),
        f.a.clone(),
        f.b.clone(),
        f.a.clone(),
        f.b.clone(),
        f.a.clone(),
        f.b.clone(),
    ];
    let tasks = clients.into_iter().enumerate().map(|(i, c)| async move {
        let expect = if i % 2 == 0 { 3 } else { 2 };
        for q in 0..1250 {
            let sql = if q % 2 == 0 {
                "SELECT count(*) FROM app.m"
            } else {
                "SELECT count(*) FROM app.m WHERE id > 0"
            };
            assert_eq!(ints(&c, sql).await, vec![expect]);
        }
    });
    join_all(tasks).await;
    let n = ints(
        &f.root,
        "SELECT value FROM system.stats WHERE name = 'session_contexts_created'",
    )
    .await;
    assert_eq!(n, vec![1]);
    let started = ints(
        &f.root,
        "SELECT value FROM system.stats WHERE name = 'queries_started'",
    )
    .await;
    assert!(started[0] >= 10_000, "{started:?}");
}

#[tokio::test]
async fn large_result_streams_with_bounded_server_memory() {
    let f = fixture().await;
    let baseline = f.server.rss_bytes().unwrap();
    // ~24M rows × (8 B + 20 B string) ≈ 670 MB of data, produced and streamed batch by batch.
    let rows: i64 = 24_000_000;
    let sql = format!(
        "SELECT value, concat('row-', CAST(value AS VARCHAR)) AS label FROM range(0, {rows})"
    );
    let mut stream = f.a.query(&sql).await.unwrap();
    let (mut seen, mut bytes, mut peak) = (0i64, 0usize, baseline);
    let mut batches = 0u64;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        seen += b.num_rows() as i64;
        bytes += b.get_array_memory_size();
        batches += 1;
        if batches.is_multiple_of(64) {
            peak = peak.max(f.server.rss_bytes().unwrap());
        }
    }
    assert_eq!(seen, rows);
    assert!(bytes > 500 << 20, "streamed {bytes} bytes");
    let growth = peak.saturating_sub(baseline);
    // Bounded by batch size × channel depth, far below the result size.
    assert!(
        growth < 200 << 20,
        "server RSS grew {growth} bytes while streaming {bytes} bytes"
    );
}

#[tokio::test]
async fn cancel_flight_info_stops_a_running_query() {
    let f = fixture().await;
    // Far too much work to finish during the test.
    let info =
        f.a.query_info("SELECT sum(value % 7) FROM range(0, 1000000000000)")
            .await
            .unwrap();
    let stream = f.a.fetch(info.clone()).unwrap();
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item);
        }
        last
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = f.a.cancel(&info).await.unwrap();
        if status == kalam_client::CancelStatus::Cancelled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "query never became cancellable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let last = reader
        .await
        .unwrap()
        .expect("stream ends with an error item");
    let err = last.expect_err("cancelled stream ends with an error");
    assert_eq!(err.code(), Some(tonic::Code::Cancelled), "{err}");
    // Another user cannot cancel it, and the server keeps serving.
    assert_eq!(
        f.b.cancel(&info).await.unwrap(),
        kalam_client::CancelStatus::NotCancellable
    );
    assert_eq!(ints(&f.a, "SELECT count(*) FROM app.m").await, vec![3]);
}

#[tokio::test]
async fn sorts_spill_under_a_small_memory_limit() {
    let server = kalam_tests::TestServer::start_with(&["--memory-limit", "32MiB"]).unwrap();
    let root = server.root().await.unwrap();
    // ~3M rows × ~30 B to sort: far above 32 MiB, so the sort must spill to data-dir/spill.
    let sql = "SELECT value, concat('v-', CAST(value AS VARCHAR)) AS s FROM range(0, 3000000) ORDER BY s DESC LIMIT 3";
    let rows = crate::common::strs(&root, sql, 1).await;
    assert_eq!(rows, vec!["v-999999", "v-999998", "v-999997"]);
    // A full sort streamed to the client: without spilling it would fail with RESOURCE_EXHAUSTED.
    let sql = "SELECT concat('v-', CAST(value AS VARCHAR)) AS s FROM range(0, 3000000) ORDER BY s";
    let mut stream = root.query(sql).await.unwrap();
    let (mut n, mut prev) = (0usize, String::new());
    while let Some(b) = stream.next().await {
        for s in crate::common::strings(&[b.unwrap()], 0) {
            assert!(s >= prev, "out of order: {prev} then {s}");
            prev = s;
            n += 1;
        }
    }
    assert_eq!(n, 3_000_000);
}
