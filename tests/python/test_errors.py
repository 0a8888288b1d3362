"""Bad input gets the right status, writes nothing, and the server keeps serving."""

from __future__ import annotations

import pyarrow.flight as flight
import pytest

from kalam_testing import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    UNAUTHENTICATED,
    adbc_connect,
    raises_status,
    rows,
    run,
    run_many,
    scalar,
    unique,
)

INSERT = "INSERT INTO {t} (id, room, body) VALUES ($1, $2, $3)"


def assert_still_serving(conn, table: str, expected_rows: list) -> None:
    """The same connection keeps working after an error and sees exactly the expected data."""
    assert rows(conn, "SELECT 1 + 1") == [(2,)]
    assert rows(conn, f"SELECT id, room, body FROM {table} ORDER BY id") == expected_rows


INVALID_SQL = {
    "typo": "SELEC 1",
    "garbage": ")(*& garbage ;;",
    "truncated_where": "SELECT * FROM {t} WHERE",
    "unterminated_string": "INSERT INTO {t} (id, room, body) VALUES (1, 'unterminated)",
    "truncated_ddl": "CREATE USER TABLE {ns}.broken (id BIGINT PRIMARY KEY,",
    "unknown_column": "SELECT no_such_column FROM {t}",
    "wrong_type": "INSERT INTO {t} (id, room, body) VALUES ('not a number', 'r', 'b')",
    "wrong_arity": "INSERT INTO {t} (id, room, body) VALUES (1, 'r')",
}


@pytest.mark.parametrize("name", sorted(INVALID_SQL))
def test_invalid_sql_is_invalid_argument(root_conn, tenant, name):
    with raises_status(INVALID_ARGUMENT):
        rows(root_conn, INVALID_SQL[name].format(t=tenant.table, ns=tenant.ns))
    assert_still_serving(root_conn, tenant.table, [])


def test_unknown_table_and_namespace(root_conn, tenant):
    with raises_status(NOT_FOUND, INVALID_ARGUMENT) as info:
        rows(root_conn, f"SELECT * FROM {tenant.ns}.no_such_table")
    assert "no_such_table" in str(info.value), "the error should name the missing table"
    missing_ns = unique("missing")
    with raises_status(NOT_FOUND, INVALID_ARGUMENT) as info:
        rows(root_conn, f"SELECT * FROM {missing_ns}.messages")
    assert missing_ns in str(info.value)
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        run(root_conn, f"INSERT INTO {tenant.ns}.no_such_table (id) VALUES (1)")
    with raises_status(NOT_FOUND, INVALID_ARGUMENT):
        run(root_conn, f"DROP TABLE {tenant.ns}.no_such_table")
    assert_still_serving(root_conn, tenant.table, [])


def test_duplicate_primary_key_writes_nothing(tenant):
    conn_a = tenant.connect(tenant.user_a)
    run(conn_a, INSERT.format(t=tenant.table), (1, "r", "original"))

    # Second row of a two-row INSERT collides: the whole statement fails, row 2 is not written.
    with raises_status(ALREADY_EXISTS):
        run(conn_a, f"INSERT INTO {tenant.table} (id, room, body) VALUES (2, 'r', 'new'), (1, 'r', 'dup')")
    assert_still_serving(conn_a, tenant.table, [(1, "r", "original")])

    # Same through a bound parameter.
    with raises_status(ALREADY_EXISTS):
        run(conn_a, INSERT.format(t=tenant.table), (1, "r", "dup again"))
    assert_still_serving(conn_a, tenant.table, [(1, "r", "original")])

    # Same through executemany (DoPut with a parameter batch): the existing row is not overwritten.
    with raises_status(ALREADY_EXISTS):
        run_many(conn_a, INSERT.format(t=tenant.table), [(1, "r", "batch dup")])
    assert_still_serving(conn_a, tenant.table, [(1, "r", "original")])

    # Through executescript (CommandStatementUpdate).
    with raises_status(ALREADY_EXISTS):
        with conn_a.cursor() as cur:
            cur.executescript(f"INSERT INTO {tenant.table} (id, room, body) VALUES (3, 'r', 'x'), (1, 'r', 'y')")
    assert_still_serving(conn_a, tenant.table, [(1, "r", "original")])

    # Another user's partition is unaffected and can use the key.
    conn_b = tenant.connect(tenant.user_b)
    run(conn_b, INSERT.format(t=tenant.table), (1, "r", "b's own"))
    assert rows(conn_b, f"SELECT body FROM {tenant.table}") == [("b's own",)]


def test_duplicate_key_in_shared_table(root_conn, tenant):
    rooms = f"{tenant.ns}.rooms"
    run(root_conn, f"CREATE SHARED TABLE {rooms} (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')")
    run(root_conn, f"INSERT INTO {rooms} (id, title) VALUES ('lobby', 'Lobby')")
    with raises_status(ALREADY_EXISTS):
        run(root_conn, f"INSERT INTO {rooms} (id, title) VALUES ('dev', 'Dev'), ('lobby', 'Again')")
    assert rows(root_conn, f"SELECT id, title FROM {rooms} ORDER BY id") == [("lobby", "Lobby")]


def login_and_query(uri: str, user: str, password: str) -> None:
    conn = adbc_connect(uri, user, password)  # ADBC logs in (Handshake) while connecting
    try:
        rows(conn, "SELECT 1")
    finally:
        conn.close()


def test_wrong_credentials_are_unauthenticated(kalam_server, tenant, root_conn):
    with raises_status(UNAUTHENTICATED) as wrong_password:
        login_and_query(kalam_server.uri, tenant.user_b, "not-the-password")
    with raises_status(UNAUTHENTICATED) as unknown_user:
        login_and_query(kalam_server.uri, unique("nobody"), "not-the-password")
    # Same answer for a wrong password and an unknown user: nothing to probe user names with.
    assert str(wrong_password.value) == str(unknown_user.value)

    # The server still serves, including the user whose password was just mistyped.
    conn_b = tenant.connect(tenant.user_b)
    run(conn_b, INSERT.format(t=tenant.table), (1, "r", "after failed login"))
    assert rows(conn_b, f"SELECT body FROM {tenant.table}") == [("after failed login",)]
    assert scalar(root_conn, "SELECT 40 + 2") == 42


def test_flight_wrong_password_and_bad_tokens(kalam_server, flight_client, tenant):
    with pytest.raises(flight.FlightUnauthenticatedError):
        flight_client.authenticate_basic_token(tenant.user_a, "wrong")
    descriptor = flight.FlightDescriptor.for_command(b"not even protobuf")
    for headers in ([], [(b"authorization", b"Bearer not-a-token")], [(b"authorization", b"Token abc")]):
        with pytest.raises(flight.FlightUnauthenticatedError):
            flight_client.get_flight_info(descriptor, flight.FlightCallOptions(headers=headers, timeout=60))
    # And a good login still works afterwards.
    header = flight_client.authenticate_basic_token(tenant.user_a, tenant.password)
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")
