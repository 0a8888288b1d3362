//! TLS (`--tls-cert` / `--tls-key`): the Rust client over `grpc+tls://` with a private CA, and
//! the ways it must fail clearly.

use kalam_client::{ConnectOptions, KalamClient};
use kalam_tests::{ROOT_PASSWORD, TestCerts, TestServer};

use crate::common::ints;

#[tokio::test]
async fn login_and_query_over_tls() {
    let (server, _certs) = TestServer::start_tls(&[]).unwrap();
    assert!(server.url().starts_with("grpc+tls://"));
    let root = server.root().await.unwrap();
    root.execute("CREATE NAMESPACE app").await.unwrap();
    root.execute("CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, body TEXT)")
        .await
        .unwrap();
    root.execute("INSERT INTO app.m VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    assert_eq!(
        ints(&root, "SELECT id FROM app.m ORDER BY id").await,
        vec![1, 2]
    );
    // The certificate also names `localhost`.
    let port = server.addr.rsplit_once(':').unwrap().1;
    let options = ConnectOptions::new().ca_certificate_pem(server.tls_ca_pem.clone().unwrap());
    let mut by_name = KalamClient::connect_with(&format!("grpc+tls://localhost:{port}"), &options)
        .await
        .unwrap();
    by_name.login("root", ROOT_PASSWORD).await.unwrap();
    assert_eq!(ints(&by_name, "SELECT 7").await, vec![7]);
    drop((root, by_name));
    assert_eq!(server.stop().unwrap().0, 0);
}

#[tokio::test]
async fn plaintext_client_is_refused_by_tls_server() {
    let (server, _certs) = TestServer::start_tls(&[]).unwrap();
    let url = format!("grpc://{}", server.addr);
    let error = match KalamClient::connect(&url).await {
        Err(e) => e,
        Ok(mut client) => client
            .login("root", ROOT_PASSWORD)
            .await
            .expect_err("a plaintext login against a TLS server must fail"),
    };
    assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("requires TLS") && text.contains("grpc+tls://"),
        "error should point at TLS: {text}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused_by_client() {
    let (server, _certs) = TestServer::start_tls(&[]).unwrap();
    // A CA that did not sign the server's certificate.
    let other = TestCerts::generate().unwrap();
    let options = ConnectOptions::new().ca_certificate_pem(other.ca_pem.clone());
    let result = async {
        let mut c = KalamClient::connect_with(&server.url(), &options).await?;
        c.login("root", ROOT_PASSWORD).await
    }
    .await;
    let text = format!("{:?}", result.expect_err("untrusted certificate accepted"));
    assert!(
        text.to_lowercase().contains("certificate"),
        "error should name the certificate: {text}"
    );
}

#[tokio::test]
async fn tls_options_need_a_tls_url() {
    let options = ConnectOptions::new().ca_certificate_pem("-----BEGIN CERTIFICATE-----");
    let Err(e) = KalamClient::connect_with("grpc://127.0.0.1:1", &options).await else {
        panic!("TLS options on a plaintext URL are refused");
    };
    assert!(matches!(e, kalam_client::Error::InvalidTls { .. }), "{e}");
}

#[test]
fn bad_tls_files_refuse_to_start() {
    let certs = TestCerts::generate().unwrap();
    let cert = certs.cert_path.to_str().unwrap();
    let key = certs.key_path.to_str().unwrap();

    let (code, stderr) = TestServer::start_expecting_failure(&["--tls-cert", cert], &[]).unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("--tls-key"), "{stderr}");

    let missing = certs.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let (code, stderr) =
        TestServer::start_expecting_failure(&["--tls-cert", missing, "--tls-key", key], &[])
            .unwrap();
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot read the TLS certificate") && stderr.contains("missing.pem"),
        "{stderr}"
    );

    let garbage = certs.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (code, stderr) =
        TestServer::start_expecting_failure(&["--tls-cert", garbage, "--tls-key", key], &[])
            .unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("is not PEM"), "{stderr}");

    // The certificate where the key belongs.
    let (code, stderr) =
        TestServer::start_expecting_failure(&["--tls-cert", cert, "--tls-key", cert], &[]).unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("private key"), "{stderr}");
}
