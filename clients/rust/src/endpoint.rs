//! Turning a user-facing server URL into the `http://` URI tonic connects to.

use crate::error::{Error, Result};

/// Maps `grpc://host:port`, `grpc+tcp://host:port` or `http://host:port` to
/// `http://host:port`. TLS schemes are recognised and refused with [`Error::TlsNotSupported`].
pub(crate) fn http_uri(url: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme; expected grpc://host:port"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "grpc" | "grpc+tcp" | "http" => {}
        "grpc+tls" | "https" => {
            return Err(Error::TlsNotSupported {
                url: url.to_owned(),
            });
        }
        _ => return Err(invalid("unknown scheme; expected grpc:// or http://")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(invalid("expected only host:port after the scheme"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid("missing port; expected host:port"))?;
    if host.is_empty() || host == "[]" {
        return Err(invalid("missing host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid("port is not a number between 0 and 65535"));
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_schemes_map_to_http() {
        assert_eq!(
            http_uri("grpc://127.0.0.1:50051").ok().as_deref(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(
            http_uri("grpc+tcp://localhost:1/").ok().as_deref(),
            Some("http://localhost:1")
        );
        assert_eq!(
            http_uri("HTTP://[::1]:8080").ok().as_deref(),
            Some("http://[::1]:8080")
        );
    }

    #[test]
    fn tls_is_refused_clearly() {
        for url in ["grpc+tls://h:1", "https://h:1"] {
            assert!(
                matches!(http_uri(url), Err(Error::TlsNotSupported { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn malformed_urls_are_rejected() {
        for url in [
            "127.0.0.1:50051",
            "ftp://h:1",
            "grpc://h",
            "grpc://:1",
            "grpc://h:port",
            "grpc://h:70000",
            "grpc://h:1/path",
            "grpc://user@h:1",
        ] {
            assert!(
                matches!(http_uri(url), Err(Error::InvalidUrl { .. })),
                "{url}"
            );
        }
    }
}
