//! The write-ahead log: every acknowledged write is here, fsynced, before it is visible.
//!
//! Layout: `<data-dir>/wal/{first_seq:020}.wal` segments. A record is
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][seq: u64 LE][payload: len - 8 bytes]
//! payload = [header_len: u32 LE][header JSON][Arrow IPC stream of the batch]
//! ```
//!
//! where `len` counts `seq` + payload and the CRC covers `seq` + payload. One writer thread does
//! **group commit**: it takes every record queued while the previous fsync ran, writes them, and
//! fsyncs once for all of them. Recovery reads every segment in order; a torn record at the end
//! of the last segment is truncated away, damage anywhere else refuses to start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

/// Bound on records queued for the writer thread; writers wait (backpressure) beyond it.
const QUEUE_DEPTH: usize = 4096;
/// Most records written per fsync.
const MAX_GROUP: usize = 1024;
/// Capacity the writer's group buffer keeps between groups (it grows for a big group, then
/// gives the memory back).
const GROUP_BUFFER_BYTES: usize = 1 << 20;
/// Segments rotate after this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// What a record does to a table partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalKind {
    /// New rows (keys must not exist).
    Insert,
    /// New versions of existing rows.
    Update,
    /// Remove the rows with these keys.
    Delete,
    /// Replace the partition's rows.
    Replace,
}

/// One logged change.
#[derive(Debug, Clone)]
pub struct WalEntry {
    /// What it does.
    pub kind: WalKind,
    /// Table id (ids are never reused).
    pub table_id: u64,
    /// Partition key (user id, or "" for shared tables).
    pub partition: String,
    /// `_seq` of the first row (rows are numbered consecutively).
    pub first_seq: u64,
    /// Rows (user columns) or, for deletes, the keys.
    pub batch: RecordBatch,
    /// Commit time, ms since the epoch (STREAM tables expire rows by it).
    pub committed_at_ms: i64,
}

impl WalEntry {
    /// The highest sequence number this entry uses.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + (self.batch.num_rows() as u64).max(1) - 1
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    kind: WalKind,
    table_id: u64,
    partition: String,
    first_seq: u64,
    #[serde(default)]
    committed_at_ms: i64,
}

fn encode(entry: &WalEntry) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&Header {
        kind: entry.kind,
        table_id: entry.table_id,
        partition: entry.partition.clone(),
        first_seq: entry.first_seq,
        committed_at_ms: entry.committed_at_ms,
    })
    .map_err(|e| Error::WalClosed(format!("cannot encode WAL header: {e}")))?;
    let mut payload = Vec::with_capacity(64 + entry.batch.get_array_memory_size());
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    {
        let arrow_err = |e| Error::Arrow {
            table: format!("table {}", entry.table_id),
            source: e,
        };
        let mut w =
            StreamWriter::try_new(&mut payload, &entry.batch.schema()).map_err(arrow_err)?;
        w.write(&entry.batch).map_err(arrow_err)?;
        w.finish().map_err(arrow_err)?;
    }
    let seq = entry.last_seq().to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq);
    crc.update(&payload);
    let mut rec = Vec::with_capacity(16 + payload.len());
    rec.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
    rec.extend_from_slice(&crc.finalize().to_le_bytes());
    rec.extend_from_slice(&seq);
    rec.extend_from_slice(&payload);
    Ok(rec)
}

fn decode_header(payload: &[u8]) -> std::result::Result<(Header, usize), String> {
    if payload.len() < 4 {
        return Err("payload too short".into());
    }
    let hlen = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let header_bytes = payload.get(4..4 + hlen).ok_or("header out of bounds")?;
    let h: Header = serde_json::from_slice(header_bytes).map_err(|e| format!("bad header: {e}"))?;
    Ok((h, hlen))
}

