//! `kalam-server`: the Arrow Flight SQL front door of KalamFlight.
//!
//! Thin wiring: decode a Flight SQL command, authenticate, call `kalam-core`, encode the answer.
//! Logic lives in `kalam-core` and `kalam-storage`; this crate owns only the network.
//!
//! # Layout
//! - [`auth_layer`]: rejects calls without valid credentials before anything is decoded.
//! - [`config`]: flags, `KALAM_*` environment variables and the `--config` TOML file.
//! - [`metrics`]: the RPC metrics layer and the Prometheus `/metrics` endpoint.
//! - [`status`]: the one mapping from core errors to gRPC status codes.
//! - [`service`]: the `FlightSqlService` implementation.
//! - [`prepared`]: prepared-statement handles (bounded, owned, expiring).
//! - [`running`]: in-flight DoGet streams, for `CancelFlightInfo`.
//! - [`metadata`]: `GetSqlInfo` / `GetXdbcTypeInfo` data.
//! - [`tls`]: the TLS listener (rustls), which answers plaintext clients with a clear status.
//! - [`server`]: start-up (catalog, root bootstrap, listeners, TLS) and graceful shutdown.

pub mod auth_layer;
pub mod config;
mod exchange;
mod live;
pub mod metadata;
pub mod metrics;
pub mod prepared;
pub mod running;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;
