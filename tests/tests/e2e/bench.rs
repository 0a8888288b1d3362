//! Smoke test of `kalam-bench`: every subcommand's `--quick` run completes against the debug
//! server and writes JSON with the fields `docs/BENCHMARKS.md` reports. Timings are never
//! asserted: this proves the tools work, the figures come from release runs.

use std::process::Command;

use serde_json::Value;

/// Runs `kalam-bench <sub> --quick --out <dir>` and returns its JSON figures.
fn quick(sub: &str, dir: &std::path::Path) -> Value {
    let server = kalam_tests::server_bin().unwrap();
    let out = Command::new(kalam_tests::bench_bin().unwrap())
        .args([sub, "--quick", "--out"])
        .arg(dir)
        .env("KALAM_SERVER_BIN", server)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kalam-bench {sub} --quick failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(format!("{sub}.json")))
        .unwrap_or_else(|e| panic!("{sub}.json: {e}\n{stdout}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sub}.json is not JSON: {e}"))
}

/// Asserts that every `/`-separated path exists in `v` and holds a number (array index `0` for
/// lists).
fn has_numbers(sub: &str, v: &Value, paths: &[&str]) {
    for path in paths {
        let mut at = v;
        for part in path.split('/') {
            at = match part.parse::<usize>() {
                Ok(i) => &at[i],
                Err(_) => &at[part],
            };
        }
        assert!(at.is_number(), "{sub}.json: {path} is {at}, not a number");
    }
}

#[test]
fn every_bench_subcommand_runs_quick_and_writes_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let v = quick("query-load", d);
    has_numbers(
        "query-load",
        &v,
        &[
            "qps",
            "queries",
            "latency/p50_ms",
            "latency/p99_ms",
            "latency/p999_ms",
            "rss/after_warmup_mib",
            "rss/growth_mib",
            "rss/samples/0/1",
            "session_contexts_created",
            "table/rows",
        ],
    );
    assert!(v["queries"].as_u64().unwrap() > 0);
    assert!(d.join("query-load-rss.svg").exists());

    let v = quick("scan", d);
    has_numbers(
        "scan",
        &v,
        &[
            "rows",
            "flight/mib_per_s",
            "flight/arrow_bytes",
            "in_process/mib_per_s",
            "ratio",
            "server_rss/peak_mib",
        ],
    );
    assert_eq!(v["flight"]["rows"], v["rows"]);
    assert_eq!(v["in_process"]["rows"], v["rows"]);

    let v = quick("ingest", d);
    has_numbers(
        "ingest",
        &v,
        &[
            "single_row_inserts/shared_table/0/inserts_per_s",
            "single_row_inserts/shared_table/0/latency/p99_ms",
            "single_row_inserts/user_table/1/inserts_per_s",
            "bulk_ingest/rows_per_s",
        ],
    );

    let v = quick("live", d);
    has_numbers(
        "live",
        &v,
        &[
            "latency/0/p50_ms",
            "latency/2/p999_ms",
            "idle/bytes_per_subscription",
            "fanout/rows_per_s",
        ],
    );

    let v = quick("soak", d);
    has_numbers(
        "soak",
        &v,
        &[
            "rss/baseline_mib",
            "rss/growth_mib",
            "rss/trend_mib_per_hour",
            "rss/samples/0/1",
            "operations/queries",
            "operations/subscriptions_opened",
            "operations/scans",
            "server_stats/session_contexts_created",
        ],
    );
    assert_eq!(v["pass"], true);
    assert!(d.join("soak-rss.svg").exists());
}
