"""USER tables: every user sees and changes only their own rows, whatever the SQL says."""

from __future__ import annotations

import pytest

from kalam_testing import rows, run, run_many, scalar

INSERT = "INSERT INTO {t} (id, room, body) VALUES ($1, $2, $3)"

# Both users own a row with id 1: primary keys are unique per user in a USER table.
A_ROWS = [(1, "r1", "a1"), (2, "r1", "a2"), (3, "r2", "a3")]
B_ROWS = [(1, "r1", "b1"), (4, "r3", "b4"), (5, "r3", "b5"), (6, "r3", "b6")]


@pytest.fixture
def seeded(tenant):
    """The tenant with A_ROWS written by u_a (one execute per row) and B_ROWS by u_b (executemany)."""
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    for row in A_ROWS:
        run(conn_a, INSERT.format(t=tenant.table), row)
    assert run_many(conn_b, INSERT.format(t=tenant.table), B_ROWS) == len(B_ROWS)
    return tenant, conn_a, conn_b


# name -> (sql, rows u_a must get, rows u_b must get)
QUERIES = {
    "plain_select": (
        "SELECT id, room, body FROM {t} ORDER BY id",
        A_ROWS,
        B_ROWS,
    ),
    "select_star": (
        "SELECT * FROM {t} ORDER BY id, body",
        A_ROWS,
        B_ROWS,
    ),
    "count": (
        "SELECT COUNT(*) FROM {t}",
        [(3,)],
        [(4,)],
    ),
    "group_by": (
        "SELECT room, COUNT(*) AS n, MAX(body) AS last FROM {t} GROUP BY room ORDER BY room",
        [("r1", 2, "a2"), ("r2", 1, "a3")],
        [("r1", 1, "b1"), ("r3", 3, "b6")],
    ),
    "self_join": (
        "SELECT x.id AS low, y.id AS high FROM {t} x JOIN {t} y ON x.room = y.room AND x.id < y.id ORDER BY x.id, y.id",
        [(1, 2)],
        [(4, 5), (4, 6), (5, 6)],
    ),
    "cross_join_count": (
        "SELECT COUNT(*) FROM {t} x CROSS JOIN {t} y",
        [(9,)],
        [(16,)],
    ),
    "union": (
        "SELECT id FROM {t} WHERE room = 'r1' UNION SELECT id FROM {t} WHERE id >= 3 ORDER BY id",
        [(1,), (2,), (3,)],
        [(1,), (4,), (5,), (6,)],
    ),
    "union_all": (
        "SELECT body FROM {t} WHERE id = 1 UNION ALL SELECT body FROM {t} WHERE id = 1",
        [("a1",), ("a1",)],
        [("b1",), ("b1",)],
    ),
    "cte": (
        "WITH per_room AS (SELECT room, COUNT(*) AS n FROM {t} GROUP BY room) "
        "SELECT room, n FROM per_room WHERE n > 1 ORDER BY room",
        [("r1", 2)],
        [("r3", 3)],
    ),
    "window": (
        "SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn, COUNT(*) OVER () AS total, "
        "SUM(id) OVER (PARTITION BY room) AS room_sum FROM {t} ORDER BY id",
        [(1, 1, 3, 3), (2, 2, 3, 3), (3, 3, 3, 3)],
        [(1, 1, 4, 1), (4, 2, 4, 15), (5, 3, 4, 15), (6, 4, 4, 15)],
    ),
    "in_subquery": (
        "SELECT id FROM {t} WHERE id IN (SELECT MAX(id) FROM {t})",
        [(3,)],
        [(6,)],
    ),
    "scalar_subquery": (
        "SELECT (SELECT COUNT(*) FROM {t}) AS n",
        [(3,)],
        [(4,)],
    ),
    "other_users_key": (
        "SELECT id, body FROM {t} WHERE id = 5 OR body = 'a2'",
        [(2, "a2")],
        [(5, "b5")],
    ),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_user_sees_only_own_rows(seeded, name):
    tenant, conn_a, conn_b = seeded
    sql, expected_a, expected_b = QUERIES[name]
    assert rows(conn_a, sql.format(t=tenant.table)) == expected_a
    assert rows(conn_b, sql.format(t=tenant.table)) == expected_b


def test_keys_are_unique_per_user_not_per_table(seeded):
    tenant, conn_a, conn_b = seeded
    # u_b owns id 4; u_a may use it too.
    run(conn_a, INSERT.format(t=tenant.table), (4, "r9", "a4"))
    assert rows(conn_a, f"SELECT body FROM {tenant.table} WHERE id = 4") == [("a4",)]
    assert rows(conn_b, f"SELECT body FROM {tenant.table} WHERE id = 4") == [("b4",)]


def test_update_touches_only_own_rows(seeded):
    tenant, conn_a, conn_b = seeded
    # room r1 has two rows of u_a and one of u_b: only u_a's two are changed.
    assert run_many(conn_a, f"UPDATE {tenant.table} SET body = $1 WHERE room = $2", [("edited", "r1")]) == 2
    # id 4 exists only in u_b's partition.
    assert run_many(conn_a, f"UPDATE {tenant.table} SET body = $1 WHERE id = $2", [("stolen", 4)]) == 0
    # An unfiltered UPDATE through the prepared-query path still stays in u_a's partition.
    run(conn_a, f"UPDATE {tenant.table} SET room = 'moved'")
    assert rows(conn_a, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == [
        (1, "moved", "edited"),
        (2, "moved", "edited"),
        (3, "moved", "a3"),
    ]
    assert rows(conn_b, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == B_ROWS


def test_delete_touches_only_own_rows(seeded):
    tenant, conn_a, conn_b = seeded
    # Both own id 1; u_a's delete removes only u_a's.
    assert run_many(conn_a, f"DELETE FROM {tenant.table} WHERE id = $1", [(1,)]) == 1
    assert run_many(conn_a, f"DELETE FROM {tenant.table} WHERE id = $1", [(5,)]) == 0
    assert rows(conn_b, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == B_ROWS
    run(conn_a, f"DELETE FROM {tenant.table}")
    assert rows(conn_a, f"SELECT id FROM {tenant.table}") == []
    assert rows(conn_b, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == B_ROWS


def test_new_connection_of_same_user_sees_same_rows(seeded):
    tenant, _, _ = seeded
    again = tenant.connect(tenant.user_a)
    assert rows(again, f"SELECT id, room, body FROM {tenant.table} ORDER BY id") == A_ROWS


def test_root_sees_user_rows_only_through_execute_as(seeded, root_conn):
    tenant, conn_a, conn_b = seeded
    # Even role `system` has its own (empty) partition of a USER table.
    assert rows(root_conn, f"SELECT id FROM {tenant.table}") == []
    assert scalar(root_conn, f"SELECT COUNT(*) FROM {tenant.table}") == 0
    assert rows(
        root_conn, f"EXECUTE AS USER '{tenant.user_a}' SELECT id, room, body FROM {tenant.table} ORDER BY id"
    ) == A_ROWS
    run(root_conn, f"EXECUTE AS USER '{tenant.user_b}' INSERT INTO {tenant.table} (id, room, body) VALUES (9, 'r9', 'b9')")
    assert rows(conn_b, f"SELECT body FROM {tenant.table} WHERE id = 9") == [("b9",)]
    assert rows(conn_a, f"SELECT body FROM {tenant.table} WHERE id = 9") == []
    assert rows(root_conn, f"SELECT id FROM {tenant.table}") == []


def test_table_created_with_type_user_is_per_user(tenant, root_conn):
    table = f"{tenant.ns}.notes"
    run(root_conn, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, body TEXT) WITH (TYPE = 'USER')")
    conn_a = tenant.connect(tenant.user_a)
    conn_b = tenant.connect(tenant.user_b)
    run(conn_a, f"INSERT INTO {table} (id, body) VALUES (1, 'mine')")
    assert rows(conn_a, f"SELECT id, body FROM {table}") == [(1, "mine")]
    assert rows(conn_b, f"SELECT id, body FROM {table}") == []
