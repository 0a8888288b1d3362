//! A table's storage layers: the active write-buffer generation, frozen generations being
//! flushed, and the Parquet files of each bucket (newest first).
//!
//! ```text
//!   writes ──► active generation ──freeze──► frozen generations ──flush──► bucket files
//!   reads  ◄── merge(active, frozen…, files…): newest `_seq` per key wins, tombstones hide
//! ```
//!
//! Every write holds its partition's writer lock and the active generation's *gate* (read) from
//! validation through the WAL append to the apply. Freezing takes the gate for writing, so it
//! waits for in-flight commits and no commit straddles two generations: everything of this
//! table with `_seq <=` the freeze point is in the frozen generation or older layers, and that
//! is the `flushed_seq` its manifests record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::Schema;
use kalam_storage::buffer::{BufferAccounting, TableBuffer};
use kalam_storage::manifest::{BucketManifest, BucketState, FileMeta};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::{Mutex, RwLock};
use tokio::sync::OwnedRwLockReadGuard;

use crate::catalog::TableKind;
use crate::{Error, Result};

/// USER and STREAM partitions are hashed into this many buckets (`b00`..`b15`), so a flush
/// writes at most this many files per table and a user's scan reads one bucket.
pub const USER_BUCKETS: u32 = 16;

/// The bucket holding `partition` of a table of `kind`.
pub fn bucket_of(kind: TableKind, partition: &str) -> String {
    match kind {
        TableKind::Shared => "shared".into(),
        TableKind::Stream => "stream".into(),
        TableKind::User => {
            // crc32 is stable across versions and platforms: the layout depends on it.
            format!(
                "b{:02}",
                crc32fast::hash(partition.as_bytes()) % USER_BUCKETS
            )
        }
    }
}

/// One generation of the write buffer, with the gate that freezing closes.
#[derive(Debug)]
pub struct Generation {
    /// The rows.
    pub buf: TableBuffer,
    /// `true` once frozen; commits hold it for reading.
    gate: Arc<tokio::sync::RwLock<bool>>,
    /// When this generation became active (flush-by-age policy).
    pub created: std::time::Instant,
    /// Once frozen: every commit of the table up to this seq is in it or older layers.
    upto: std::sync::atomic::AtomicU64,
}

/// A Parquet file of a bucket. When a compaction or expiry removes it from the bucket, it is
/// deleted from the store once the last reader holding it is done.
#[derive(Debug)]
pub struct FileRef {
    /// Manifest record.
    pub meta: FileMeta,
    obsolete: AtomicBool,
    store: Arc<dyn ObjectStore>,
}

impl Drop for FileRef {
    fn drop(&mut self) {
        if !self.obsolete.load(Ordering::Acquire) {
            return;
        }
        let path = Path::from(self.meta.path.as_str());
        let store = Arc::clone(&self.store);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.delete(&path).await {
                    tracing::warn!(%path, error = %e, "could not delete obsolete file");
                }
            });
        }
    }
}

/// A bucket's files (newest first) and flush position, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct BucketFiles {
    /// Files, newest (highest `max_seq`) first.
    pub files: Vec<Arc<FileRef>>,
    /// Rows of this bucket with `_seq <=` this are all in `files`.
    pub flushed_seq: u64,
}

#[derive(Debug)]
struct Layers {
    active: Arc<Generation>,
    /// Newest first.
    frozen: Vec<Arc<Generation>>,
    buckets: HashMap<String, Arc<BucketFiles>>,
}

/// What a reader of one partition sees, taken atomically.
#[derive(Debug, Clone)]
pub struct LayerSnapshot {
    /// Newest generation first: the active one, then frozen ones.
    pub generations: Vec<Arc<Generation>>,
    /// The partition's bucket files, if any.
    pub files: Option<Arc<BucketFiles>>,
}

impl LayerSnapshot {
    /// True when only the active generation holds rows (no merge needed).
    pub fn buffer_only(&self) -> bool {
        self.generations.len() == 1 && self.files.as_ref().is_none_or(|b| b.files.is_empty())
    }
}

/// All storage state of one table, shared by its successive runtimes (ALTER TABLE).
#[derive(Debug)]
pub struct TableStore {
    /// Table id (object paths and WAL records name tables by id).
    pub id: u64,
    /// `namespace.name`, for messages.
    pub name: String,
    /// USER, SHARED or STREAM.
    pub kind: TableKind,
    /// Primary-key positions among the user columns.
    pub pk: Vec<usize>,
    /// User columns when created (primary-key types never change).
    key_schema: Schema,
    accounting: Arc<BufferAccounting>,
    layers: RwLock<Layers>,
    /// One writer per partition, held from validation to apply so log order is apply order.
    /// An entry lives while someone holds or waits for it ([`PartitionWriter`] removes it on
    /// release), so the map is bounded by the partitions being written right now.
    writers: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    /// Manifests by bucket, opened on first use. Bounded by [`USER_BUCKETS`] + 2.
    manifests: tokio::sync::Mutex<HashMap<String, Arc<BucketManifest>>>,
    /// One flush or compaction of this table at a time.
    pub maintenance: tokio::sync::Mutex<()>,
}

