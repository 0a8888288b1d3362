//! The Prometheus endpoint (`--metrics-listen`) and the same figures in `system.stats`.

use futures::StreamExt;
use kalam_tests::{TestServer, metric_value};

use crate::common::{ints, strs};

const DOGET_OK: &str = r#"kalam_rpc_requests_total{method="DoGet",code="OK"}"#;

#[tokio::test]
async fn counters_move_with_queries() {
    let server = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]).unwrap();
    let metrics_addr = server.metrics_addr.clone().expect("metrics listening line");
    assert!(metrics_addr.starts_with("127.0.0.1:"), "{metrics_addr}");
    assert!(!metrics_addr.ends_with(":0"), "{metrics_addr}");

    let (code, page) = server.scrape("/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "kalam_rows_streamed_total",
        "kalam_bytes_streamed_total",
        "kalam_live_queries_active",
        "kalam_notifications_sent_total",
        "kalam_notifications_lagged_total",
        "kalam_wal_fsyncs_total",
        "kalam_wal_bytes_total",
        "kalam_write_buffer_bytes",
        "kalam_memory_pool_used_bytes",
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{page}"
        );
    }
    assert!(metric_value(&page, "kalam_process_rss_bytes").unwrap() > 1e6);
    let doget_before = metric_value(&page, DOGET_OK).unwrap_or(0.0);
    let fsyncs_before = metric_value(&page, "kalam_wal_fsyncs_total").unwrap();
    let rows_before = metric_value(&page, "kalam_rows_streamed_total").unwrap();

    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE app").await.unwrap();
    root.execute("CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    root.execute("INSERT INTO app.t VALUES (1), (2), (3)")
        .await
        .unwrap();
    assert_eq!(
        ints(&root, "SELECT id FROM app.t ORDER BY id").await,
        vec![1, 2, 3]
    );
    // An unauthenticated call is answered (and counted) by the auth layer.
    let anonymous = kalam_client::KalamClient::connect(&server.url())
        .await
        .unwrap();
    assert!(anonymous.query_collect("SELECT 1").await.is_err());

    let (_, page) = server.scrape("/metrics").unwrap();
    assert!(
        metric_value(&page, DOGET_OK).unwrap() > doget_before,
        "{page}"
    );
    assert!(metric_value(&page, "kalam_wal_fsyncs_total").unwrap() > fsyncs_before);
    assert!(metric_value(&page, "kalam_wal_bytes_total").unwrap() > 0.0);
    assert!(metric_value(&page, "kalam_rows_streamed_total").unwrap() >= rows_before + 3.0);
    assert!(metric_value(&page, "kalam_bytes_streamed_total").unwrap() > 0.0);
    assert!(
        metric_value(
            &page,
            r#"kalam_rpc_requests_total{method="GetFlightInfo",code="UNAUTHENTICATED"}"#
        )
        .unwrap()
            >= 1.0,
        "{page}"
    );
    assert!(
        metric_value(
            &page,
            r#"kalam_rpc_duration_seconds_bucket{method="Handshake",code="OK",le="+Inf"}"#
        )
        .unwrap()
            >= 1.0,
        "{page}"
    );
    assert!(metric_value(&page, "kalam_memory_pool_limit_bytes").unwrap() > 0.0);

    // The same figures in system.stats.
    let names = strs(&root, "SELECT name FROM system.stats", 0).await;
    for name in [
        "rpcs",
        "rpc_errors",
        "rows_streamed",
        "bytes_streamed",
        "notifications_sent",
        "notifications_lagged",
        "wal_fsyncs",
        "wal_bytes",
        "write_buffer_bytes",
        "memory_pool_used_bytes",
        "process_rss_bytes",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    let stat = |name: &'static str| {
        let root = &root;
        async move {
            ints(
                root,
                &format!("SELECT value FROM system.stats WHERE name = '{name}'"),
            )
            .await[0]
        }
    };
    assert!(stat("wal_fsyncs").await >= 1);
    assert!(stat("rows_streamed").await >= 3);
    assert!(stat("rpc_errors").await >= 1);
    assert!(stat("process_rss_bytes").await > 1 << 20);

    // Subscriptions move the live-query figures.
    let mut live = root
        .subscribe(
            "SELECT id FROM app.t",
            kalam_client::SubscribeOptions::default(),
        )
        .await
        .unwrap();
    root.execute("INSERT INTO app.t VALUES (4)").await.unwrap();
    loop {
        let e = live.next().await.unwrap().unwrap();
        if e.kind == kalam_client::EventKind::Changes {
            break;
        }
    }
    let (_, page) = server.scrape("/metrics").unwrap();
    assert_eq!(
        metric_value(&page, "kalam_live_queries_active").unwrap(),
        1.0
    );
    assert!(metric_value(&page, "kalam_notifications_sent_total").unwrap() >= 1.0);
    assert!(stat("live_queries_active").await == 1);
    drop(live);

    assert_eq!(server.scrape("/other").unwrap().0, 404);
    assert_eq!(server.scrape("/metrics?x=1").unwrap().0, 200);
    drop((root, anonymous));
    assert_eq!(server.stop().unwrap().0, 0);
}
