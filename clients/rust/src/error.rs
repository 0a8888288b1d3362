//! The crate's error type.

use arrow::error::ArrowError;
use arrow_flight::error::FlightError;

/// Result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a KalamFlight server.
///
/// Errors the server reported keep their gRPC status: match on [`Error::code`] to tell
/// `UNAUTHENTICATED`, `PERMISSION_DENIED`, `ALREADY_EXISTS`, … apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL given to [`KalamClient::connect`](crate::KalamClient::connect) is malformed or
    /// uses an unknown scheme.
    #[error("invalid server URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// TLS options were given for a plaintext URL, or the CA certificate is not valid PEM.
    #[error("invalid TLS configuration for '{url}': {reason}")]
    InvalidTls {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// The TCP/HTTP2 (or TLS) connection to the server could not be established.
    #[error("cannot connect to '{url}'")]
    Connect {
        /// The URL as given.
        url: String,
        /// The transport failure.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server (or the gRPC stack) answered with a non-OK status.
    #[error("server returned {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),

    /// A caller-supplied value cannot be used (an empty ingest, a token that is not a valid
    /// header value, …). Nothing was sent to the server.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The server answered with something the Flight SQL protocol does not allow here.
    #[error("unexpected response from server: {0}")]
    Protocol(String),

    /// A protobuf message from the server could not be decoded.
    #[error("cannot decode {what} from the server")]
    Decode {
        /// Which message was being decoded.
        what: &'static str,
        /// The decoding failure.
        #[source]
        source: prost::DecodeError,
    },

    /// Arrow data could not be encoded or decoded.
    #[error(transparent)]
    Arrow(#[from] ArrowError),

    /// Any other failure reported by the Flight encoder/decoder.
    #[error(transparent)]
    Flight(FlightError),
}

impl Error {
    /// The gRPC status code, if the server (or the gRPC stack) reported this error.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }

    /// The full gRPC status, if the server (or the gRPC stack) reported this error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::Protocol(message.into())
    }

    pub(crate) fn decode(what: &'static str) -> impl FnOnce(prost::DecodeError) -> Self {
        move |source| Error::Decode { what, source }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl From<FlightError> for Error {
    /// Unwraps the Flight error so a status stays matchable via [`Error::code`] and our own
    /// errors, passed through the encoder as external errors, come back unchanged.
    fn from(error: FlightError) -> Self {
        match error {
            FlightError::Tonic(status) => Error::Status(*status),
            FlightError::Arrow(error) => Error::Arrow(error),
            FlightError::ExternalError(error) => match error.downcast::<Error>() {
                Ok(error) => *error,
                Err(error) => Error::Flight(FlightError::ExternalError(error)),
            },
            error => Error::Flight(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_code_survives_flight_error() {
        let flight = FlightError::from(tonic::Status::already_exists("dup"));
        let error = Error::from(flight);
        assert_eq!(error.code(), Some(tonic::Code::AlreadyExists));
        assert_eq!(error.to_string(), "server returned AlreadyExists: dup");
    }

    #[test]
    fn own_error_round_trips_through_flight_error() {
        let flight = FlightError::ExternalError(Box::new(Error::InvalidArgument("x".into())));
        assert!(matches!(Error::from(flight), Error::InvalidArgument(m) if m == "x"));
    }
}