fn decode(payload: &[u8]) -> std::result::Result<WalEntry, String> {
    let (h, hlen) = decode_header(payload)?;
    let mut reader = StreamReader::try_new(&payload[4 + hlen..], None)
        .map_err(|e| format!("bad Arrow data: {e}"))?;
    let batch = reader
        .next()
        .ok_or("record has no batch")?
        .map_err(|e| format!("bad Arrow data: {e}"))?;
    Ok(WalEntry {
        kind: h.kind,
        table_id: h.table_id,
        partition: h.partition,
        first_seq: h.first_seq,
        batch,
        committed_at_ms: h.committed_at_ms,
    })
}

/// Counters for observability.
#[derive(Debug, Default)]
pub struct WalStats {
    /// fsync calls (one per group).
    pub fsyncs: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
}

struct Pending {
    record: Vec<u8>,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

/// Handle to the WAL writer. Cheap to share behind `Arc`.
#[derive(Debug)]
pub struct Wal {
    /// Queue to the writer thread, bounded by [`QUEUE_DEPTH`].
    tx: mpsc::Sender<Pending>,
    /// Counters.
    pub stats: Arc<WalStats>,
    /// The segment directory.
    dir: PathBuf,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("bytes", &self.record.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads every segment; returns the entries in log order and the path + length of the last
/// segment's valid prefix.
fn recover(dir: &Path) -> Result<(Vec<WalEntry>, Option<PathBuf>)> {
    scan(dir, true, &|_, _, _| true)
}

/// Which records [`scan`] decodes: (table id, partition, last seq).
type Keep<'a> = &'a dyn Fn(u64, &str, u64) -> bool;

/// Reads every segment in order, decoding the records `keep` selects. With `repair`, a torn
/// tail of the last segment is truncated away; without, reading just stops there (the writer
/// may be appending to it).
fn scan(dir: &Path, repair: bool, keep: Keep<'_>) -> Result<(Vec<WalEntry>, Option<PathBuf>)> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let mut entries = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let mut data = Vec::new();
        File::open(seg)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(seg))?;
        let mut pos = 0usize;
        let corrupt = |offset: usize, reason: &str| Error::WalCorrupt {
            file: seg.display().to_string(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        while pos < data.len() {
            let rest = &data[pos..];
            let torn = |reason: &str| -> Result<Option<usize>> {
                if last {
                    Ok(Some(pos))
                } else {
                    Err(corrupt(pos, reason))
                }
            };
            let cut = if rest.len() < 16 {
                torn("truncated record header")?
            } else {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                if len < 8 || rest.len() < 8 + len {
                    torn("record extends past the end of the segment")?
                } else {
                    let body = &rest[8..8 + len];
                    if crc32fast::hash(body) != crc {
                        if last && pos + 8 + len == data.len() {
                            Some(pos) // the final record was torn mid-write
                        } else {
                            return Err(corrupt(pos, "checksum mismatch"));
                        }
                    } else {
                        let (h, _) = decode_header(&body[8..]).map_err(|r| corrupt(pos, &r))?;
                        let last_seq = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
                        if keep(h.table_id, &h.partition, last_seq) {
                            entries.push(decode(&body[8..]).map_err(|r| corrupt(pos, &r))?);
                        }
                        pos += 8 + len;
                        None
                    }
                }
            };
            if cut.is_some() && !repair {
                break;
            }
            if let Some(at) = cut {
                tracing::warn!(file = %seg.display(), offset = at, "truncating torn WAL tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(seg)
                    .map_err(io_err(seg))?;
                f.set_len(at as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(seg))?;
                break;
            }
        }
    }
    Ok((entries, segments.last().cloned()))
}

impl Wal {
    /// Opens the WAL in `dir`, recovering what is there. Returns the handle and every entry in
    /// log order (to be applied before serving).
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Vec<WalEntry>)> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (entries, last) = recover(dir)?;
        let next_seq = entries.iter().map(|e| e.last_seq() + 1).max().unwrap_or(1);
        let path = match last {
            Some(p) => p,
            None => {
                let p = dir.join(segment_name(next_seq));
                File::create(&p).map_err(io_err(&p))?;
                sync_dir(dir)?;
                p
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(WalStats::default());
        let writer = Writer {
            dir: dir.to_path_buf(),
            file,
            size,
            segment_bytes,
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("kalam-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        Ok((
            Self {
                tx,
                stats,
                dir: dir.to_path_buf(),
            },
            entries,
        ))
    }

    /// The first seqs of the segments on disk, ascending (segment names are `{first_seq:020}`).
    fn segment_firsts(&self) -> Result<Vec<u64>> {
        let mut firsts: Vec<u64> = std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".wal")?
                    .parse::<u64>()
                    .ok()
            })
            .collect();
        firsts.sort_unstable();
        Ok(firsts)
    }

