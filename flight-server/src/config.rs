//! Command-line flags; each also reads `KALAM_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// `kalam-server` options (DESIGN §2).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kalam-server",
    version,
    about = "KalamFlight: multi-tenant SQL over Arrow Flight"
)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ...`).
    #[arg(long, env = "KALAM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory for the WAL, spill files and (by default) the object store.
    #[arg(long, env = "KALAM_DATA_DIR", default_value = "./kalam-data")]
    pub data_dir: PathBuf,
    /// Configuration file (not supported by this build; refused if given).
    #[arg(long, env = "KALAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Object store root: file:///dir, memory://, s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix (default: file://<data-dir>/store). S3 also reads the standard
    /// AWS_* variables; the --s3-* flags override them. GCS reads GOOGLE_*, Azure AZURE_*.
    #[arg(long, env = "KALAM_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// S3 endpoint of an S3-compatible service, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "KALAM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "KALAM_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long, env = "KALAM_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default: AWS_SECRET_ACCESS_KEY). Prefer the variable to the flag:
    /// command lines are visible to other local users.
    #[arg(long, env = "KALAM_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// Allow a plain-HTTP S3 endpoint (local emulators only).
    #[arg(long, env = "KALAM_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// Prometheus endpoint address (not supported by this build; refused if given).
    #[arg(long, env = "KALAM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Memory for query operators, e.g. 2GiB, 512MiB (sorts and aggregates spill beyond it).
    #[arg(long, env = "KALAM_MEMORY_LIMIT", default_value = "2GiB", value_parser = parse_size)]
    pub memory_limit: usize,
    /// Lifetime of bearer tokens issued by Handshake, in seconds.
    #[arg(long, env = "KALAM_TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,
    /// TLS certificate (PEM) (not supported by this build; refused if given).
    #[arg(long, env = "KALAM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KALAM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// A flag value that `Debug` never shows.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// The S3 settings given on the command line or in `KALAM_S3_*`.
    pub fn s3_options(&self) -> kalam_storage::store::S3Options {
        kalam_storage::store::S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.as_ref().map(|s| s.0.clone()),
            allow_http: self.s3_allow_http,
        }
    }
}

/// Parses `123`, `64KiB`, `512MiB`, `2GiB` (also KB/MB/GB as powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("2XB").is_err());
    }

    #[test]
    fn s3_secret_is_not_printed() {
        let c = Config::parse_from([
            "kalam-server",
            "--s3-secret-access-key",
            "hunter2",
            "--s3-allow-http",
        ]);
        assert!(!format!("{c:?}").contains("hunter2"));
        let s3 = c.s3_options();
        assert_eq!(s3.secret_access_key.as_deref(), Some("hunter2"));
        assert!(s3.allow_http);
        assert!(!format!("{s3:?}").contains("hunter2"));
    }
}
