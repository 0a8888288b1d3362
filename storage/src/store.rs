//! Object store construction from a `--storage-url`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
};
use url::Url;

use crate::{Error, Result};

/// How long the start-up probe waits for a cloud store before giving up: the client retries
/// refused connections for minutes, and a server that cannot reach its store should say so.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// S3 settings from flags (`--s3-*`) or `KALAM_S3_*`. Anything unset falls back to the
/// standard `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...);
/// anything set here overrides them.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible service, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region, e.g. `eu-central-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (never printed).
    pub secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints (local emulators).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Opens the object store named by `url`.
///
/// - `file:///abs/dir` (created if missing) and `memory://`;
/// - `s3://bucket/prefix` (`s3a://` too), configured from `s3` and the `AWS_*` variables;
/// - `gs://bucket/prefix` from the `GOOGLE_*` variables, `az://container/prefix` (and the
///   `abfs[s]://` forms) from the `AZURE_*` variables.
///
/// The path part of a cloud URL becomes a prefix under which every object lives. Nothing is
/// contacted here; [`probe_conditional_put`] does the first round trip.
pub fn open(url: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| invalid("file urls must be absolute paths".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| invalid(format!("cannot create directory {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| Error::ObjectStore {
                path: dir.display().to_string(),
                source: e,
            })?;
            return Ok(Arc::new(fs));
        }
        "memory" => return Ok(Arc::new(InMemory::new())),
        "s3" | "s3a" | "gs" | "az" | "adl" | "azure" | "abfs" | "abfss" => {}
        other => {
            return Err(invalid(format!(
                "unknown scheme '{other}' (expected file://, memory://, s3://, gs:// or az://)"
            )));
        }
    }
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
    let built: object_store::Result<Arc<dyn ObjectStore>> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::from_env().with_url(url);
            if let Some(v) = &s3.endpoint {
                b = b.with_endpoint(v);
            }
            if let Some(v) = &s3.region {
                b = b.with_region(v);
            }
            if let Some(v) = &s3.access_key_id {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = &s3.secret_access_key {
                b = b.with_secret_access_key(v);
            }
            if s3.allow_http {
                b = b.with_allow_http(true);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        ObjectStoreScheme::GoogleCloudStorage => GoogleCloudStorageBuilder::from_env()
            .with_url(url)
            .build()
            .map(|s| Arc::new(s) as _),
        ObjectStoreScheme::MicrosoftAzure => MicrosoftAzureBuilder::from_env()
            .with_url(url)
            .build()
            .map(|s| Arc::new(s) as _),
        other => return Err(invalid(format!("unsupported store {other:?}"))),
    };
    let store = built.map_err(|e| invalid(one_line(&e.to_string())))?;
    if prefix.as_ref().is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

/// Joins a multi-line error (S3 answers carry XML bodies) into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks that `store` is reachable and refuses a second create of the same object, which
/// every commit in KalamFlight relies on. Gives up after [`PROBE_TIMEOUT`]. The probe object
/// is deleted afterwards (a crash may leave one under `_probe/`; it is never read).
pub async fn probe_conditional_put(store: &dyn ObjectStore, url: &str) -> Result<()> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe(store, url)).await {
        Ok(result) => result,
        Err(_) => Err(Error::StoreUnavailable {
            url: url.to_string(),
            reason: format!(
                "no answer within {} s (is the endpoint reachable?)",
                PROBE_TIMEOUT.as_secs()
            ),
        }),
    }
}

async fn probe(store: &dyn ObjectStore, url: &str) -> Result<()> {
    // Unique per process and start, so servers sharing a bucket never probe the same object.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = Path::from(format!("_probe/{}-{nanos}", std::process::id()));
    let opts = || PutOptions::from(PutMode::Create);
    let no_create = |reason: String| Error::NoConditionalPut {
        url: url.to_string(),
        reason,
    };
    match store
        .put_opts(&path, PutPayload::from_static(b"probe"), opts())
        .await
    {
        Ok(_) => {}
        Err(e @ object_store::Error::NotImplemented { .. }) => {
            return Err(no_create(one_line(&e.to_string())));
        }
        Err(e) => {
            return Err(Error::StoreUnavailable {
                url: url.to_string(),
                reason: one_line(&e.to_string()),
            });
        }
    }
    let second = store
        .put_opts(&path, PutPayload::from_static(b"probe"), opts())
        .await;
    let _ = store.delete(&path).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(no_create(
            "a second create of the same object succeeded (the store ignores If-None-Match)".into(),
        )),
        Err(e) => Err(no_create(one_line(&e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_and_memory_stores_honour_create() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let store = open(&url, &S3Options::default()).unwrap();
        probe_conditional_put(store.as_ref(), &url).await.unwrap();
        let mem = open("memory://", &S3Options::default()).unwrap();
        probe_conditional_put(mem.as_ref(), "memory://")
            .await
            .unwrap();
    }

    #[test]
    fn bad_urls_are_refused_clearly() {
        let none = S3Options::default();
        let err = open("ftp://x", &none).unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
        assert!(open("not a url", &none).is_err());
        // A cloud URL is only parsed here; nothing is contacted until the probe.
        assert!(open("s3://bucket/some/prefix", &none).is_ok());
        assert!(open("gs://bucket/p", &none).is_ok());
        // Azure needs an account (AZURE_STORAGE_ACCOUNT_NAME or the abfs host form).
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            let err = open("az://container/p", &none).unwrap_err().to_string();
            assert!(err.contains("az://container/p"), "{err}");
            assert!(err.contains("Account must be specified"), "{err}");
        }
    }
}
