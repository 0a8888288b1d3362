//! `kalam-storage`: where KalamFlight's bytes live.
//!
//! This crate knows object stores, logs and Arrow batches. It knows nothing about SQL, users'
//! roles or the network: `kalam-core` sits on top of it, and it must never depend on `tonic`,
//! `datafusion` or any crate above it.
//!
//! # Layout
//! - [`store`]: builds an [`object_store::ObjectStore`] from a `--storage-url` and probes that it
//!   honours create-if-absent.
//! - [`log`]: a create-only numbered JSON log (`{prefix}/_log/{v:020}.json`), the commit
//!   primitive of the catalog (and, later, of table manifests).
//! - [`buffer`]: the write buffer, Arrow rows per table and partition (user), with a primary-key
//!   index so the newest version of a key wins and inserts of an existing key are refused.
//! - [`manifest`]: per (table, bucket) create-only logs of Parquet files and flush positions.
//! - [`wal`]: the write-ahead log with group commit, and its recovery.
//! - [`seq`]: the process-wide commit sequence behind every row's `_seq`.

pub mod buffer;
pub mod counting;
pub mod error;
pub mod log;
pub mod manifest;
pub mod seq;
pub mod store;
pub mod wal;

pub use error::{Error, Result};
