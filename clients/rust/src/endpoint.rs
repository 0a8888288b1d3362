//! Turning a user-facing server URL into the URI tonic connects to.

use crate::error::{Error, Result};

/// Options for [`KalamClient::connect_with`](crate::KalamClient::connect_with).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM CA certificate(s) to trust instead of the system roots (TLS URLs only).
    pub(crate) ca_certificate_pem: Option<Vec<u8>>,
    /// Name to verify the server certificate against, if not the URL's host.
    pub(crate) tls_domain_name: Option<String>,
}

impl ConnectOptions {
    /// Default options: plaintext or TLS as the URL says, system roots for TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificate(s) in `pem` (PEM text) instead of the system roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Verify the server certificate against `name` rather than the URL's host.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls_domain_name = Some(name.into());
        self
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.ca_certificate_pem.is_some() || self.tls_domain_name.is_some()
    }
}

/// A parsed server URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `http://host:port` or, with TLS, `https://host:port`.
    pub(crate) uri: String,
    /// `grpc+tls://` or `https://`.
    pub(crate) tls: bool,
}

/// Maps `grpc://host:port`, `grpc+tcp://host:port` or `http://host:port` to
/// `http://host:port`, and `grpc+tls://host:port` or `https://host:port` to
/// `https://host:port`.
pub(crate) fn parse_url(url: &str) -> Result<Target> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme; expected grpc://host:port"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "grpc" | "grpc+tcp" | "http" => false,
        "grpc+tls" | "https" => true,
        _ => {
            return Err(invalid(
                "unknown scheme; expected grpc://, grpc+tls://, http:// or https://",
            ));
        }
    };
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
    let scheme = if tls { "https" } else { "http" };
    Ok(Target {
        uri: format!("{scheme}://{authority}"),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(url: &str) -> Option<String> {
        parse_url(url).ok().map(|t| t.uri)
    }

    #[test]
    fn plain_schemes_map_to_http() {
        assert_eq!(
            uri("grpc://127.0.0.1:50051").as_deref(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(
            uri("grpc+tcp://localhost:1/").as_deref(),
            Some("http://localhost:1")
        );
        assert_eq!(
            uri("HTTP://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        assert!(!parse_url("grpc://h:1").unwrap().tls);
    }

    #[test]
    fn tls_schemes_map_to_https() {
        for url in ["grpc+tls://h:1", "https://h:1"] {
            let target = parse_url(url).unwrap();
            assert!(target.tls, "{url}");
            assert_eq!(target.uri, "https://h:1");
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
                matches!(parse_url(url), Err(Error::InvalidUrl { .. })),
                "{url}"
            );
        }
    }
}
