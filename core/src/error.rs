//! The core error type: one variant per way a caller must react.

use datafusion::error::DataFusionError;

/// Errors from the SQL, catalog and auth layers. The server maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad SQL, wrong parameter types, unsupported statement.
    #[error("{0}")]
    InvalidArgument(String),
    /// A namespace, table, user or statement handle does not exist (or is not visible).
    #[error("{0}")]
    NotFound(String),
    /// A namespace, table, user or primary key exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is authenticated but not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Missing, unknown, expired or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A bound was hit (prepared statements per user, memory, rate).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is valid but the state does not allow it (a resume position too old).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation was cancelled (`KILL LIVE QUERY`).
    #[error("{0}")]
    Cancelled(String),
    /// The operation was aborted by a concurrent change (the table was dropped).
    #[error("{0}")]
    Aborted(String),
    /// The operation is valid SQL but not available in this server.
    #[error("{0}")]
    Unsupported(String),
    /// Storage failed below us.
    #[error(transparent)]
    Storage(#[from] kalam_storage::Error),
    /// DataFusion failed while planning or executing.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A bug or broken invariant; details are logged, not shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Core result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps this error so it can travel through DataFusion and be recovered with
    /// [`Error::from_datafusion`].
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }

    /// Unwraps a core error nested in `Error::DataFusion`, if there is one.
    pub fn from_datafusion_owned(self) -> Self {
        match self {
            Error::DataFusion(e) => Self::from_datafusion(e),
            other => other,
        }
    }

    /// Recovers a core error that was carried through DataFusion, if there is one.
    pub fn from_datafusion(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(core) => *core,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Context(_, inner) => Self::from_datafusion(*inner),
            DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(inner) => Self::from_datafusion(inner),
                Err(shared) => Error::DataFusion(DataFusionError::Shared(shared)),
            },
            other => Error::DataFusion(other),
        }
    }
}

/// `Err(Error::InvalidArgument(format!(..)))`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::Error::InvalidArgument(format!($($arg)*))) };
}