impl TableStore {
    /// Storage for a new (or just loaded) table with no files yet.
    pub fn new(
        id: u64,
        name: String,
        kind: TableKind,
        schema: &Schema,
        pk: Vec<usize>,
        accounting: Arc<BufferAccounting>,
    ) -> Result<Self> {
        let active = Arc::new(Self::generation(&name, schema, &pk, &accounting, false)?);
        Ok(Self {
            id,
            name,
            kind,
            pk,
            key_schema: schema.clone(),
            accounting,
            layers: RwLock::new(Layers {
                active,
                frozen: Vec::new(),
                buckets: HashMap::new(),
            }),
            writers: Mutex::new(HashMap::new()),
            manifests: tokio::sync::Mutex::new(HashMap::new()),
            maintenance: tokio::sync::Mutex::new(()),
        })
    }

    fn generation(
        name: &str,
        schema: &Schema,
        pk: &[usize],
        accounting: &Arc<BufferAccounting>,
        keep_tombstones: bool,
    ) -> Result<Generation> {
        Ok(Generation {
            buf: TableBuffer::new(
                name,
                schema,
                pk.to_vec(),
                Arc::clone(accounting),
                keep_tombstones,
            )?,
            gate: Arc::new(tokio::sync::RwLock::new(false)),
            created: std::time::Instant::now(),
            upto: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A new generation that keeps tombstones (older layers exist).
    fn tombstoning_generation(&self) -> Result<Generation> {
        Self::generation(
            &self.name,
            &self.key_schema,
            &self.pk,
            &self.accounting,
            true,
        )
    }

    /// `tables/{id}`.
    pub fn prefix(&self) -> String {
        format!("tables/{}", self.id)
    }

    /// The bucket of `partition`.
    pub fn bucket_of(&self, partition: &str) -> String {
        bucket_of(self.kind, partition)
    }

    /// Takes the writer lock of `partition` (see the field docs), waiting for the current holder.
    pub async fn lock_partition(&self, partition: &str) -> PartitionWriter<'_> {
        let key: Arc<str> = Arc::from(partition);
        let lock = Arc::clone(self.writers.lock().entry(Arc::clone(&key)).or_default());
        PartitionWriter {
            store: self,
            partition: key,
            guard: Some(lock.lock_owned().await),
        }
    }

    /// The active generation with its gate held for a commit. Retries if a freeze wins the race.
    pub async fn begin_write(&self) -> (Arc<Generation>, OwnedRwLockReadGuard<bool>) {
        loop {
            let generation = Arc::clone(&self.layers.read().active);
            let guard = Arc::clone(&generation.gate).read_owned().await;
            if !*guard {
                return (generation, guard);
            }
        }
    }

    /// The active generation (for accounting and policy; writes go through `begin_write`).
    pub fn active(&self) -> Arc<Generation> {
        Arc::clone(&self.layers.read().active)
    }

    /// The layers a reader of `partition` sees.
    pub fn snapshot(&self, partition: &str) -> LayerSnapshot {
        let bucket = self.bucket_of(partition);
        let l = self.layers.read();
        let mut generations = Vec::with_capacity(1 + l.frozen.len());
        generations.push(Arc::clone(&l.active));
        generations.extend(l.frozen.iter().cloned());
        LayerSnapshot {
            generations,
            files: l.buckets.get(&bucket).cloned(),
        }
    }

    /// Every bucket's files (for compaction and expiry).
    pub fn buckets(&self) -> Vec<(String, Arc<BucketFiles>)> {
        self.layers
            .read()
            .buckets
            .iter()
            .map(|(b, f)| (b.clone(), Arc::clone(f)))
            .collect()
    }

    /// The smallest `_seq` the WAL must still hold for this table (`u64::MAX`: nothing).
    pub fn low_water(&self) -> u64 {
        let l = self.layers.read();
        l.frozen
            .iter()
            .map(|g| g.buf.min_seq())
            .fold(l.active.buf.min_seq(), u64::min)
    }

    /// Bytes buffered by every generation.
    pub fn buffered_bytes(&self) -> usize {
        let l = self.layers.read();
        l.frozen.iter().map(|g| g.buf.bytes()).sum::<usize>() + l.active.buf.bytes()
    }

    /// Opens the manifest of `bucket`.
    pub async fn manifest(
        &self,
        store: &Arc<dyn ObjectStore>,
        bucket: &str,
    ) -> Result<Arc<BucketManifest>> {
        let mut m = self.manifests.lock().await;
        if let Some(found) = m.get(bucket) {
            return Ok(Arc::clone(found));
        }
        let opened = Arc::new(
            BucketManifest::open(Arc::clone(store), format!("{}/{bucket}", self.prefix())).await?,
        );
        m.insert(bucket.to_string(), Arc::clone(&opened));
        Ok(opened)
    }

    /// Loads every bucket's manifest (at start-up, before the WAL is replayed). Returns the
    /// flushed position per bucket.
    pub async fn load(&self, store: &Arc<dyn ObjectStore>) -> Result<HashMap<String, u64>> {
        let listing = store
            .list_with_delimiter(Some(&Path::from(self.prefix())))
            .await
            .map_err(|e| {
                Error::Storage(kalam_storage::Error::ObjectStore {
                    path: self.prefix(),
                    source: e,
                })
            })?;
        let mut flushed = HashMap::new();
        for dir in listing.common_prefixes {
            let Some(bucket) = dir.filename().map(str::to_string) else {
                continue;
            };
            let state = self.manifest(store, &bucket).await?.state().await;
            flushed.insert(bucket.clone(), state.flushed_seq);
            self.install_bucket(store, &bucket, &state);
        }
        if self.has_files() {
            // Deletes must now leave tombstones: the files may hold the keys.
            let mut l = self.layers.write();
            if l.active.buf.is_empty() {
                l.active = Arc::new(self.tombstoning_generation()?);
            }
        }
        Ok(flushed)
    }

    fn has_files(&self) -> bool {
        self.layers
            .read()
            .buckets
            .values()
            .any(|b| !b.files.is_empty())
    }

    /// Makes `state` the bucket's visible file set (keeping handles of files still present and
    /// marking removed ones for deletion).
    pub fn install_bucket(&self, store: &Arc<dyn ObjectStore>, bucket: &str, state: &BucketState) {
        let mut l = self.layers.write();
        Self::install_locked(&mut l, store, bucket, state);
    }

    fn install_locked(
        l: &mut Layers,
        store: &Arc<dyn ObjectStore>,
        bucket: &str,
        state: &BucketState,
    ) {
        let old = l.buckets.get(bucket).cloned().unwrap_or_default();
        let files = state
            .files
            .iter()
            .map(|meta| {
                old.files
                    .iter()
                    .find(|f| f.meta.path == meta.path)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(FileRef {
                            meta: meta.clone(),
                            obsolete: AtomicBool::new(false),
                            store: Arc::clone(store),
                        })
                    })
            })
            .collect::<Vec<_>>();
        for f in &old.files {
            if !files.iter().any(|n| Arc::ptr_eq(n, f)) {
                f.obsolete.store(true, Ordering::Release);
            }
        }
        l.buckets.insert(
            bucket.to_string(),
            Arc::new(BucketFiles {
                files,
                flushed_seq: state.flushed_seq,
            }),
        );
    }

