//! `kalam-client`: the Rust client for KalamFlight, a multi-tenant SQL database served over
//! Arrow Flight SQL.
//!
//! It is a thin layer over the generated Flight gRPC client (`arrow-flight`, `tonic`): it logs
//! in with a Flight `Handshake` (HTTP Basic in, bearer token out), sends the token on every
//! call, and maps Flight SQL commands onto plain async methods. Results are streamed
//! ([`RecordBatchStream`]), never collected inside the client, except by the `*_collect`
//! helpers meant for tests. It depends on nothing of the server (`kalam-core`,
//! `kalam-storage`, `kalam-server`) and never must.
//!
//! ```no_run
//! # async fn demo() -> kalam_client::Result<()> {
//! use futures::TryStreamExt;
//! use kalam_client::KalamClient;
//!
//! let mut client = KalamClient::connect("grpc://127.0.0.1:50051").await?;
//! client.login("root", "secret").await?;
//! client.execute("CREATE NAMESPACE IF NOT EXISTS app").await?;
//! let mut batches = client.query("SELECT 1 AS one").await?;
//! while let Some(batch) = batches.try_next().await? {
//!     println!("{} rows", batch.num_rows());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`client`](KalamClient): connection, login, query, execute, ingest, cancel.
//! - [`PreparedStatement`]: create, bind, query / update, close.
//! - [`IngestMode`]: the four ADBC ingest modes and their Flight SQL mapping.
//! - [`RecordBatchStream`]: a query's batches, plus the DoPut body adapter that aborts an
//!   upload instead of truncating it.
//! - [`Error`]: one error enum; server errors keep their gRPC code ([`Error::code`]).
//!
//! TLS: `grpc+tls://host:port` verifies the server against the system roots, or against a CA
//! given with [`ConnectOptions::ca_certificate_pem`] and [`KalamClient::connect_with`].

mod auth;
mod client;
mod endpoint;
mod error;
mod ingest;
mod live;
mod prepared;
mod stream;

pub use arrow_flight::{CancelStatus, FlightInfo};
/// The gRPC status code of a server error ([`Error::code`]).
pub use tonic::Code;

pub use crate::client::KalamClient;
pub use crate::endpoint::ConnectOptions;
pub use crate::error::{Error, Result};
pub use crate::ingest::IngestMode;
pub use crate::live::{EventKind, LiveEvent, SubscribeOptions, Subscription};
pub use crate::prepared::PreparedStatement;
pub use crate::stream::RecordBatchStream;
