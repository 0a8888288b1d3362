//! Command-line flags; each also reads `KALAM_<FLAG>` and a key of the `--config` TOML file.
//!
//! Precedence: flag > environment variable > config file > default. The file's keys are the
//! flags' names with underscores (`--data-dir` → `data_dir`); they are derived from the clap
//! definition, so every flag has one. Unknown keys are an error naming the key.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

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
    /// TOML configuration file; its keys are the flag names with underscores
    /// (docs/CONFIGURATION.md). Flags and KALAM_* variables override it.
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
    /// Address of the Prometheus endpoint (`GET /metrics`); port 0 picks a free port (printed
    /// as `metrics listening on ...`). Off unless given.
    #[arg(long, env = "KALAM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Memory for query operators, e.g. 2GiB, 512MiB (sorts and aggregates spill beyond it).
    #[arg(long, env = "KALAM_MEMORY_LIMIT", default_value = "2GiB", value_parser = parse_size)]
    pub memory_limit: usize,
    /// Hard limit on rows buffered in memory before they are flushed to Parquet, e.g. 512MiB;
    /// writers wait (never fail) while the buffers are over it.
    #[arg(long, env = "KALAM_WRITE_BUFFER_LIMIT", default_value = "512MiB", value_parser = parse_size)]
    pub write_buffer_limit: usize,
    /// Size at which WAL segments rotate, e.g. 64MiB. Segments are deleted once every table
    /// has flushed past them, and kept as long as live queries may resume from them.
    #[arg(long, env = "KALAM_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub wal_segment_bytes: usize,
    /// Buffered rows older than this many seconds are flushed to Parquet even when the buffer
    /// is small (bounds the WAL a restart replays).
    #[arg(long, env = "KALAM_FLUSH_AGE_SECS", default_value_t = 60)]
    pub flush_age_secs: u64,
    /// Recent changes kept in memory for live-query resume, e.g. 64MiB (older ones are read
    /// back from the WAL while it holds them).
    #[arg(long, env = "KALAM_LIVE_RETENTION_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub live_retention_bytes: usize,
    /// Lifetime of bearer tokens issued by Handshake, in seconds.
    #[arg(long, env = "KALAM_TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,
    /// TLS certificate chain (PEM); serves TLS only (with --tls-key).
    #[arg(long, env = "KALAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8, PKCS#1 or SEC1), for --tls-cert.
    #[arg(long, env = "KALAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flags or environment variables (also `--help` / `--version`, which clap prints).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file is missing, unreadable, not TOML, or has a bad key or value.
    #[error("config file {path}: {reason}")]
    File {
        /// The file as given.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Arguments that are not settings and so have no key in the file.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

impl Config {
    /// Reads flags, `KALAM_*` variables and the `--config` file of this process.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Like [`load`](Self::load), with the given command line (first item: program name).
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Self::from_arg_matches(&matches)?);
        };
        let extra = file_args(&path, &command, &matches)?;
        let mut all = args;
        all.extend(extra);
        // Flags and variables parsed above, so a failure now comes from the file's values.
        Self::try_parse_from(all).map_err(|e| file_value_error(&path, &e))
    }
}

/// Rewords a clap error about a value taken from the file in terms of the file's key.
fn file_value_error(path: &Path, e: &clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    // The first paragraph, without clap's usage and `--help` hints.
    let rendered = e.to_string();
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let first = first.join(" ");
    let message = first.strip_prefix("error: ").unwrap_or(&first);
    // `--memory-limit <MEMORY_LIMIT>` → `memory_limit`.
    let key = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg
            .strip_prefix("--")
            .and_then(|a| a.split([' ', '=']).next())
            .map(|a| a.replace('-', "_")),
        _ => None,
    };
    ConfigError::File {
        path: path.display().to_string(),
        reason: match key {
            Some(key) => format!("key '{key}': {message}"),
            None => message.to_string(),
        },
    }
}

/// The file's settings as `--flag=value` arguments, for the keys that neither a flag nor an
/// environment variable set.
fn file_args(
    path: &Path,
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(format!("not valid TOML: {e}")))?;
    let keys = || {
        command
            .get_arguments()
            .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()))
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = keys().find(|a| a.get_id().as_str() == key) else {
            let known: Vec<&str> = keys().map(|a| a.get_id().as_str()).collect();
            return Err(err(format!(
                "unknown key '{key}' (known keys: {})",
                known.join(", ")
            )));
        };
        if matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let Some(long) = arg.get_long() else {
            continue;
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                if *b {
                    out.push(OsString::from(format!("--{long}")));
                }
                continue;
            }
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(err(format!("key '{key}' must be a single value")));
            }
        };
        out.push(OsString::from(format!("--{long}={text}")));
    }
    Ok(out)
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

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// Serialises the tests that parse a configuration (clap reads `KALAM_*` variables).
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["kalam-server"];
        all.extend_from_slice(args);
        Config::load_from(all)
    }

    #[test]
    fn file_sets_what_flags_do_not() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let f = file(
            "listen = \"127.0.0.1:7000\"\nmemory_limit = \"300MiB\"\ntoken_ttl_secs = 60\n\
             metrics_listen = \"127.0.0.1:9464\"\n",
        );
        let path = f.path().to_str().unwrap();
        let c = load(&["--config", path, "--token-ttl-secs", "5"]).unwrap();
        assert_eq!(c.token_ttl_secs, 5, "flag beats file");
        assert_eq!(c.memory_limit, 300 << 20, "file beats default");
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("./kalam-data"), "default");
        // Sizes may also be plain integers.
        let f = file("memory_limit = 1048576\n");
        let c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.memory_limit, 1 << 20);
    }

    #[test]
    fn env_beats_file_and_flag_beats_env() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let f = file("token_ttl_secs = 60\nmemory_limit = \"300MiB\"\n");
        let path = f.path().to_str().unwrap();
        // SAFETY: every test that parses a configuration holds ENV_LOCK, and nothing else in
        // this test binary reads the environment concurrently.
        unsafe { std::env::set_var("KALAM_TOKEN_TTL_SECS", "7") };
        let env_wins = load(&["--config", path]);
        let flag_wins = load(&["--config", path, "--token-ttl-secs", "9"]);
        // SAFETY: as above.
        unsafe { std::env::remove_var("KALAM_TOKEN_TTL_SECS") };
        let env_wins = env_wins.unwrap();
        assert_eq!(env_wins.token_ttl_secs, 7);
        assert_eq!(env_wins.memory_limit, 300 << 20);
        assert_eq!(flag_wins.unwrap().token_ttl_secs, 9);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let unknown = file("listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n");
        let e = load(&["--config", unknown.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key 'listen_addr'"), "{e}");
        let e = load(&["--config", "/nonexistent/kalam.toml"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/kalam.toml") && e.contains("cannot read"),
            "{e}"
        );
        let bad = file("memory_limit = \"lots\"\n");
        let e = load(&["--config", bad.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key 'memory_limit'") && e.contains("lots"),
            "{e}"
        );
        let not_toml = file("listen = \n");
        let e = load(&["--config", not_toml.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let nested = file("[tls]\ncert = \"a\"\n");
        let e = load(&["--config", nested.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key 'tls'"), "{e}");
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let e = load(&["--tls-cert", "c.pem"]).unwrap_err().to_string();
        assert!(e.contains("--tls-key"), "{e}");
        let f = file("tls_key = \"k.pem\"\n");
        let e = load(&["--config", f.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert"), "{e}");
        let c = load(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(c.tls_key, Some(PathBuf::from("k.pem")));
    }

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
