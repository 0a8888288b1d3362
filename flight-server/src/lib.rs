//! `kalam-server`: the Arrow Flight SQL front door of KalamFlight.
//!
//! Thin wiring: decode a Flight SQL command, authenticate, call `kalam-core`, encode the answer.
//! Logic lives in `kalam-core` and `kalam-storage`; this crate owns only the network.
//!
//! # Layout
//! - [`auth_layer`]: rejects calls without valid credentials before anything is decoded.
//! - [`config`]: flags and `KALAM_*` environment variables.
//! - [`status`]: the one mapping from core errors to gRPC status codes.
//! - [`service`]: the `FlightSqlService` implementation.
//! - [`prepared`]: prepared-statement handles (bounded, owned, expiring).
//! - [`running`]: in-flight DoGet streams, for `CancelFlightInfo`.
//! - [`metadata`]: `GetSqlInfo` / `GetXdbcTypeInfo` data.
//! - [`server`]: start-up (catalog, root bootstrap, listener) and graceful shutdown.

pub mod auth_layer;
pub mod config;
mod live;
pub mod metadata;
pub mod prepared;
pub mod running;
pub mod server;
pub mod service;
pub mod status;
