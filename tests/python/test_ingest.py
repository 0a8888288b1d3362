"""ADBC bulk ingest (DoPut CommandStatementIngest) in all four modes."""

from __future__ import annotations

import pyarrow as pa

from kalam_testing import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    raises_status,
    rows,
    run,
    scalar,
    unique,
)


def events(ids: list[int], tag: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"{tag}{i}" for i in ids], pa.string()),
            "score": pa.array([i * 0.5 for i in ids], pa.float64()),
        }
    )


def ingest(conn, table: str, data, mode: str, ns: str) -> int:
    with conn.cursor() as cur:
        return cur.adbc_ingest(table, data, mode=mode, db_schema_name=ns)


def contents(conn, fq_table: str) -> list[tuple]:
    return rows(conn, f"SELECT id, name, score FROM {fq_table} ORDER BY id")


def expected(ids: list[int], tag: str) -> list[tuple]:
    return [(i, f"{tag}{i}", i * 0.5) for i in ids]


def test_ingest_create(root_conn, tenant):
    name = unique("ev")
    assert ingest(root_conn, name, events([1, 2, 3], "a"), "create", tenant.ns) == 3
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([1, 2, 3], "a")
    schema = root_conn.adbc_get_table_schema(name, db_schema_filter=tenant.ns)
    assert schema.names == ["id", "name", "score"]
    assert schema.field("id").type == pa.int64() and schema.field("score").type == pa.float64()

    # 'create' on an existing table fails and leaves it untouched.
    with raises_status(ALREADY_EXISTS):
        ingest(root_conn, name, events([4], "b"), "create", tenant.ns)
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([1, 2, 3], "a")


def test_ingest_append(root_conn, tenant):
    name = unique("ev")
    ingest(root_conn, name, events([1, 2], "a"), "create", tenant.ns)
    assert ingest(root_conn, name, events([3, 4, 5], "b"), "append", tenant.ns) == 3
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([1, 2], "a") + expected([3, 4, 5], "b")
    assert scalar(root_conn, f"SELECT COUNT(*) FROM {tenant.ns}.{name}") == 5

    # 'append' to a missing table fails and creates nothing.
    missing = unique("missing")
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        ingest(root_conn, missing, events([1], "x"), "append", tenant.ns)
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        rows(root_conn, f"SELECT * FROM {tenant.ns}.{missing}")


def test_ingest_replace(root_conn, tenant):
    name = unique("ev")
    # 'replace' of a table that does not exist yet creates it.
    assert ingest(root_conn, name, events([1, 2, 3], "a"), "replace", tenant.ns) == 3
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([1, 2, 3], "a")
    # 'replace' of an existing table drops the old rows.
    assert ingest(root_conn, name, events([10, 11], "r"), "replace", tenant.ns) == 2
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([10, 11], "r")
    # ... and may change the schema.
    other = pa.table({"k": pa.array(["x", "y"], pa.string())})
    assert ingest(root_conn, name, other, "replace", tenant.ns) == 2
    assert rows(root_conn, f"SELECT k FROM {tenant.ns}.{name} ORDER BY k") == [("x",), ("y",)]


def test_ingest_create_append(root_conn, tenant):
    name = unique("ev")
    assert ingest(root_conn, name, events([1, 2], "a"), "create_append", tenant.ns) == 2
    assert ingest(root_conn, name, events([3], "b"), "create_append", tenant.ns) == 1
    assert contents(root_conn, f"{tenant.ns}.{name}") == expected([1, 2], "a") + expected([3], "b")


def test_ingest_many_batches(root_conn, tenant):
    name = unique("ev")
    batches = [events(list(range(start, start + 1000)), "m").to_batches()[0] for start in range(0, 10_000, 1000)]
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, batches)
    assert ingest(root_conn, name, reader, "create", tenant.ns) == 10_000
    fq = f"{tenant.ns}.{name}"
    assert rows(root_conn, f"SELECT COUNT(*), MIN(id), MAX(id), SUM(id) FROM {fq}") == [(10_000, 0, 9_999, 49_995_000)]


def test_ingest_append_into_user_table_is_per_user(tenant):
    """Appending into a SQL-created USER table writes the caller's partition only."""
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "room": pa.array(["r", "r"], pa.string()),
            "body": pa.array(["x", "y"], pa.string()),
        }
    )
    with conn_a.cursor() as cur:
        assert cur.adbc_ingest("messages", data, mode="append", db_schema_name=tenant.ns) == 2
    assert rows(conn_a, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [(1, "r", "x"), (2, "r", "y")]
    assert rows(conn_b, f"SELECT id FROM {tenant.table}") == []


def test_ingest_is_atomic_on_duplicate_key(tenant):
    conn_a = tenant.connect(tenant.user_a)
    run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'original')")
    data = pa.table(
        {
            "id": pa.array([2, 3, 1], pa.int64()),
            "room": pa.array(["r", "r", "r"], pa.string()),
            "body": pa.array(["new", "new", "dup"], pa.string()),
        }
    )
    with raises_status(ALREADY_EXISTS):
        with conn_a.cursor() as cur:
            cur.adbc_ingest("messages", data, mode="append", db_schema_name=tenant.ns)
    assert rows(conn_a, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [(1, "r", "original")]
