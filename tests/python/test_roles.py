"""Roles: user < service < dba < system (DESIGN §3)."""

from __future__ import annotations

import pytest

from kalam_testing import (
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    arrow,
    raises_status,
    rows,
    run,
    run_many,
    unique,
)

# Statements a `user` may not run; {ns} and {t} are the tenant's namespace and USER table.
USER_FORBIDDEN_DDL = {
    "create_namespace": "CREATE NAMESPACE {new}",
    "drop_namespace": "DROP NAMESPACE {ns} CASCADE",
    "create_user_table": "CREATE USER TABLE {ns}.{new} (id BIGINT PRIMARY KEY, v TEXT)",
    "create_shared_table": "CREATE SHARED TABLE {ns}.{new} (id BIGINT PRIMARY KEY, v TEXT)",
    "create_stream_table": "CREATE STREAM TABLE {ns}.{new} (room TEXT, at TIMESTAMP) WITH (TTL_SECONDS = 30)",
    "alter_table": "ALTER TABLE {t} ADD COLUMN edited BOOLEAN",
    "drop_table": "DROP TABLE {t}",
    "create_user": "CREATE USER {new} WITH PASSWORD 'pw' ROLE user",
    "drop_other_user": "DROP USER {other}",
}

SYSTEM_TABLES_DENIED_TO_USERS = ["users", "namespaces", "tables", "jobs", "stats"]


@pytest.mark.parametrize("name", sorted(USER_FORBIDDEN_DDL))
def test_user_cannot_run_ddl(tenant, root_conn, name):
    conn_a = tenant.connect(tenant.user_a)
    sql = USER_FORBIDDEN_DDL[name].format(new=unique("x"), ns=tenant.ns, t=tenant.table, other=tenant.user_b)
    with raises_status(PERMISSION_DENIED):
        run(conn_a, sql)
    # Nothing changed: the table is intact and both users can still log in and work.
    assert root_conn.adbc_get_table_schema("messages", db_schema_filter=tenant.ns).names == ["id", "room", "body"]
    run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'still here')")
    assert rows(conn_a, f"SELECT body FROM {tenant.table}") == [("still here",)]
    conn_b = tenant.connect(tenant.user_b)
    assert rows(conn_b, f"SELECT body FROM {tenant.table}") == []


@pytest.mark.parametrize("table", SYSTEM_TABLES_DENIED_TO_USERS)
def test_user_cannot_read_system_tables(tenant, table):
    conn_a = tenant.connect(tenant.user_a)
    with raises_status(PERMISSION_DENIED) as info:
        rows(conn_a, f"SELECT * FROM system.{table}")
    # The refusal names nothing the caller may not see (no other user's name).
    assert tenant.user_b not in str(info.value)
    assert "root" not in str(info.value)


def test_user_reads_own_live_queries_only(tenant):
    conn_a = tenant.connect(tenant.user_a)
    # No subscriptions are open, so the user's own view is empty — but it is allowed.
    assert rows(conn_a, "SELECT * FROM system.live_queries") == []


def test_user_cannot_execute_as_another_user(tenant):
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    with raises_status(PERMISSION_DENIED):
        run(conn_a, f"EXECUTE AS USER '{tenant.user_b}' INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'forged')")
    with raises_status(PERMISSION_DENIED):
        rows(conn_a, f"EXECUTE AS USER '{tenant.user_b}' SELECT * FROM {tenant.table}")
    assert rows(conn_b, f"SELECT * FROM {tenant.table}") == []


def test_public_shared_table_is_read_only_for_users(tenant, root_conn):
    rooms = f"{tenant.ns}.rooms"
    run(root_conn, f"CREATE SHARED TABLE {rooms} (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')")
    run(root_conn, f"INSERT INTO {rooms} (id, title) VALUES ('lobby', 'Lobby'), ('dev', 'Developers')")
    conn_a = tenant.connect(tenant.user_a)
    expected = [("dev", "Developers"), ("lobby", "Lobby")]
    assert rows(conn_a, f"SELECT id, title FROM {rooms} ORDER BY id") == expected
    with raises_status(PERMISSION_DENIED):
        run(conn_a, f"INSERT INTO {rooms} (id, title) VALUES ('mine', 'Mine')")
    with raises_status(PERMISSION_DENIED):
        run(conn_a, f"UPDATE {rooms} SET title = 'hacked'")
    with raises_status(PERMISSION_DENIED):
        run(conn_a, f"DELETE FROM {rooms}")
    with raises_status(PERMISSION_DENIED):
        run_many(conn_a, f"INSERT INTO {rooms} (id, title) VALUES ($1, $2)", [("p1", "t1")])
    assert rows(root_conn, f"SELECT id, title FROM {rooms} ORDER BY id") == expected


