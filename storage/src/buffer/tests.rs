use super::*;
use crate::wal::{WalEntry, WalKind};
use arrow::array::{Int64Array, StringArray};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
    ]))
}

fn with_seq(s: &SchemaRef) -> SchemaRef {
    let mut f: Vec<Arc<Field>> = s.fields().iter().cloned().collect();
    f.push(Arc::new(Field::new(SEQ_COLUMN, DataType::UInt64, false)));
    Arc::new(Schema::new(f))
}

fn batch(ids: &[i64], body: &str) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec![body; ids.len()])),
        ],
    )
    .unwrap()
}

fn rows(buf: &TableBuffer, part: &str) -> Vec<(i64, String, u64)> {
    let mut out = vec![];
    for b in buf.snapshot(part, &with_seq(&schema())).unwrap() {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let body = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let seq = b.column(2).as_any().downcast_ref::<UInt64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((id.value(i), body.value(i).to_string(), seq.value(i)));
        }
    }
    out.sort();
    out
}

fn buffer() -> TableBuffer {
    TableBuffer::new(
        "t",
        &schema(),
        vec![0],
        Arc::new(BufferAccounting::default()),
        false,
    )
    .unwrap()
}

fn entry(kind: WalKind, part: &str, b: RecordBatch, seq: u64) -> WalEntry {
    WalEntry {
        kind,
        table_id: 1,
        partition: part.into(),
        first_seq: seq,
        batch: b,
        committed_at_ms: 0,
    }
}

