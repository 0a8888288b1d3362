"""Helpers shared by the Python interop tests.

Everything here talks to a real `kalam-server` through real clients (ADBC Flight SQL,
pyarrow.flight). The only hand-made piece is the Flight SQL protobuf framing for the few
messages the pyarrow tests send, so the suite needs no protobuf dependency.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi
import adbc_driver_manager
import pyarrow as pa
import pytest
from adbc_driver_manager import AdbcStatusCode

# gRPC status -> ADBC status, as the Go Flight SQL driver under adbc_driver_flightsql maps it.
# (PERMISSION_DENIED becomes UNAUTHORIZED; the gRPC code itself is kept in `vendor_code`.)
ALREADY_EXISTS = AdbcStatusCode.ALREADY_EXISTS
INVALID_ARGUMENT = AdbcStatusCode.INVALID_ARGUMENT
NOT_FOUND = AdbcStatusCode.NOT_FOUND
PERMISSION_DENIED = AdbcStatusCode.UNAUTHORIZED
UNAUTHENTICATED = AdbcStatusCode.UNAUTHENTICATED

# Every RPC the ADBC driver makes gets a deadline, so a hung server fails a test instead of
# hanging the whole run.
RPC_TIMEOUT_SECONDS = "60"


def unique(prefix: str) -> str:
    """A fresh lower-case SQL identifier, so tests never collide on one long-lived server."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def adbc_connect(uri: str, username: str, password: str) -> adbc_driver_manager.dbapi.Connection:
    """An ADBC DB-API connection that logs in the way ADBC does (Basic handshake -> Bearer)."""
    opts = adbc_driver_flightsql.DatabaseOptions
    return adbc_driver_flightsql.dbapi.connect(
        uri,
        db_kwargs={
            "username": username,
            "password": password,
            opts.TIMEOUT_FETCH.value: RPC_TIMEOUT_SECONDS,
            opts.TIMEOUT_QUERY.value: RPC_TIMEOUT_SECONDS,
            opts.TIMEOUT_UPDATE.value: RPC_TIMEOUT_SECONDS,
        },
        autocommit=True,
    )


# --- running SQL over ADBC ------------------------------------------------------------------
#
# `cursor.execute` prepares, binds, calls GetFlightInfo and starts DoGet; DDL and DML run in
# that DoGet. The driver fetches endpoints in the background, so every helper drains the
# result before returning: the next statement must never race the previous one.


def rows(conn, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
    """Run one statement and return all result rows as tuples."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def arrow(conn, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run one statement and return the result as an Arrow table."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def run(conn, sql: str, params: Sequence[Any] | None = None) -> None:
    """Run a DDL/DML statement through the prepared-query path and wait until it is done."""
    rows(conn, sql, params)


def run_many(conn, sql: str, seq_of_params) -> int:
    """`executemany` (DoPut CommandPreparedStatementUpdate); returns the reported row count."""
    with conn.cursor() as cur:
        cur.executemany(sql, seq_of_params)
        return cur.rowcount


def scalar(conn, sql: str, params: Sequence[Any] | None = None) -> Any:
    result = rows(conn, sql, params)
    assert len(result) == 1 and len(result[0]) == 1, f"expected one value from {sql!r}, got {result!r}"
    return result[0][0]


@contextlib.contextmanager
def raises_status(*expected: AdbcStatusCode) -> Iterator[pytest.ExceptionInfo]:
    """Expect the block to fail with an ADBC ProgrammingError carrying one of `expected`.

    Yields the ExceptionInfo so the caller can look at the message afterwards.
    """
    with pytest.raises(adbc_driver_manager.Error) as info:
        yield info
    err = info.value
    described = (
        f"{type(err).__name__} status={err.status_code.name} "
        f"grpc_code={err.vendor_code} message={str(err)!r}"
    )
    assert err.status_code in expected, (
        f"expected status {[s.name for s in expected]}, got {described}"
    )
    assert isinstance(err, adbc_driver_manager.ProgrammingError), (
        f"expected ProgrammingError, got {described}"
    )


def text_type(t: pa.DataType) -> bool:
    """TEXT columns leave the server as plain Utf8 (or compacted Utf8View, DESIGN §5.7)."""
    return t in (pa.string(), pa.string_view())


# --- per-test tenants -----------------------------------------------------------------------

MESSAGES_DDL = "CREATE USER TABLE {table} (id BIGINT PRIMARY KEY, room TEXT, body TEXT)"


@dataclass
class Tenant:
    """A namespace with a USER table `messages` and two users of role `user`, all uniquely named."""

    uri: str
    ns: str
    table: str
    user_a: str
    user_b: str
    password: str
    _conns: list = field(default_factory=list)

    def connect(self, user: str, password: str | None = None):
        conn = adbc_connect(self.uri, user, self.password if password is None else password)
        self._conns.append(conn)
        return conn

    def close(self) -> None:
        while self._conns:
            self._conns.pop().close()


# --- Flight SQL framing for pyarrow.flight --------------------------------------------------
#
# Flight SQL commands travel as a google.protobuf.Any { string type_url = 1; bytes value = 2; }
# whose value is the serialized command message. Only length-delimited string fields and
# varints are needed here.

FLIGHT_SQL_PACKAGE = "arrow.flight.protocol.sql"


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # protobuf encodes negative int64 as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return encode_varint((field_number << 3) | 2) + encode_varint(len(payload)) + payload


def pack_any(message_name: str, payload: bytes) -> bytes:
    type_url = f"type.googleapis.com/{FLIGHT_SQL_PACKAGE}.{message_name}".encode()
    return length_delimited(1, type_url) + length_delimited(2, payload)


def command_statement_query(sql: str) -> bytes:
    """Any(CommandStatementQuery { string query = 1; })"""
    return pack_any("CommandStatementQuery", length_delimited(1, sql.encode()))


def command_statement_update(sql: str) -> bytes:
    """Any(CommandStatementUpdate { string query = 1; })"""
    return pack_any("CommandStatementUpdate", length_delimited(1, sql.encode()))


def decode_fields(data: bytes) -> dict[int, list]:
    """Minimal protobuf decoder: field number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value: Any = varint()
        elif wire_type == 2:
            length = varint()
            value = data[pos : pos + length]
            pos += length
        elif wire_type == 1:
            value = data[pos : pos + 8]
            pos += 8
        elif wire_type == 5:
            value = data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def decode_do_put_update_result(data: bytes) -> int:
    """DoPutUpdateResult { int64 record_count = 1; } -> record_count (0 when absent)."""
    values = decode_fields(data).get(1, [0])
    count = values[-1]
    return count - (1 << 64) if count >= 1 << 63 else count


def basic_header(user: str, password: str) -> tuple[bytes, bytes]:
    token = base64.b64encode(f"{user}:{password}".encode())
    return (b"authorization", b"Basic " + token)
