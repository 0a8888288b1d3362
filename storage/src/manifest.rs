//! Table manifests: which Parquet files make up one (table, bucket), as a create-only log.
//!
//! `tables/{table_id}/{bucket}/_log/{v:020}.json` holds [`ManifestEntry`]s: files added and
//! removed, and the highest `_seq` whose rows are all in the bucket's files (`flushed_seq`).
//! Replaying the log in version order gives the bucket's [`BucketState`]. A commit that loses
//! the race for a version re-reads what the winner wrote, checks its own entry still applies
//! (the files it removes are still there) and retries with the next version.

use std::sync::Arc;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::log::{Append, CreateOnlyLog};
use crate::{Error, Result};

/// Commit attempts before giving up with [`Error::CommitContention`].
const MAX_ATTEMPTS: u32 = 32;

/// One Parquet file of a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Object path relative to the store root.
    pub path: String,
    /// Rows (row versions, tombstones included).
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Smallest `_seq` in the file.
    pub min_seq: u64,
    /// Largest `_seq` in the file.
    pub max_seq: u64,
    /// Oldest commit time (ms since the epoch) of a row in the file.
    pub min_time_ms: i64,
    /// Newest commit time of a row in the file (STREAM files expire by it).
    pub max_time_ms: i64,
    /// Distinct partitions (users) with rows in the file.
    pub partitions: u64,
}

/// One committed change to a bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Files that became part of the bucket.
    pub added: Vec<FileMeta>,
    /// Paths of files that stopped being part of it (compaction, expiry).
    pub removed: Vec<String>,
    /// Every row of this bucket with `_seq <= flushed_seq` is in the bucket's files.
    pub flushed_seq: u64,
    /// What wrote it (`flush`, `compact`, `expire`), for operators.
    pub job: String,
    /// When it was committed (ms since the epoch).
    pub committed_at_ms: i64,
}

/// A bucket's files and flush position after replaying its log.
#[derive(Debug, Clone, Default)]
pub struct BucketState {
    /// Last applied log version (0: empty log).
    pub version: u64,
    /// Files, newest (highest `max_seq`) first.
    pub files: Vec<FileMeta>,
    /// See [`ManifestEntry::flushed_seq`].
    pub flushed_seq: u64,
}

impl BucketState {
    fn apply(&mut self, version: u64, e: &ManifestEntry) {
        self.files.retain(|f| !e.removed.contains(&f.path));
        self.files.extend(e.added.iter().cloned());
        self.files.sort_by_key(|f| std::cmp::Reverse(f.max_seq));
        self.flushed_seq = self.flushed_seq.max(e.flushed_seq);
        self.version = version;
    }

    /// Would `e` still make sense on top of this state?
    fn admits(&self, e: &ManifestEntry) -> bool {
        e.removed
            .iter()
            .all(|p| self.files.iter().any(|f| &f.path == p))
    }
}

/// The manifest log of one (table, bucket).
#[derive(Debug)]
pub struct BucketManifest {
    log: CreateOnlyLog,
    prefix: String,
    state: tokio::sync::Mutex<BucketState>,
}

impl BucketManifest {
    /// Opens (and replays) the manifest at `{prefix}/_log`.
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: String) -> Result<Self> {
        let log = CreateOnlyLog::new(store, &prefix);
        let mut state = BucketState::default();
        for (v, e) in log.read_from::<ManifestEntry>(1).await? {
            state.apply(v, &e);
        }
        Ok(Self {
            log,
            prefix,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// The bucket's current state as this process knows it.
    pub async fn state(&self) -> BucketState {
        self.state.lock().await.clone()
    }

    /// Commits `entry` as the next version, retrying on lost races. Returns the new state.
    pub async fn commit(&self, entry: &ManifestEntry) -> Result<BucketState> {
        let mut st = self.state.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let version = st.version + 1;
            match self.log.try_append(version, entry).await? {
                Append::Committed => {
                    st.apply(version, entry);
                    return Ok(st.clone());
                }
                Append::Conflict => {
                    for (v, e) in self.log.read_from::<ManifestEntry>(version).await? {
                        st.apply(v, &e);
                    }
                    if !st.admits(entry) {
                        return Err(Error::CommitContention {
                            path: self.prefix.clone(),
                            attempts: 1,
                        });
                    }
                }
            }
        }
        Err(Error::CommitContention {
            path: self.prefix.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn file(path: &str, seq: u64) -> FileMeta {
        FileMeta {
            path: path.into(),
            rows: 1,
            bytes: 1,
            min_seq: seq,
            max_seq: seq,
            min_time_ms: 0,
            max_time_ms: 0,
            partitions: 1,
        }
    }

    #[tokio::test]
    async fn racing_writers_both_land_exactly_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = Arc::new(
            BucketManifest::open(Arc::clone(&store), "t/1/b00".into())
                .await
                .unwrap(),
        );
        let b = Arc::new(
            BucketManifest::open(Arc::clone(&store), "t/1/b00".into())
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let m = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            tasks.push(tokio::spawn(async move {
                let e = ManifestEntry {
                    added: vec![file(&format!("f{i}"), i + 1)],
                    flushed_seq: i + 1,
                    ..Default::default()
                };
                m.commit(&e).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let reopened = BucketManifest::open(store, "t/1/b00".into()).await.unwrap();
        let st = reopened.state().await;
        assert_eq!(st.version, 40, "one version per commit");
        assert_eq!(st.files.len(), 40, "nothing lost, nothing doubled");
        assert_eq!(st.flushed_seq, 40);
        assert_eq!(st.files[0].max_seq, 40, "newest first");
    }

    #[tokio::test]
    async fn removing_a_file_someone_else_removed_is_refused() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = BucketManifest::open(Arc::clone(&store), "p".into())
            .await
            .unwrap();
        let add = ManifestEntry {
            added: vec![file("f1", 1)],
            ..Default::default()
        };
        a.commit(&add).await.unwrap();
        let b = BucketManifest::open(Arc::clone(&store), "p".into())
            .await
            .unwrap();
        let rm = ManifestEntry {
            removed: vec!["f1".into()],
            ..Default::default()
        };
        a.commit(&rm).await.unwrap();
        // `b` has not seen the removal: it loses the race, re-reads, and finds f1 gone.
        assert!(b.commit(&rm).await.is_err());
    }
}
