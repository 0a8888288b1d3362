//! Object storage on S3 (a local moto server): the server keeps its catalog there across
//! restarts, refuses to start on a store it cannot use, and the create-only log stays exact
//! when writers race for the same version (also on memory:// and file://).

use std::sync::Arc;

use kalam_storage::log::{Append, CreateOnlyLog};
use kalam_storage::store::{self, S3Options};
use kalam_tests::{MOTO_KEY_ID, MOTO_SECRET, Moto, TestServer, start_failure};

use crate::common::{PW, ints, strs};

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `FLUSH TABLE`: the table's buffered rows go to Parquet in the bucket.
async fn flush(root: &kalam_client::KalamClient, table: &str) {
    root.execute(&format!("FLUSH TABLE {table}"))
        .await
        .unwrap_or_else(|e| panic!("FLUSH TABLE {table}: {e}"));
}

/// Object keys under `prefix` in `bucket`, from moto's ListObjectsV2.
fn keys(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = moto
        .request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

#[tokio::test]
async fn s3_storage_keeps_data_ddl_and_users_across_restart() {
    let moto = Moto::start().unwrap();
    moto.create_bucket("kalam").unwrap();
    let args = moto.server_args("kalam", "db1");
    let server = TestServer::start_with(&as_strs(&args)).unwrap();
    let root = server.root().await.unwrap();
    for sql in [
        "CREATE NAMESPACE chat",
        "CREATE USER TABLE chat.m (id BIGINT PRIMARY KEY, body TEXT)",
        &format!("CREATE USER alice WITH PASSWORD '{PW}' ROLE user"),
        &format!("CREATE USER bob WITH PASSWORD '{PW}' ROLE user"),
    ] {
        root.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let alice = server.client("alice", PW).await.unwrap();
    let bob = server.client("bob", PW).await.unwrap();
    assert_eq!(
        alice
            .execute("INSERT INTO chat.m VALUES (1, 'a-1'), (2, 'a-2'), (3, 'a-3')")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        bob.execute("INSERT INTO chat.m VALUES (1, 'b-1'), (2, 'b-2')")
            .await
            .unwrap(),
        2
    );
    flush(&root, "chat.m").await;
    // The catalog went to the bucket under the prefix, not to the local default store.
    let catalog = keys(&moto, "kalam", "db1/catalog/_log/");
    assert!(catalog.len() >= 4, "catalog entries in S3: {catalog:?}");
    assert!(!server.data_dir.path().join("store").exists());
    // The flush wrote Parquet files and their manifests into the bucket.
    let tables = keys(&moto, "kalam", "db1/tables/");
    assert!(
        tables.iter().any(|k| k.ends_with(".parquet")),
        "no Parquet in S3: {tables:?}"
    );
    assert!(
        tables.iter().any(|k| k.contains("/_log/")),
        "no manifest in S3: {tables:?}"
    );
    drop((root, alice, bob));
    let (exit, dir) = server.stop().unwrap();
    assert_eq!(exit, 0);

    let server = TestServer::start_in(dir, &as_strs(&args)).unwrap();
    let alice = server.client("alice", PW).await.unwrap();
    let bob = server.client("bob", PW).await.unwrap();
    assert_eq!(
        strs(&alice, "SELECT body FROM chat.m ORDER BY id", 0).await,
        vec!["a-1", "a-2", "a-3"]
    );
    assert_eq!(
        strs(&bob, "SELECT body FROM chat.m ORDER BY id", 0).await,
        vec!["b-1", "b-2"]
    );
    // Writes go on after the restart, still isolated.
    alice
        .execute("INSERT INTO chat.m VALUES (4, 'a-4')")
        .await
        .unwrap();
    assert_eq!(ints(&bob, "SELECT count(*) FROM chat.m").await, vec![2]);
    assert_eq!(ints(&alice, "SELECT count(*) FROM chat.m").await, vec![4]);
    drop((alice, bob));
    let (exit, _dir) = server.stop().unwrap();
    assert_eq!(exit, 0);

    // A server with an empty data directory on the same URL finds the users and the table:
    // the catalog lives in the bucket, not on the local disk.
    let fresh = TestServer::start_with(&as_strs(&args)).unwrap();
    let alice = fresh.client("alice", PW).await.unwrap();
    // The flushed rows come from Parquet in the bucket (this data dir has no WAL).
    assert_eq!(
        strs(&alice, "SELECT body FROM chat.m ORDER BY id", 0).await,
        vec!["a-1", "a-2", "a-3"]
    );
    let root = fresh.root().await.unwrap();
    assert!(
        root.execute("CREATE NAMESPACE chat").await.is_err(),
        "namespace known from the S3 catalog"
    );
}

/// The standard AWS_* variables configure the store when no --s3-* flag is given, and
/// KALAM_STORAGE_URL names it.
#[tokio::test]
async fn s3_settings_from_aws_environment_variables() {
    let moto = Moto::start().unwrap();
    moto.create_bucket("envbucket").unwrap();
    let endpoint = moto.endpoint();
    let server = TestServer::start_env(
        tempfile::tempdir().unwrap(),
        &[],
        &[
            ("KALAM_STORAGE_URL", "s3://envbucket/env"),
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", MOTO_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET),
        ],
    )
    .unwrap();
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE viaenv").await.unwrap();
    let catalog = keys(&moto, "envbucket", "env/catalog/_log/");
    assert!(!catalog.is_empty(), "catalog entries in S3: {catalog:?}");
}

#[tokio::test]
async fn unusable_s3_store_refuses_to_start_with_one_line_naming_the_url() {
    let moto = Moto::start().unwrap();
    // Missing bucket.
    let args = moto.server_args("no-such-bucket", "p");
    let err = start_failure(&as_strs(&args), &[]).unwrap();
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("s3://no-such-bucket/p"), "{err}");
    assert!(line.contains("NoSuchBucket"), "{err}");

    // A store without create-if-absent writes is refused: commits would not be safe.
    moto.create_bucket("plain").unwrap();
    let args = moto.server_args("plain", "p");
    let err = start_failure(&as_strs(&args), &[("AWS_CONDITIONAL_PUT", "disabled")]).unwrap();
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("s3://plain/p"), "{err}");
    assert!(line.contains("create-if-absent"), "{err}");
}

