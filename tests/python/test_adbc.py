"""ADBC DB-API against kalam-server: DDL, parameters, executemany, Arrow results, metadata."""

from __future__ import annotations

import re

import pyarrow as pa

from kalam_testing import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    arrow,
    raises_status,
    rows,
    run,
    run_many,
    scalar,
    text_type,
    unique,
)


def objects_tree(conn, **filters) -> dict:
    """adbc_get_objects flattened to {catalog: {schema: {table: {"type", "columns"}}}}."""
    tree: dict = {}
    for catalog in conn.adbc_get_objects(**filters).read_all().to_pylist():
        schemas = tree.setdefault(catalog["catalog_name"], {})
        for schema in catalog["catalog_db_schemas"] or []:
            tables = schemas.setdefault(schema["db_schema_name"], {})
            for table in schema["db_schema_tables"] or []:
                columns = sorted(
                    (c["ordinal_position"], c["column_name"]) for c in table["table_columns"] or []
                )
                tables[table["table_name"]] = {
                    "type": table["table_type"],
                    "columns": [name for _, name in columns],
                    "ordinals": [pos for pos, _ in columns],
                }
    return tree


def test_insert_with_parameters_and_select(root_conn, tenant):
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, $2, $3)", (1, "r", "hi"))
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, $2, $3)", (2, "r", "there"))
    assert rows(root_conn, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [
        (1, "r", "hi"),
        (2, "r", "there"),
    ]
    # Parameters in a query, too.
    assert rows(root_conn, f"SELECT body FROM {tenant.table} WHERE id = $1", (2,)) == [("there",)]
    assert rows(root_conn, f"SELECT id FROM {tenant.table} WHERE room = $1 AND id > $2", ("r", 1)) == [(2,)]


def test_multi_row_insert_literal(root_conn, tenant):
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'a', NULL)")
    assert rows(root_conn, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [
        (1, "a", "x"),
        (2, "b", "y"),
        (3, "a", None),
    ]


def test_executemany_reports_row_count(root_conn, tenant):
    params = [(i, f"room{i % 3}", f"body {i}") for i in range(1, 101)]
    count = run_many(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, $2, $3)", params)
    assert count == 100
    assert scalar(root_conn, f"SELECT COUNT(*) FROM {tenant.table}") == 100
    assert rows(root_conn, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == params


def test_update_and_delete_report_rows_changed(root_conn, tenant):
    run_many(
        root_conn,
        f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, $2, $3)",
        [(1, "a", "x"), (2, "a", "y"), (3, "b", "z")],
    )
    assert run_many(root_conn, f"UPDATE {tenant.table} SET body = $1 WHERE room = $2", [("new", "a")]) == 2
    assert run_many(root_conn, f"UPDATE {tenant.table} SET body = $1 WHERE room = $2", [("new", "nope")]) == 0
    assert run_many(root_conn, f"DELETE FROM {tenant.table} WHERE id = $1", [(1,), (3,), (42,)]) == 2
    assert rows(root_conn, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [(2, "a", "new")]


def test_dml_through_execute_runs_exactly_once(root_conn, tenant):
    """ADBC sends DML as a prepared *query*; it must run once (at DoGet), not also at GetFlightInfo."""
    counters = f"{tenant.ns}.counters"
    run(root_conn, f"CREATE SHARED TABLE {counters} (id BIGINT PRIMARY KEY, n BIGINT)")
    run(root_conn, f"INSERT INTO {counters} (id, n) VALUES (1, 0)")
    for _ in range(3):
        run(root_conn, f"UPDATE {counters} SET n = n + 1 WHERE id = 1")
    assert rows(root_conn, f"SELECT id, n FROM {counters}") == [(1, 3)]


def test_executescript_sends_statement_update(root_conn, tenant):
    with root_conn.cursor() as cur:
        cur.executescript(f"INSERT INTO {tenant.table} (id, room, body) VALUES (7, 'r', 'script')")
    assert rows(root_conn, f"SELECT id, body FROM {tenant.table}") == [(7, "script")]


def test_fetch_arrow_table_schema_and_values(root_conn, tenant):
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r1', 'a'), (2, 'r2', NULL)")
    table = arrow(root_conn, f"SELECT id, room, body FROM {tenant.table} ORDER BY id")
    assert table.schema.names == ["id", "room", "body"]
    assert table.schema.field("id").type == pa.int64()
    assert text_type(table.schema.field("room").type), table.schema
    assert text_type(table.schema.field("body").type), table.schema
    assert table.to_pylist() == [
        {"id": 1, "room": "r1", "body": "a"},
        {"id": 2, "room": "r2", "body": None},
    ]
    empty = arrow(root_conn, f"SELECT id, room FROM {tenant.table} WHERE id < 0")
    assert empty.num_rows == 0
    assert empty.schema.names == ["id", "room"]


def test_large_result_streams_in_batches(root_conn, tenant):
    n = 20_000
    data = pa.table({"id": pa.array(range(n), pa.int64()), "body": [f"row {i:06d}" for i in range(n)]})
    with root_conn.cursor() as cur:
        assert cur.adbc_ingest("bulk", data, mode="create", db_schema_name=tenant.ns) == n
    table = arrow(root_conn, f"SELECT id, body FROM {tenant.ns}.bulk ORDER BY id")
    assert table.num_rows == n
    assert table.column("id").to_pylist() == list(range(n))
    assert table.column("body")[n - 1].as_py() == f"row {n - 1:06d}"
    assert scalar(root_conn, f"SELECT SUM(id) FROM {tenant.ns}.bulk") == n * (n - 1) // 2


def test_seq_is_hidden_selectable_and_not_writable(root_conn, tenant):
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'first')")
    run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES (2, 'r', 'second')")
    assert arrow(root_conn, f"SELECT * FROM {tenant.table}").schema.names == ["id", "room", "body"]
    table = arrow(root_conn, f"SELECT id, _seq FROM {tenant.table} ORDER BY id")
    assert table.schema.field("_seq").type == pa.uint64()
    first, second = table.column("_seq").to_pylist()
    assert second > first
    with raises_status(INVALID_ARGUMENT, PERMISSION_DENIED):
        run(root_conn, f"INSERT INTO {tenant.table} (id, room, body, _seq) VALUES (3, 'r', 'x', 99)")
    assert scalar(root_conn, f"SELECT COUNT(*) FROM {tenant.table}") == 2


def test_ddl_lifecycle(root_conn, tenant):
    ns = unique("ddl")
    run(root_conn, f"CREATE NAMESPACE {ns}")
    run(root_conn, f"CREATE NAMESPACE IF NOT EXISTS {ns}")
    with raises_status(ALREADY_EXISTS):
        run(root_conn, f"CREATE NAMESPACE {ns}")

    run(root_conn, f"CREATE USER TABLE {ns}.notes (id BIGINT PRIMARY KEY, body TEXT)")
    run(root_conn, f"CREATE SHARED TABLE {ns}.rooms (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')")
    run(root_conn, f"CREATE TABLE {ns}.plain (id BIGINT PRIMARY KEY, v TEXT)")
    run(root_conn, f"CREATE TABLE {ns}.typed (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'USER')")
    run(root_conn, f"CREATE STREAM TABLE {ns}.typing (room TEXT, at TIMESTAMP) WITH (TTL_SECONDS = 30)")
    with raises_status(ALREADY_EXISTS):
        run(root_conn, f"CREATE USER TABLE {ns}.notes (id BIGINT PRIMARY KEY, body TEXT)")
    tables = objects_tree(root_conn, catalog_filter="kalam", db_schema_filter=ns)["kalam"][ns]
    assert sorted(tables) == ["notes", "plain", "rooms", "typed", "typing"]

    run(root_conn, f"INSERT INTO {ns}.notes (id, body) VALUES (1, 'before')")
    run(root_conn, f"ALTER TABLE {ns}.notes ADD COLUMN edited BOOLEAN")
    run(root_conn, f"INSERT INTO {ns}.notes (id, body, edited) VALUES (2, 'after', true)")
    assert rows(root_conn, f"SELECT id, body, edited FROM {ns}.notes ORDER BY id") == [
        (1, "before", None),
        (2, "after", True),
    ]
    assert root_conn.adbc_get_table_schema("notes", db_schema_filter=ns).names == ["id", "body", "edited"]

    run(root_conn, f"DROP TABLE {ns}.plain")
    run(root_conn, f"DROP TABLE IF EXISTS {ns}.plain")
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        rows(root_conn, f"SELECT * FROM {ns}.plain")
    tables = objects_tree(root_conn, catalog_filter="kalam", db_schema_filter=ns)["kalam"][ns]
    assert sorted(tables) == ["notes", "rooms", "typed", "typing"]

    run(root_conn, f"DROP NAMESPACE {ns} CASCADE")
    run(root_conn, f"DROP NAMESPACE IF EXISTS {ns}")
    schemas = objects_tree(root_conn, depth="db_schemas", catalog_filter="kalam").get("kalam", {})
    assert ns not in schemas
    assert tenant.ns in schemas
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        rows(root_conn, f"SELECT * FROM {ns}.notes")


def test_get_objects_catalog_namespaces_tables_columns(root_conn, tenant):
    run(root_conn, f"CREATE SHARED TABLE {tenant.ns}.rooms (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')")

    catalogs = objects_tree(root_conn, depth="catalogs")
    assert "kalam" in catalogs

    schemas = objects_tree(root_conn, depth="db_schemas")["kalam"]
    assert tenant.ns in schemas
    assert "system" in schemas

    # Full depth, no filters at all: what ADBC's own tools ask for.
    everything = objects_tree(root_conn)
    messages = everything["kalam"][tenant.ns]["messages"]
    assert messages["columns"] == ["id", "room", "body"]
    assert messages["ordinals"] == [1, 2, 3]

    filtered = objects_tree(root_conn, catalog_filter="kalam", db_schema_filter=tenant.ns)
    assert list(filtered) == ["kalam"]
    assert list(filtered["kalam"]) == [tenant.ns]
    assert sorted(filtered["kalam"][tenant.ns]) == ["messages", "rooms"]
    assert filtered["kalam"][tenant.ns]["rooms"]["columns"] == ["id", "title"]

    by_name = objects_tree(root_conn, catalog_filter="kalam", db_schema_filter=tenant.ns, table_name_filter="room%")
    assert sorted(by_name["kalam"][tenant.ns]) == ["rooms"]

    # The table types reported per table are among the advertised table types.
    table_types = root_conn.adbc_get_table_types()
    assert table_types, "GetTableTypes returned nothing"
    for table in filtered["kalam"][tenant.ns].values():
        assert table["type"] in table_types

    # System tables are listed in the `system` schema.
    system_tables = objects_tree(root_conn, depth="tables", catalog_filter="kalam", db_schema_filter="system")
    assert {"users", "namespaces", "tables", "live_queries", "jobs", "stats"} <= set(system_tables["kalam"]["system"])


def test_get_table_schema(root_conn, tenant):
    schema = root_conn.adbc_get_table_schema("messages", db_schema_filter=tenant.ns)
    assert schema.names == ["id", "room", "body"]
    assert schema.field("id").type == pa.int64()
    assert text_type(schema.field("room").type) and text_type(schema.field("body").type), schema
    with_catalog = root_conn.adbc_get_table_schema("messages", catalog_filter="kalam", db_schema_filter=tenant.ns)
    assert with_catalog.names == schema.names
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        root_conn.adbc_get_table_schema("no_such_table", db_schema_filter=tenant.ns)


def test_get_info_vendor_name_and_version(root_conn):
    info = root_conn.adbc_get_info()
    assert isinstance(info.get("vendor_name"), str) and "kalam" in info["vendor_name"].lower(), info
    assert isinstance(info.get("vendor_version"), str) and re.search(r"\d+\.\d+", info["vendor_version"]), info


def test_same_connection_many_statements(root_conn, tenant):
    """A connection stays usable across many prepared statements (handles are closed and reused)."""
    for i in range(50):
        run(root_conn, f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, 'loop', $2)", (i, str(i)))
        assert scalar(root_conn, f"SELECT COUNT(*) FROM {tenant.table}") == i + 1
