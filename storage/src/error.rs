//! The storage error type.

/// Everything that can go wrong below the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage URL could not be understood.
    #[error("invalid storage url '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The object store answered with an error.
    #[error("object store error at '{path}': {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A log entry could not be encoded or decoded.
    #[error("corrupt log entry '{path}': {source}")]
    CorruptLog {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// The store does not honour `PutMode::Create`, so commits could not be made safely.
    #[error("object store at '{url}' does not support create-if-absent writes: {reason}")]
    NoConditionalPut { url: String, reason: String },

    /// The object store could not be reached or refused the start-up probe.
    #[error("cannot use object store at '{url}': {reason}")]
    StoreUnavailable { url: String, reason: String },

    /// A commit kept losing races with other writers.
    #[error("gave up committing to '{path}' after {attempts} attempts")]
    CommitContention { path: String, attempts: u32 },

    /// An INSERT carried a primary key that already exists (or appears twice in the statement).
    #[error("duplicate primary key {key} in table '{table}'")]
    DuplicateKey { table: String, key: String },

    /// Arrow rejected a batch (wrong schema, cast failure, ...).
    #[error("arrow error in table '{table}': {source}")]
    Arrow {
        table: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// The WAL is damaged before its tail: refusing to guess what was committed.
    #[error("WAL corrupt in {file} at offset {offset}: {reason}")]
    WalCorrupt {
        file: String,
        offset: u64,
        reason: String,
    },

    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The WAL writer has stopped (shutdown or a failed fsync); the write was not made durable.
    #[error("WAL unavailable: {0}")]
    WalClosed(String),

    /// The write buffer is at its hard limit.
    #[error("write buffer full: {used} bytes used of {limit}")]
    BufferFull { used: usize, limit: usize },
}

/// Storage result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