/// Test shorthand for the apply entry points.
trait Apply {
    fn insert(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize>;
    fn update(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize>;
    fn delete(&self, part: &str, b: &RecordBatch) -> Result<usize>;
    fn replace_partition(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize>;
}

impl Apply for TableBuffer {
    fn insert(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize> {
        self.apply(&entry(WalKind::Insert, part, b.clone(), seq))
    }
    fn update(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize> {
        self.apply(&entry(WalKind::Update, part, b.clone(), seq))
    }
    fn delete(&self, part: &str, b: &RecordBatch) -> Result<usize> {
        self.apply(&entry(WalKind::Delete, part, b.clone(), 1_000_000))
    }
    fn replace_partition(&self, part: &str, b: &RecordBatch, seq: u64) -> Result<usize> {
        self.apply(&entry(WalKind::Replace, part, b.clone(), seq))
    }
}

#[test]
fn lookup_and_uniqueness_checks() {
    let b = buffer();
    b.insert("u1", &batch(&[1, 2], "a"), 1).unwrap();
    let err = b.check_unique(&batch(&[5, 5], "b")).unwrap_err();
    assert!(matches!(err, Error::DuplicateKey { .. }), "{err}");
    let keys = b.keys(&batch(&[1, 3], "")).unwrap();
    assert_eq!(
        b.lookup("u1", &keys),
        vec![KeyState::Live, KeyState::Unknown]
    );
    assert_eq!(
        b.lookup("u2", &keys),
        vec![KeyState::Unknown, KeyState::Unknown]
    );
    // Same key in another partition is independent.
    b.insert("u2", &batch(&[1], "c"), 5).unwrap();
    assert_eq!(rows(&b, "u2"), vec![(1, "c".into(), 5)]);
}

#[test]
fn tombstones_are_kept_when_older_layers_exist() {
    let b = TableBuffer::new(
        "t",
        &schema(),
        vec![0],
        Arc::new(BufferAccounting::default()),
        true,
    )
    .unwrap();
    b.insert("u", &batch(&[1, 2], "a"), 1).unwrap();
    b.delete("u", &batch(&[2, 9], "")).unwrap();
    let keys = b.keys(&batch(&[1, 2, 9], "")).unwrap();
    assert_eq!(
        b.lookup("u", &keys),
        vec![KeyState::Live, KeyState::Deleted, KeyState::Deleted]
    );
    assert_eq!(rows(&b, "u"), vec![(1, "a".into(), 1)]);
    assert_eq!(b.row_count("u"), 1);
    let full = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(SEQ_COLUMN, DataType::UInt64, false),
        Field::new(DELETED_COLUMN, DataType::Boolean, false),
    ]));
    let with_tombstones: usize = b
        .snapshot_since("u", &full, i64::MIN, true)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(with_tombstones, 3, "row 1 + tombstones for 2 and 9");
    // Re-inserting a deleted key replaces the tombstone.
    b.insert("u", &batch(&[2], "b"), 10).unwrap();
    assert_eq!(b.row_count("u"), 2);
    assert!(b.min_seq() == 1 && b.max_seq() == 1_000_001);
}

#[test]
fn newest_version_wins_and_deletes_stick() {
    let b = buffer();
    b.insert("u", &batch(&[1, 2, 3], "a"), 1).unwrap();
    // The commit path drops keys that do not exist before logging an update.
    assert_eq!(b.update("u", &batch(&[2], "b"), 10).unwrap(), 1);
    assert_eq!(b.delete("u", &batch(&[3, 7], "")).unwrap(), 1);
    assert_eq!(rows(&b, "u"), vec![(1, "a".into(), 1), (2, "b".into(), 10)]);
    // A deleted key can be inserted again.
    b.insert("u", &batch(&[3], "c"), 20).unwrap();
    assert_eq!(rows(&b, "u").len(), 3);
}

#[test]
fn many_small_inserts_are_merged_and_stay_correct() {
    let acct = Arc::new(BufferAccounting::default());
    let b = TableBuffer::new("t", &schema(), vec![0], Arc::clone(&acct), false).unwrap();
    for i in 0..1000 {
        b.insert("u", &batch(&[i], "x"), i as u64 + 1).unwrap();
        if i % 3 == 0 {
            b.update("u", &batch(&[i], "y"), 10_000 + i as u64).unwrap();
        }
    }
    for i in (0..1000).step_by(2) {
        b.delete("u", &batch(&[i], "")).unwrap();
    }
    let r = rows(&b, "u");
    assert_eq!(r.len(), 500);
    for (id, body, _) in &r {
        assert_eq!(id % 2, 1);
        assert_eq!(body, if id % 3 == 0 { "y" } else { "x" });
    }
    assert!(b.partitions.read()["u"].read().chunks.len() <= MAX_SMALL_CHUNKS + 1);
    assert!(acct.bytes() > 0);
    drop(b);
    assert_eq!(acct.bytes(), 0);
}

#[test]
fn old_chunks_read_with_added_columns_as_null() {
    let b = buffer();
    b.insert("u", &batch(&[1], "a"), 1).unwrap();
    let wider = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
        Field::new("edited", DataType::Boolean, true),
        Field::new(SEQ_COLUMN, DataType::UInt64, false),
    ]));
    let out = b.snapshot("u", &wider).unwrap();
    assert_eq!(out[0].num_columns(), 4);
    assert!(out[0].column(2).is_null(0));
}

#[test]
fn replace_is_atomic_and_append_only_tables_keep_duplicates() {
    let b = buffer();
    b.insert("u", &batch(&[1, 2], "a"), 1).unwrap();
    b.replace_partition("u", &batch(&[7], "x"), 3).unwrap();
    assert_eq!(rows(&b, "u"), vec![(7, "x".into(), 3)]);

    let s = TableBuffer::new(
        "s",
        &schema(),
        vec![],
        Arc::new(BufferAccounting::default()),
        false,
    )
    .unwrap();
    s.insert("u", &batch(&[1, 1], "a"), 1).unwrap();
    s.insert("u", &batch(&[1], "a"), 3).unwrap();
    assert_eq!(s.row_count("u"), 3);
    s.expire("u", i64::MAX);
    assert_eq!(s.row_count("u"), 0);
}