def test_service_role_writes_shared_tables_and_acts_for_users(tenant, root_conn, connect):
    service = unique("svc")
    run(root_conn, f"CREATE USER {service} WITH PASSWORD '{tenant.password}' ROLE service")
    rooms = f"{tenant.ns}.rooms"
    run(root_conn, f"CREATE SHARED TABLE {rooms} (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')")
    svc = connect(service, tenant.password)

    run(svc, f"INSERT INTO {rooms} (id, title) VALUES ('ops', 'Operations')")
    assert rows(root_conn, f"SELECT id, title FROM {rooms}") == [("ops", "Operations")]

    run(svc, f"EXECUTE AS USER '{tenant.user_a}' INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'ops', 'from service')")
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    assert rows(conn_a, f"SELECT id, room, body FROM {tenant.table}") == [(1, "ops", "from service")]
    assert rows(conn_b, f"SELECT id FROM {tenant.table}") == []
    # The service's own partition is separate.
    assert rows(svc, f"SELECT id FROM {tenant.table}") == []

    with raises_status(PERMISSION_DENIED):
        run(svc, f"CREATE USER TABLE {tenant.ns}.{unique('x')} (id BIGINT PRIMARY KEY)")
    with raises_status(PERMISSION_DENIED):
        rows(svc, "SELECT * FROM system.users")


def test_dba_runs_ddl_but_sees_only_own_rows(tenant, root_conn, connect):
    dba = unique("dba")
    run(root_conn, f"CREATE USER {dba} WITH PASSWORD '{tenant.password}' ROLE dba")
    conn_a = tenant.connect(tenant.user_a)
    run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'private')")

    admin = connect(dba, tenant.password)
    table = f"{tenant.ns}.{unique('dba_t')}"
    run(admin, f"CREATE USER TABLE {table} (id BIGINT PRIMARY KEY, v TEXT)")
    run(admin, f"INSERT INTO {table} (id, v) VALUES (1, 'dba row')")
    assert rows(admin, f"SELECT id, v FROM {table}") == [(1, "dba row")]
    assert rows(admin, f"SELECT id FROM {tenant.table}") == []
    assert rows(admin, f"EXECUTE AS USER '{tenant.user_a}' SELECT body FROM {tenant.table}") == [("private",)]
    users = rows(admin, "SELECT * FROM system.users")
    assert any(tenant.user_a in row for row in users)


def test_system_users_lists_users_without_password_hashes(tenant, root_conn):
    table = arrow(root_conn, "SELECT * FROM system.users")
    values = {value for row in table.to_pylist() for value in row.values() if isinstance(value, str)}
    assert {"root", tenant.user_a, tenant.user_b} <= values
    for column in table.schema.names:
        assert "hash" not in column.lower() and "password" not in column.lower(), table.schema
    assert not any(value.startswith("$argon2") for value in values)
    assert tenant.password not in values


def test_dropped_user_is_locked_out_of_an_open_session(tenant, root_conn):
    """The identity is checked against the catalog on every request, not trusted from the token."""
    conn_a = tenant.connect(tenant.user_a)
    run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (1, 'r', 'before')")
    assert rows(conn_a, f"SELECT body FROM {tenant.table}") == [("before",)]
    run(root_conn, f"DROP USER {tenant.user_a}")
    with raises_status(UNAUTHENTICATED, PERMISSION_DENIED):
        rows(conn_a, f"SELECT body FROM {tenant.table}")
    with raises_status(UNAUTHENTICATED, PERMISSION_DENIED):
        run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (2, 'r', 'after')")
    # The other user is unaffected.
    conn_b = tenant.connect(tenant.user_b)
    assert rows(conn_b, f"SELECT body FROM {tenant.table}") == []
