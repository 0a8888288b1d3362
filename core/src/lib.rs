//! `kalam-core`: identity, catalog, SQL front-end and query engine of KalamFlight.
//!
//! Sits between the network (`kalam-server`, which it must never depend on: no tonic here) and
//! the bytes (`kalam-storage`). Everything a request does is decided here and testable without a
//! network.
//!
//! # Layout
//! - [`context`]: `ExecutionContext` (user, role, request id) and `Role`.
//! - [`auth`]: argon2id hashes, stateless bearer tokens, Basic cache, failed-login limiter.
//! - [`catalog`]: namespaces, tables, users; persisted as a create-only log; owns table runtimes.
//! - [`sql`]: recognises our DDL (`CREATE USER TABLE`, `EXECUTE AS USER`, ...).
//! - [`provider`]: the per-request catalog and table providers that make isolation structural.
//! - [`engine`]: the one shared `SessionContext` and the describe / execute entry points.
//!
//! # Query path
//! ```text
//!  request ──► ExecutionContext ──► engine::request_state(shared SessionContext, ctx)
//!                                        │  (clone of the shared state + per-request catalog)
//!                                        ▼
//!        RequestCatalog ─► UserTableProvider{Arc<TableRuntime>, ctx} ─► scan(own partition)
//!                                        │
//!                                        ▼
//!                         SendableRecordBatchStream ──► server encodes to Flight
//! ```

pub mod auth;
pub mod catalog;
pub mod context;
pub mod engine;
pub mod error;
pub mod live;
pub mod provider;
pub mod sql;
pub mod stats;
pub mod table;

pub use error::{Error, Result};
