//! `--config kalam.toml`: the server starts from a file; flags and variables override it.

use kalam_tests::TestServer;

use crate::common::ints;

#[tokio::test]
async fn server_starts_from_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kalam.toml");
    // `listen` is overridden by the harness's `--listen 127.0.0.1:0` (an address of TEST-NET
    // that cannot be bound would stop the server otherwise); `memory_limit` by the variable.
    std::fs::write(
        &path,
        "listen = \"192.0.2.1:5\"\n\
         metrics_listen = \"127.0.0.1:0\"\n\
         memory_limit = \"300MiB\"\n\
         token_ttl_secs = 3600\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let server =
        TestServer::start_with_env(&["--config", path], &[("KALAM_MEMORY_LIMIT", "200MiB")])
            .unwrap();
    assert!(
        server.metrics_addr.is_some(),
        "metrics_listen from the file"
    );
    let root = server.root().await.unwrap();
    assert_eq!(
        ints(
            &root,
            "SELECT value FROM system.stats WHERE name = 'memory_pool_limit_bytes'"
        )
        .await,
        vec![200 << 20],
        "the variable beats the file"
    );
    drop(root);
    assert_eq!(server.stop().unwrap().0, 0);

    // Without the variable the file's value holds.
    let server = TestServer::start_with(&["--config", path]).unwrap();
    let root = server.root().await.unwrap();
    assert_eq!(
        ints(
            &root,
            "SELECT value FROM system.stats WHERE name = 'memory_pool_limit_bytes'"
        )
        .await,
        vec![300 << 20]
    );
    drop(root);
    assert_eq!(server.stop().unwrap().0, 0);
}

#[test]
fn bad_config_files_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kalam.toml");
    std::fs::write(&path, "memory_limit = \"1GiB\"\nlisten_port = 5\n").unwrap();
    let (code, stderr) =
        TestServer::start_expecting_failure(&["--config", path.to_str().unwrap()], &[]).unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown key 'listen_port'"), "{stderr}");

    let missing = dir.path().join("missing.toml");
    let (code, stderr) =
        TestServer::start_expecting_failure(&["--config", missing.to_str().unwrap()], &[]).unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.toml"), "{stderr}");
}
