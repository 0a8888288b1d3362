//! The one mapping from [`kalam_core::Error`] to gRPC [`Status`].
//!
//! Client mistakes are logged at debug, server faults at error with the request id, and the
//! client sees the request id instead of internal details.

use datafusion::error::DataFusionError;
use kalam_core::Error;
use tonic::Status;

/// Maps a core error to a status, logging it once here.
pub fn to_status(err: Error, request_id: &str) -> Status {
    match err {
        Error::InvalidArgument(m) => client(Status::invalid_argument(m)),
        Error::NotFound(m) => client(Status::not_found(m)),
        Error::AlreadyExists(m) => client(Status::already_exists(m)),
        Error::PermissionDenied(m) => client(Status::permission_denied(m)),
        Error::Unauthenticated(m) => client(Status::unauthenticated(m)),
        Error::ResourceExhausted(m) => client(Status::resource_exhausted(m)),
        Error::Unsupported(m) => client(Status::unimplemented(m)),
        Error::FailedPrecondition(m) => client(Status::failed_precondition(m)),
        Error::Cancelled(m) => client(Status::cancelled(m)),
        Error::Aborted(m) => client(Status::aborted(m)),
        Error::Storage(e) => storage_status(e, request_id),
        Error::DataFusion(e) => datafusion_status(e, request_id),
        Error::Internal(m) => internal(&m, request_id),
    }
}

fn client(status: Status) -> Status {
    tracing::debug!(code = ?status.code(), message = status.message(), "request failed");
    status
}

fn internal(detail: &str, request_id: &str) -> Status {
    tracing::error!(%request_id, detail, "internal error");
    Status::internal(format!("internal error (request id {request_id})"))
}

fn storage_status(err: kalam_storage::Error, request_id: &str) -> Status {
    use kalam_storage::Error as S;
    match err {
        S::DuplicateKey { .. } => client(Status::already_exists(err.to_string())),
        S::Arrow { .. } => client(Status::invalid_argument(err.to_string())),
        S::BufferFull { .. } => client(Status::resource_exhausted(err.to_string())),
        S::WalClosed(_) => {
            tracing::warn!(%request_id, error = %err, "write not made durable");
            Status::unavailable(format!(
                "{err} (request id {request_id}); the write was not applied"
            ))
        }
        S::InvalidUrl { .. }
        | S::ObjectStore { .. }
        | S::CorruptLog { .. }
        | S::NoConditionalPut { .. }
        | S::StoreUnavailable { .. }
        | S::CommitContention { .. }
        | S::WalCorrupt { .. }
        | S::Io { .. } => internal(&err.to_string(), request_id),
    }
}

/// Maps a DataFusion error by its root cause.
pub fn datafusion_status(err: DataFusionError, request_id: &str) -> Status {
    // Our own errors travel through DataFusion as `External`; unwrap them first.
    let err = match Error::from_datafusion(err) {
        Error::DataFusion(e) => e,
        core => return to_status(core, request_id),
    };
    let root = err.find_root();
    let msg = match root {
        // DataFusion renders parser errors with `{:?}` (`ParserError("…")`); use Display.
        DataFusionError::SQL(e, _) => e.to_string(),
        _ => root.message().to_string(),
    };
    match root {
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::ArrowError(..)
        | DataFusionError::Execution(_) => {
            if msg.contains("not found") && msg.contains("table") {
                client(Status::not_found(msg))
            } else {
                client(Status::invalid_argument(msg))
            }
        }
        DataFusionError::ResourcesExhausted(_) => client(Status::resource_exhausted(msg)),
        DataFusionError::External(_) => internal(&err.to_string(), request_id),
        _ => internal(&err.to_string(), request_id),
    }
}
