//! Start-up and shutdown.

use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_flight::flight_service_server::FlightServiceServer;
use kalam_core::auth::{AuthConfig, Authenticator, hash_password, load_or_create_key};
use kalam_core::catalog::{Catalog, CatalogEntry, CatalogLimits, UserDef, now_ms};
use kalam_core::context::Role;
use kalam_core::engine::{Engine, EngineConfig};
use kalam_storage::buffer::BufferAccounting;
use kalam_storage::seq::SeqAllocator;
use kalam_storage::wal::{DEFAULT_SEGMENT_BYTES, Wal};
use tokio::net::TcpListener;

use crate::auth_layer::AuthLayer;
use crate::config::Config;
use crate::service::KalamFlightService;

/// Largest inbound message (ingest and parameter batches from ADBC reach 16 MiB).
pub const MAX_DECODING_MESSAGE: usize = 64 << 20;
/// Largest outbound message; the encoder splits batches far below this.
pub const MAX_ENCODING_MESSAGE: usize = 64 << 20;

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.config.is_some() {
        bail!("--config files are not supported by this build yet; use flags or KALAM_* variables");
    }
    if config.metrics_listen.is_some() {
        bail!("--metrics-listen is not supported by this build yet");
    }
    if config.tls_cert.is_some() || config.tls_key.is_some() {
        bail!("TLS (--tls-cert/--tls-key) is not supported by this build yet");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&config.data_dir)?;
    let url = config
        .storage_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", data_dir.join("store").display()));
    let store = kalam_storage::store::open(&url, &config.s3_options())?;
    kalam_storage::store::probe_conditional_put(store.as_ref(), &url).await?;

    let accounting = Arc::new(BufferAccounting::default());
    let catalog = Arc::new(Catalog::open(store, CatalogLimits::default(), accounting).await?);
    bootstrap_root(&catalog).await?;

    let engine_config = EngineConfig {
        memory_limit: Some(config.memory_limit),
        spill_dir: data_dir.join("spill"),
        batch_size: 8192,
        target_partitions: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let (wal, entries) = Wal::open(&data_dir.join("wal"), DEFAULT_SEGMENT_BYTES)?;
    let max_seq = kalam_core::engine::recover(&catalog, &entries)?;
    drop(entries);
    let engine = Arc::new(Engine::new(
        Arc::clone(&catalog),
        Arc::new(SeqAllocator::new(max_seq)),
        Arc::new(wal),
        &engine_config,
    )?);
    let auth_config = AuthConfig {
        token_ttl: std::time::Duration::from_secs(config.token_ttl_secs),
        ..AuthConfig::default()
    };
    // Tokens stay valid across restarts: the signing key lives in the data directory.
    let key = load_or_create_key(&data_dir.join("token.key"))?;
    let auth = Arc::new(Authenticator::with_key(catalog, auth_config, key));
    let service = KalamFlightService::new(engine, Arc::clone(&auth));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Small request/response messages: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    // Tests and scripts wait for this exact line.
    println!("listening on {addr}");
    tracing::info!(%addr, storage = %url, "KalamFlight started");

    let svc = FlightServiceServer::new(service)
        .max_decoding_message_size(MAX_DECODING_MESSAGE)
        .max_encoding_message_size(MAX_ENCODING_MESSAGE);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .layer(AuthLayer::new(auth))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        res = &mut serve => res?,
        () = shutdown_signal() => {
            // Stop accepting; let in-flight calls finish, but do not wait forever on idle
            // client connections.
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                Ok(res) => res?,
                Err(_) => tracing::warn!("in-flight calls still running after {SHUTDOWN_GRACE:?}; exiting"),
            }
        }
    }
    tracing::info!("KalamFlight stopped");
    Ok(())
}

/// How long shutdown waits for in-flight calls.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight calls");
}

/// Creates `root` (role system) on first start.
async fn bootstrap_root(catalog: &Catalog) -> anyhow::Result<()> {
    if catalog.user("root").is_some() {
        return Ok(());
    }
    let (password, generated) = match std::env::var("KALAM_ROOT_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => {
            let mut raw = [0u8; 18];
            rand::fill(&mut raw);
            (
                raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                true,
            )
        }
    };
    let hash = hash_password(&password)?;
    catalog
        .commit(CatalogEntry::CreateUser(UserDef {
            id: "root".into(),
            name: "root".into(),
            password_hash: hash,
            role: Role::System,
            created_at_ms: now_ms(),
        }))
        .await?;
    if generated {
        println!("created user root with generated password: {password}");
    }
    Ok(())
}
