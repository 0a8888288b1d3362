//! A create-only, numbered JSON log on an object store.
//!
//! Entry `v` lives at `{prefix}/_log/{v:020}.json` and is written with `PutMode::Create`, so two
//! writers can never both commit version `v`: the loser learns it lost, re-reads and retries.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A numbered log under one prefix.
#[derive(Debug, Clone)]
pub struct CreateOnlyLog {
    /// Where the entries are stored.
    store: Arc<dyn ObjectStore>,
    /// `{prefix}/_log`.
    dir: Path,
}

/// What became of an append.
#[derive(Debug, PartialEq, Eq)]
pub enum Append {
    /// The entry is now version `v`.
    Committed,
    /// Another writer took that version first; read what it wrote and try again.
    Conflict,
}

impl CreateOnlyLog {
    /// A log at `{prefix}/_log`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            dir: Path::from(format!("{prefix}/_log")),
        }
    }

    fn entry_path(&self, version: u64) -> Path {
        self.dir.clone().join(format!("{version:020}.json"))
    }

    /// Reads every entry with a version `>= from`, in version order.
    pub async fn read_from<T: DeserializeOwned>(&self, from: u64) -> Result<Vec<(u64, T)>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|e| Error::ObjectStore {
                path: self.dir.to_string(),
                source: e,
            })?;
        let mut versions: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .filter(|v| *v >= from)
            .collect();
        versions.sort_unstable();
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            let path = self.entry_path(v);
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|e| Error::ObjectStore {
                    path: path.to_string(),
                    source: e,
                })?
                .bytes()
                .await
                .map_err(|e| Error::ObjectStore {
                    path: path.to_string(),
                    source: e,
                })?;
            let entry = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptLog {
                path: path.to_string(),
                source: e,
            })?;
            out.push((v, entry));
        }
        Ok(out)
    }

    /// Writes `entry` as version `version` unless that version exists already.
    pub async fn try_append<T: Serialize>(&self, version: u64, entry: &T) -> Result<Append> {
        let path = self.entry_path(version);
        let body = serde_json::to_vec(entry).map_err(|e| Error::CorruptLog {
            path: path.to_string(),
            source: e,
        })?;
        match self
            .store
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(Append::Committed),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Append::Conflict),
            Err(e) => Err(Error::ObjectStore {
                path: path.to_string(),
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn versions_are_create_only_and_read_in_order() {
        let log = CreateOnlyLog::new(Arc::new(InMemory::new()), "catalog");
        assert_eq!(log.try_append(1, &"a").await.unwrap(), Append::Committed);
        assert_eq!(log.try_append(2, &"b").await.unwrap(), Append::Committed);
        assert_eq!(log.try_append(2, &"c").await.unwrap(), Append::Conflict);
        let all: Vec<(u64, String)> = log.read_from(0).await.unwrap();
        assert_eq!(all, vec![(1, "a".to_string()), (2, "b".to_string())]);
        let tail: Vec<(u64, String)> = log.read_from(2).await.unwrap();
        assert_eq!(tail, vec![(2, "b".to_string())]);
    }
}
