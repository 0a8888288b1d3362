//! TLS for the Flight listener (`--tls-cert` / `--tls-key`): rustls with the ring provider.
//!
//! The listener does its own handshakes instead of tonic's, for one reason: a client that
//! speaks plaintext HTTP/2 to the TLS port would otherwise just see its connection dropped
//! ("connection reset", "h2 protocol error"). Here the first bytes of each connection are
//! peeked: a TLS ClientHello is handshaken and handed to tonic; the plaintext HTTP/2 preface is
//! answered over plaintext HTTP/2 with gRPC `UNAVAILABLE` "this server requires TLS", which
//! every gRPC client (Rust, Go/ADBC, C++/pyarrow) shows as is.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// Message of the status sent to plaintext clients.
pub const PLAINTEXT_REFUSED: &str =
    "this server requires TLS: connect with grpc+tls:// (https://), not grpc:// (http://)";

/// Bound on connections between accept and the end of their TLS handshake (or plaintext
/// refusal); beyond it accepting pauses.
const MAX_HANDSHAKES: usize = 256;
/// Bound on handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 64;
/// Idle time before TCP keepalive probes (as `TcpIncoming::with_keepalive` on plaintext).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A connection must finish its handshake (or the plaintext refusal) within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate chain and private key and builds the rustls configuration (HTTP/2
/// only). Each failure names the file.
pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("cannot read the TLS private key {}", key_path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "the TLS certificate {} is not valid PEM",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "the TLS certificate {} is not PEM (no 'BEGIN CERTIFICATE' section)",
            cert_path.display()
        );
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "the TLS private key {} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS private key {} does not fit the certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS connections accepted on `listener`, for `serve_with_incoming`. The accept task stops
/// when the returned stream is dropped (its queue closes) — or with the runtime.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(accept_loop(listener, acceptor, tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        // Ends within HANDSHAKE_TIMEOUT and holds a permit, so at most MAX_HANDSHAKES exist.
        tokio::spawn(async move {
            let _permit = permit;
            // As the plaintext listener: TCP_NODELAY (small messages; Nagle + delayed ACK add
            // ~40 ms) and keepalive probes after a minute of silence.
            let _ = stream.set_nodelay(true);
            let _ = socket2::SockRef::from(&stream)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &acceptor)).await {
                Ok(Ok(Some(tls))) => {
                    let _ = tx.send(tls).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Handshakes a TLS client; answers a plaintext HTTP/2 client with [`PLAINTEXT_REFUSED`] and
/// returns `None`.
async fn handshake(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 3];
    let n = stream.peek(&mut first).await?;
    if n > 0 && first[..n] == b"PRI"[..n] {
        refuse_plaintext(stream).await;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

/// Serves plaintext HTTP/2 on `stream`, answering every call with `UNAVAILABLE`.
async fn refuse_plaintext(stream: TcpStream) {
    let service = hyper::service::service_fn(|_request| async {
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .header("content-type", "application/grpc")
            .header("grpc-status", (tonic::Code::Unavailable as i32).to_string())
            .header("grpc-message", PLAINTEXT_REFUSED)
            .body(http_body_util::Empty::<Bytes>::new());
        Ok::<_, Infallible>(response.unwrap_or_default())
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "plaintext refusal connection ended");
    }
}