    /// Freezes the active generation if it holds rows: waits for in-flight commits, then starts
    /// a new active generation. Returns the frozen generation and the freeze point (every
    /// commit of this table with a smaller or equal `_seq` is in it or older layers).
    pub async fn freeze(
        &self,
        last_seq: impl Fn() -> u64,
    ) -> Result<Option<(Arc<Generation>, u64)>> {
        let generation = Arc::clone(&self.layers.read().active);
        if generation.buf.is_empty() {
            return Ok(None);
        }
        let fresh = Arc::new(self.tombstoning_generation()?);
        let mut gate = generation.gate.write().await;
        *gate = true;
        let upto = last_seq();
        generation.upto.store(upto, Ordering::Release);
        {
            let mut l = self.layers.write();
            l.frozen.insert(0, Arc::clone(&generation));
            l.active = fresh;
        }
        drop(gate);
        Ok(Some((generation, upto)))
    }

    /// Frozen generations not yet flushed (a flush failed), oldest first, with their freeze
    /// points.
    pub fn frozen_oldest_first(&self) -> Vec<(Arc<Generation>, u64)> {
        self.layers
            .read()
            .frozen
            .iter()
            .rev()
            .map(|g| (Arc::clone(g), g.upto.load(Ordering::Acquire)))
            .collect()
    }

    /// Retires a flushed generation and shows the buckets' new files, atomically for readers.
    pub fn finish_flush(
        &self,
        store: &Arc<dyn ObjectStore>,
        generation: &Arc<Generation>,
        states: &[(String, BucketState)],
    ) {
        let mut l = self.layers.write();
        for (bucket, state) in states {
            Self::install_locked(&mut l, store, bucket, state);
        }
        l.frozen.retain(|g| !Arc::ptr_eq(g, generation));
    }

    /// Marks every file obsolete (DROP TABLE): they are deleted once no reader holds them.
    pub fn drop_files(&self) {
        let l = self.layers.read();
        for b in l.buckets.values() {
            for f in &b.files {
                f.obsolete.store(true, Ordering::Release);
            }
        }
    }
}

/// A partition's writer lock, held; releasing it forgets the lock if nobody else holds or
/// waits for it.
pub struct PartitionWriter<'a> {
    store: &'a TableStore,
    partition: Arc<str>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PartitionWriter<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut writers = self.store.writers.lock();
        // Clones are made under this mutex: one reference (the map's) means no holder or waiter.
        if writers
            .get(&self.partition)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            writers.remove(&self.partition);
        }
    }
}
