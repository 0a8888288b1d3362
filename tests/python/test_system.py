"""System tables and the process-wide invariants they expose."""

from __future__ import annotations

from kalam_testing import rows, run_many

REQUIRED_STATS = {
    "session_contexts_created",
    "live_queries_active",
    "write_buffer_bytes",
    "memory_pool_used_bytes",
}


def stats(conn) -> dict[str, int]:
    return {name: int(value) for name, value in rows(conn, "SELECT name, value FROM system.stats")}


def test_stats_has_the_documented_figures(root_conn):
    figures = stats(root_conn)
    assert REQUIRED_STATS <= set(figures), sorted(figures)
    assert figures["live_queries_active"] == 0
    assert figures["write_buffer_bytes"] >= 0 and figures["memory_pool_used_bytes"] >= 0


def test_one_session_context_per_process(root_conn, tenant):
    """DESIGN §5.1: no request builds a SessionContext; the counter stays at 1 whatever runs."""
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    insert = f"INSERT INTO {tenant.table} (id, room, body) VALUES ($1, $2, $3)"
    run_many(conn_a, insert, [(i, "r", "a") for i in range(20)])
    run_many(conn_b, insert, [(i, "r", "b") for i in range(5)])
    for conn, expected in ((conn_a, [("r", 20)]), (conn_b, [("r", 5)]), (root_conn, [])):
        for _ in range(5):
            assert rows(conn, f"SELECT room, COUNT(*) FROM {tenant.table} GROUP BY room") == expected
    assert stats(root_conn)["session_contexts_created"] == 1


def test_catalog_tables_list_namespaces_tables_and_users(root_conn, tenant):
    def strings(sql: str) -> set[str]:
        return {v for row in rows(root_conn, sql) for v in row if isinstance(v, str)}

    assert tenant.ns in strings("SELECT * FROM system.namespaces")
    tables = strings("SELECT * FROM system.tables")
    assert "messages" in tables or tenant.table in tables, sorted(tables)
    assert {tenant.user_a, tenant.user_b, "root"} <= strings("SELECT * FROM system.users")