#[tokio::test]
async fn unreachable_s3_endpoint_refuses_to_start() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = start_failure(
        &[
            "--storage-url",
            "s3://b/p",
            "--s3-endpoint",
            &endpoint,
            "--s3-allow-http",
            "--s3-access-key-id",
            MOTO_KEY_ID,
            "--s3-secret-access-key",
            MOTO_SECRET,
        ],
        &[],
    )
    .unwrap();
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("s3://b/p"), "{err}");
    // Either the client's retries give up or the probe's time limit ends the wait.
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) || line.contains("no answer"),
        "{err}"
    );
}

/// Two writers, each with its own store handle, race for the same version `rounds` times:
/// exactly one wins each version, the loser re-reads (seeing the winner's entry) and retries
/// its entry; at the end every entry of both writers is in the log exactly once, in order.
async fn race_two_writers(url: &str, s3: &S3Options, rounds: u64) {
    let first = store::open(url, s3).unwrap();
    // memory:// is one store per handle, so its writers share one; elsewhere each writer opens
    // its own handle, as separate processes would.
    let handle = || {
        if url.starts_with("memory:") {
            Arc::clone(&first)
        } else {
            store::open(url, s3).unwrap()
        }
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for writer in 0..2u32 {
        let log = CreateOnlyLog::new(handle(), "race");
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut head = 0u64;
            let mut item = 0u32;
            let mut wins = Vec::new();
            let mut pending = false;
            for _ in 0..rounds {
                barrier.wait().await;
                let v = head + 1;
                match log.try_append(v, &(writer, item)).await.unwrap() {
                    Append::Committed => {
                        wins.push(v);
                        item += 1;
                        head = v;
                        pending = false;
                    }
                    Append::Conflict => {
                        let seen: Vec<(u64, (u32, u32))> = log.read_from(v).await.unwrap();
                        assert_eq!(seen.len(), 1, "loser re-reads the winner's entry");
                        assert_eq!(seen[0].0, v);
                        assert_ne!(seen[0].1.0, writer, "the other writer won {v}");
                        head = v;
                        pending = true;
                    }
                }
            }
            barrier.wait().await;
            // The entry lost in the last round is still pending: retry until it lands.
            while pending {
                let v = head + 1;
                match log.try_append(v, &(writer, item)).await.unwrap() {
                    Append::Committed => {
                        wins.push(v);
                        item += 1;
                        pending = false;
                    }
                    Append::Conflict => {
                        let seen: Vec<(u64, (u32, u32))> = log.read_from(v).await.unwrap();
                        head = seen.last().map(|(v, _)| *v).unwrap_or(v);
                    }
                }
            }
            (wins, item)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    // Each race round had exactly one winner.
    let round_wins = |w: &Vec<u64>| w.iter().filter(|v| **v <= rounds).count() as u64;
    assert_eq!(
        round_wins(&results[0].0) + round_wins(&results[1].0),
        rounds
    );
    let reader = CreateOnlyLog::new(handle(), "race");
    let all: Vec<(u64, (u32, u32))> = reader.read_from(0).await.unwrap();
    let total = u64::from(results[0].1 + results[1].1);
    assert_eq!(all.len() as u64, total, "{url}: entries lost or doubled");
    assert_eq!(
        all.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "{url}: versions are contiguous"
    );
    for (writer, (wins, items)) in results.iter().enumerate() {
        let mine: Vec<(u64, u32)> = all
            .iter()
            .filter(|(_, (w, _))| *w as usize == writer)
            .map(|(v, (_, i))| (*v, *i))
            .collect();
        assert_eq!(
            mine.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            (0..*items).collect::<Vec<_>>(),
            "{url}: writer {writer}'s entries each exactly once, in order"
        );
        assert_eq!(&mine.iter().map(|(v, _)| *v).collect::<Vec<_>>(), wins);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_log_race_on_memory_and_file() {
    race_two_writers("memory://", &S3Options::default(), 300).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    race_two_writers(&url, &S3Options::default(), 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_log_race_on_s3() {
    let moto = Moto::start().unwrap();
    moto.create_bucket("race").unwrap();
    let s3 = S3Options {
        endpoint: Some(moto.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some(MOTO_KEY_ID.into()),
        secret_access_key: Some(MOTO_SECRET.into()),
        allow_http: true,
    };
    race_two_writers(&moto.storage_url("race", "log"), &s3, 60).await;
}
