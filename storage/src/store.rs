//! Object store construction from a `--storage-url`.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::{Error, Result};

/// Opens the object store named by `url`.
///
/// Supported now: `file:///abs/dir` (created if missing) and `memory://`. Cloud schemes are
/// recognised and refused with a clear message until their backends are compiled in.
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>> {
    let parsed = Url::parse(url).map_err(|e| Error::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed.to_file_path().map_err(|()| Error::InvalidUrl {
                url: url.to_string(),
                reason: "file urls must be absolute paths".into(),
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| Error::InvalidUrl {
                url: url.to_string(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
            let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| Error::ObjectStore {
                path: dir.display().to_string(),
                source: e,
            })?;
            Ok(Arc::new(fs))
        }
        "memory" => Ok(Arc::new(InMemory::new())),
        "s3" | "gs" | "az" | "abfs" => Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: format!(
                "the '{}' backend is not built into this server yet; use file:// or memory://",
                parsed.scheme()
            ),
        }),
        other => Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: format!("unknown scheme '{other}' (expected file://, memory:// or s3://)"),
        }),
    }
}

/// Checks that `store` refuses a second create of the same object, which every commit in
/// KalamFlight relies on. Leaves a small probe object behind (overwritten each start).
pub async fn probe_conditional_put(store: &dyn ObjectStore, url: &str) -> Result<()> {
    let path = Path::from(format!("_probe/{}", std::process::id()));
    // Clear a leftover from an earlier process with the same pid.
    let _ = store.delete(&path).await;
    let opts = || PutOptions::from(PutMode::Create);
    store
        .put_opts(&path, PutPayload::from_static(b"probe"), opts())
        .await
        .map_err(|e| Error::NoConditionalPut {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    match store
        .put_opts(&path, PutPayload::from_static(b"probe"), opts())
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => {
            let _ = store.delete(&path).await;
            Ok(())
        }
        Ok(_) => Err(Error::NoConditionalPut {
            url: url.to_string(),
            reason: "a second create of the same object succeeded".into(),
        }),
        Err(e) => Err(Error::NoConditionalPut {
            url: url.to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_and_memory_stores_honour_create() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let store = open(&url).unwrap();
        probe_conditional_put(store.as_ref(), &url).await.unwrap();
        let mem = open("memory://").unwrap();
        probe_conditional_put(mem.as_ref(), "memory://")
            .await
            .unwrap();
    }

    #[test]
    fn bad_urls_are_refused_clearly() {
        let err = open("ftp://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
        assert!(open("not a url").is_err());
    }
}
