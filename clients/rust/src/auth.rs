//! The `authorization` header: Basic credentials out, Bearer token in.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::error::{Error, Result};

/// gRPC metadata key carrying credentials in both directions.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// `Basic base64(user:password)`, padded, as HTTP Basic auth defines it.
pub(crate) fn basic_header(user: &str, password: &str) -> Result<AsciiMetadataValue> {
    let encoded = STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
        .parse()
        .map_err(|_| Error::InvalidArgument("credentials do not form a valid header".into()))
}

/// `Bearer <token>` for every call after login.
pub(crate) fn bearer_header(token: &str) -> Result<AsciiMetadataValue> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::InvalidArgument("bearer token is not a valid header value".into()))
}

/// The token in an `authorization: Bearer <token>` entry of `metadata`, if there is one.
pub(crate) fn bearer_from_metadata(metadata: &MetadataMap) -> Result<Option<String>> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::protocol("authorization header is not ASCII"))?;
    match parse_bearer(value) {
        Some(token) => Ok(Some(token.to_owned())),
        None => Err(Error::protocol(
            "authorization header from the server is not `Bearer <token>`",
        )),
    }
}

/// `Some(token)` for `Bearer <token>` (scheme case-insensitive, token non-empty).
fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_padded_base64() {
        let header = basic_header("root", "pw").ok();
        // base64("root:pw") = "cm9vdDpwdw==" (padded)
        assert_eq!(
            header.as_ref().and_then(|h| h.to_str().ok()),
            Some("Basic cm9vdDpwdw==")
        );
    }

    #[test]
    fn bearer_is_parsed_case_insensitively() {
        assert_eq!(parse_bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(parse_bearer("bearer  abc "), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("Bearer"), None);
    }

    #[test]
    fn missing_header_is_none_and_wrong_scheme_is_an_error() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(bearer_from_metadata(&metadata), Ok(None)));
        metadata.insert(AUTHORIZATION, AsciiMetadataValue::from_static("Basic x"));
        assert!(matches!(
            bearer_from_metadata(&metadata),
            Err(Error::Protocol(_))
        ));
        metadata.insert(AUTHORIZATION, AsciiMetadataValue::from_static("Bearer t0k"));
        assert_eq!(
            bearer_from_metadata(&metadata).ok().flatten().as_deref(),
            Some("t0k")
        );
    }
}
