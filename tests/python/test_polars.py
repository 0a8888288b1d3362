"""polars reading and writing through an ADBC connection."""

from __future__ import annotations

import polars as pl

from kalam_testing import rows, run_many, unique

INSERT = "INSERT INTO {t} (id, room, body) VALUES ($1, $2, $3)"


def test_read_database_as_user(tenant):
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    run_many(conn_a, INSERT.format(t=tenant.table), [(1, "r1", "hello"), (2, "r2", "world")])
    run_many(conn_b, INSERT.format(t=tenant.table), [(3, "r1", "other")])

    df = pl.read_database(f"SELECT id, room, body FROM {tenant.table} ORDER BY id", connection=conn_a)
    assert df.columns == ["id", "room", "body"]
    assert df.schema["id"] == pl.Int64 and df.schema["body"] == pl.String
    assert df.rows() == [(1, "r1", "hello"), (2, "r2", "world")]

    agg = pl.read_database(
        f"SELECT room, COUNT(*) AS n FROM {tenant.table} GROUP BY room ORDER BY room", connection=conn_b
    )
    assert agg.rows() == [("r1", 1)]


def test_read_database_with_parameters(root_conn, tenant):
    run_many(root_conn, INSERT.format(t=tenant.table), [(i, f"r{i % 2}", f"b{i}") for i in range(10)])
    df = pl.read_database(
        f"SELECT id, body FROM {tenant.table} WHERE room = $1 AND id >= $2 ORDER BY id",
        connection=root_conn,
        execute_options={"parameters": ("r1", 5)},
    )
    assert df.rows() == [(5, "b5"), (7, "b7"), (9, "b9")]


def test_read_database_batches(root_conn, tenant):
    run_many(root_conn, INSERT.format(t=tenant.table), [(i, "r", f"b{i}") for i in range(500)])
    frames = pl.read_database(
        f"SELECT id FROM {tenant.table} ORDER BY id", connection=root_conn, iter_batches=True, batch_size=100
    )
    ids = [v for frame in frames for v in frame["id"].to_list()]
    assert ids == list(range(500))


def test_write_database_appends_to_user_table(tenant):
    """polars hands its frame to adbc_ingest over the Arrow C stream (strings as Utf8View)."""
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    frame = pl.DataFrame({"id": [1, 2, 3], "room": ["x", "y", "x"], "body": ["p", "q", "r"]})
    written = frame.write_database(tenant.table, connection=conn_a, if_table_exists="append", engine="adbc")
    assert written == 3
    assert rows(conn_a, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [
        (1, "x", "p"),
        (2, "y", "q"),
        (3, "x", "r"),
    ]
    assert rows(conn_b, f"SELECT id FROM {tenant.table}") == []


def test_write_database_creates_and_replaces(root_conn, tenant):
    table = f"{tenant.ns}.{unique('pl')}"
    first = pl.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    assert first.write_database(table, connection=root_conn, if_table_exists="fail", engine="adbc") == 2
    second = pl.DataFrame({"k": [9], "v": ["z"]})
    assert second.write_database(table, connection=root_conn, if_table_exists="replace", engine="adbc") == 1
    assert pl.read_database(f"SELECT k, v FROM {table}", connection=root_conn).rows() == [(9, "z")]
