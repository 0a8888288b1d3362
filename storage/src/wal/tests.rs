use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

fn entry(first_seq: u64, ids: &[i64]) -> WalEntry {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec!["x"; ids.len()])),
        ],
    )
    .unwrap();
    WalEntry {
        kind: WalKind::Insert,
        table_id: 7,
        partition: "u1".into(),
        first_seq,
        batch,
        committed_at_ms: 0,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn entries_survive_reopen_in_order_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, old) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert!(old.is_empty());
        let wal = Arc::new(wal);
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let wal = Arc::clone(&wal);
                tokio::spawn(
                    async move { wal.append(&entry(i * 10 + 1, &[i as i64])).await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(wal.stats.records.load(Ordering::Relaxed), 200);
        assert!(wal.stats.fsyncs.load(Ordering::Relaxed) <= 200);
    }
    let (_wal, entries) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(entries.len(), 200);
    let mut ids: Vec<i64> = entries
        .iter()
        .map(|e| {
            e.batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..200).collect::<Vec<_>>());
    assert_eq!(entries[0].partition, "u1");
}

#[tokio::test]
async fn torn_tail_is_truncated_and_writing_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        wal.append(&entry(1, &[1, 2])).await.unwrap();
        wal.append(&entry(3, &[3])).await.unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let full = std::fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, as a crash mid-write would.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(full - 20)
        .unwrap();
    {
        let (wal, entries) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(entries.len(), 1, "only the intact record survives");
        wal.append(&entry(10, &[10])).await.unwrap();
    }
    let (_, entries) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.first_seq).collect::<Vec<_>>(),
        vec![1, 10]
    );
}

#[tokio::test]
async fn bit_flip_before_the_tail_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        for i in 0..3 {
            wal.append(&entry(i * 10 + 1, &[i as i64])).await.unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    data[30] ^= 0x40; // inside the first record's payload
    std::fs::write(&seg, &data).unwrap();
    let err = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("WAL corrupt") && msg.contains("offset 0"),
        "{msg}"
    );
}

#[tokio::test]
async fn rotation_and_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), 256).unwrap();
        for i in 0..10u64 {
            wal.append(&entry(i + 1, &[i as i64])).await.unwrap();
        }
    }
    assert!(segments(dir.path()).len() > 2, "small segments rotate");
    // An empty segment left by a crash right after rotation is harmless.
    std::fs::File::create(dir.path().join(segment_name(99_999))).unwrap();
    let (_, entries) = Wal::open(dir.path(), 256).unwrap();
    assert_eq!(entries.len(), 10);
}

#[tokio::test]
async fn flushed_segments_are_removed_and_the_rest_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), 256).unwrap();
    for i in 0..10u64 {
        wal.append(&entry(i + 1, &[i as i64])).await.unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before > 3);
    // Nothing is flushed: nothing goes.
    assert_eq!(wal.remove_segments_below(1).unwrap(), 0);
    // Everything below seq 6 is in Parquet: only segments holding nothing newer go.
    let removed = wal.remove_segments_below(6).unwrap();
    assert!(removed > 0);
    drop(wal);
    let (_, entries) = Wal::open(dir.path(), 256).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.first_seq).collect();
    assert!(seqs.contains(&6) && seqs.ends_with(&[10]), "{seqs:?}");
    assert!(seqs.iter().all(|s| *s <= 10));
    // The open segment is never removed, even when everything is flushed.
    let (wal, _) = Wal::open(dir.path(), 256).unwrap();
    wal.remove_segments_below(u64::MAX).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
}
