//! Start-up and shutdown.

use std::sync::Arc;

use anyhow::{Context, bail};
use kalam_core::auth::{AuthConfig, Authenticator, hash_password, load_or_create_key};
use kalam_core::catalog::{Catalog, CatalogEntry, CatalogLimits, UserDef, now_ms};
use kalam_core::context::Role;
use kalam_core::engine::{Engine, EngineConfig};
use kalam_storage::buffer::BufferAccounting;
use kalam_storage::seq::SeqAllocator;
use kalam_storage::wal::Wal;
use tokio::net::TcpListener;

use crate::auth_layer::AuthLayer;
use crate::config::Config;
use crate::metrics::{self, MetricsLayer, RpcMetrics};
use crate::service::KalamFlightService;
use crate::tls;

/// Largest inbound message (ingest and parameter batches from ADBC reach 16 MiB).
pub const MAX_DECODING_MESSAGE: usize = 64 << 20;
/// Largest outbound message; the encoder splits batches far below this.
pub const MAX_ENCODING_MESSAGE: usize = 64 << 20;

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Read the TLS files before anything else, so a bad one fails fast and clearly.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key must be given together"),
    };
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
    let catalog =
        Arc::new(Catalog::open(Arc::clone(&store), CatalogLimits::default(), accounting).await?);
    bootstrap_root(&catalog).await?;

    let engine_config = EngineConfig {
        memory_limit: Some(config.memory_limit),
        spill_dir: data_dir.join("spill"),
        batch_size: 8192,
        target_partitions: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        write_buffer_limit: config.write_buffer_limit,
        flush_age: std::time::Duration::from_secs(config.flush_age_secs.max(1)),
        live: kalam_core::live::LiveConfig {
            max_per_connection: MAX_STREAMS_PER_CONNECTION as usize,
            ring_bytes: config.live_retention_bytes,
            ..kalam_core::live::LiveConfig::default()
        },
    };
    let (wal, entries) = Wal::open(&data_dir.join("wal"), config.wal_segment_bytes as u64)?;
    let max_seq = kalam_core::engine::recover(&catalog, &store, &entries).await?;
    drop(entries);
    let engine = Arc::new(Engine::new(
        Arc::clone(&catalog),
        Arc::new(SeqAllocator::new(max_seq)),
        Arc::new(wal),
        store,
        &engine_config,
    )?);
    engine.spawn_maintenance();
    let auth_config = AuthConfig {
        token_ttl: std::time::Duration::from_secs(config.token_ttl_secs),
        ..AuthConfig::default()
    };
    // Tokens stay valid across restarts: the signing key lives in the data directory.
    let key = load_or_create_key(&data_dir.join("token.key"))?;
    let auth = Arc::new(Authenticator::with_key(catalog, auth_config, key));
    let rpc_metrics = Arc::new(RpcMetrics::new(Arc::clone(engine.stats())));
    // Owned here and aborted on return: the endpoint lives exactly as long as the server.
    let _metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let addr = listener.local_addr()?;
            println!("metrics listening on {addr}");
            let task = tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&rpc_metrics),
                Arc::clone(&engine),
            ));
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let service = KalamFlightService::new(engine, Arc::clone(&auth));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts wait for this exact line.
    println!("listening on {addr}");
    tracing::info!(%addr, storage = %url, tls = tls.is_some(), "KalamFlight started");

    let svc =
        crate::exchange::FlightRouter::new(service, MAX_DECODING_MESSAGE, MAX_ENCODING_MESSAGE);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    // The metrics layer is outermost, so calls refused by the auth layer are counted too.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Live queries are long-lived streams: allow as many per connection as the live-query
        // per-connection limit (hyper's default is 200).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(MetricsLayer::new(rpc_metrics))
        .layer(AuthLayer::new(auth))
        .add_service(svc);
    let serve: futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>> = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, tls), stopped))
        }
        None => {
            // Small request/response messages: without TCP_NODELAY, Nagle + delayed ACK add
            // ~40 ms.
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(60)));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
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

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Concurrent HTTP/2 streams per client connection (= live queries per connection).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

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
