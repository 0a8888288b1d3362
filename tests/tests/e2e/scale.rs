//! One SessionContext under load, and streaming results with bounded server memory.

use futures::StreamExt;
use futures::future::join_all;

use crate::common::{fixture, i64s};

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
            assert_eq!(i64s(&c.query_collect(sql).await.unwrap()), vec![expect]);
        }
    });
    join_all(tasks).await;
    let n = i64s(
        &f.root
            .query_collect("SELECT value FROM system.stats WHERE name = 'session_contexts_created'")
            .await
            .unwrap(),
    );
    assert_eq!(n, vec![1]);
    let started = i64s(
        &f.root
            .query_collect("SELECT value FROM system.stats WHERE name = 'queries_started'")
            .await
            .unwrap(),
    );
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