    /// The entries of (`table_id`, `partition`) with a seq above `after_seq`, read from the
    /// segments on disk (live-query resume beyond the in-memory ring), and the lowest seq the
    /// WAL still holds (changes below it are gone).
    pub fn read_after(
        &self,
        table_id: u64,
        partition: &str,
        after_seq: u64,
    ) -> Result<(Vec<WalEntry>, u64)> {
        let oldest = self.segment_firsts()?.first().copied().unwrap_or(u64::MAX);
        let keep = |t: u64, p: &str, last: u64| t == table_id && p == partition && last > after_seq;
        let (entries, _) = scan(&self.dir, false, &keep)?;
        Ok((entries, oldest))
    }

    /// Deletes closed segments whose every record has `_seq < below` (their rows are all in
    /// Parquet). The segment being written is never touched. Returns the segments removed.
    pub fn remove_segments_below(&self, below: u64) -> Result<usize> {
        let firsts = self.segment_firsts()?;
        let mut removed = 0;
        // Segment i holds seqs [firsts[i], firsts[i + 1]); the last one is open.
        for pair in firsts.windows(2) {
            if pair[1] > below {
                break;
            }
            let path = self.dir.join(segment_name(pair[0]));
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
            tracing::debug!(removed, below, "WAL segments truncated");
        }
        Ok(removed)
    }

    /// Appends `entry` and returns once it is fsynced.
    pub async fn append(&self, entry: &WalEntry) -> Result<()> {
        let record = encode(entry)?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { record, done })
            .await
            .map_err(|_| Error::WalClosed("the WAL writer has stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::WalClosed(reason)),
            Err(_) => Err(Error::WalClosed("the WAL writer has stopped".into())),
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
    segment_bytes: u64,
    stats: Arc<WalStats>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
        let mut buf: Vec<u8> = Vec::new();
        // Ends when every sender is gone (shutdown); everything received was acknowledged.
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            // One write per group; a lone record (a bulk ingest can be a gigabyte) is written
            // from its own buffer rather than copied.
            let bytes = match group.as_slice() {
                [only] => &only.record[..],
                _ => {
                    buf.clear();
                    for p in &group {
                        buf.extend_from_slice(&p.record);
                    }
                    &buf[..]
                }
            };
            let len = bytes.len();
            let result = self
                .file
                .write_all(bytes)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| format!("WAL write failed: {e}"));
            // The group buffer keeps at most GROUP_BUFFER_BYTES between groups.
            buf.shrink_to(GROUP_BUFFER_BYTES);
            if result.is_ok() {
                self.size += len as u64;
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .records
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                self.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
            } else {
                tracing::error!(error = ?result, "WAL fsync failed; failing the writes of this group");
            }
            let next_seq = group
                .last()
                .and_then(|p| p.record.get(8..16))
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) + 1);
            for p in group.drain(..) {
                let _ = p.done.send(result.clone());
            }
            if result.is_ok()
                && self.size >= self.segment_bytes
                && let Some(seq) = next_seq
                && let Err(e) = self.rotate(seq)
            {
                tracing::error!(error = %e, "WAL segment rotation failed; continuing in the current segment");
            }
        }
    }

    fn rotate(&mut self, next_seq: u64) -> Result<()> {
        let path = self.dir.join(segment_name(next_seq));
        self.file.sync_all().map_err(io_err(&path))?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
