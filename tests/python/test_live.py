"""Live queries through the `kalamflight` package (pyarrow.flight DoExchange) and connect()."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import kalamflight
from kalam_testing import run


def changes(live, n: int) -> list[tuple]:
    """(id, _change_type, _seq) of the next `n` change rows."""
    out: list[tuple] = []
    for event, batch in live:
        if event.kind == "changes":
            d = batch.to_pydict()
            out.extend(zip(d["id"], d["_change_type"], d["_seq"]))
            if len(out) >= n:
                return out
    raise AssertionError(f"stream ended after {out}")


def until_current(live) -> tuple[list, int]:
    rows = []
    for event, batch in live:
        if event.kind == "snapshot":
            rows.extend(batch.to_pydict()["id"])
        elif event.kind == "current":
            return rows, event.seq
        else:
            raise AssertionError(f"{event.kind} before current")
    raise AssertionError("stream ended before current")


def test_connect_gives_an_adbc_connection(kalam_server, tenant):
    with kalamflight.connect(kalam_server.uri, tenant.user_a, tenant.password) as conn:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {tenant.table} VALUES (1, 'r1', 'hello')")
            cur.execute(f"SELECT body FROM {tenant.table}")
            assert cur.fetchall() == [("hello",)]


def test_subscribe_yields_snapshot_then_typed_changes(kalam_server, tenant):
    a = tenant.connect(tenant.user_a)
    b = tenant.connect(tenant.user_b)
    run(a, f"INSERT INTO {tenant.table} VALUES (1, 'r1', 'one'), (2, 'r2', 'two')")
    sql = f"SELECT id, body FROM {tenant.table} WHERE room = 'r1'"
    with kalamflight.subscribe(kalam_server.uri, tenant.user_a, tenant.password, sql,
                               heartbeat_ms=200) as live:
        assert live.schema.names == ["id", "body", "_seq", "_change_type"]
        snapshot, s = until_current(live)
        assert snapshot == [1]
        run(b, f"INSERT INTO {tenant.table} VALUES (7, 'r1', 'not yours')")
        run(a, f"INSERT INTO {tenant.table} VALUES (3, 'r1', 'three')")
        run(a, f"UPDATE {tenant.table} SET room = 'r1' WHERE id = 2")
        run(a, f"UPDATE {tenant.table} SET body = 'uno' WHERE id = 1")
        run(a, f"DELETE FROM {tenant.table} WHERE id = 3")
        got = changes(live, 4)
        assert [(i, k) for i, k, _ in got] == [(3, "insert"), (2, "insert"), (1, "update"), (3, "delete")]
        seqs = [q for _, _, q in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4 and seqs[0] > s
        assert live.subscription_id.startswith("lq-")


def test_resume_after_disconnect_has_no_gap(kalam_server, tenant):
    a = tenant.connect(tenant.user_a)
    sql = f"SELECT id FROM {tenant.table}"
    with kalamflight.subscribe(kalam_server.uri, tenant.user_a, tenant.password, sql) as live:
        until_current(live)
        run(a, f"INSERT INTO {tenant.table} VALUES (1, 'r', 'x')")
        last = changes(live, 1)[0][2]
    run(a, f"INSERT INTO {tenant.table} VALUES (2, 'r', 'x'), (3, 'r', 'x')")
    with kalamflight.subscribe(kalam_server.uri, tenant.user_a, tenant.password, sql,
                               resume_after_seq=last) as live:
        until_current(live)
        assert [i for i, _, _ in changes(live, 2)] == [2, 3]


def test_bad_subscriptions_fail_clearly(kalam_server, tenant):
    for sql, needle in [
        (f"SELECT room, count(*) FROM {tenant.table} GROUP BY room", "live queries support"),
        (f"SELECT id FROM {tenant.table} a JOIN {tenant.table} b USING (id)", "live queries support"),
        ("SELECT id FROM nowhere.nothing", "nowhere.nothing"),
    ]:
        # pyarrow maps INVALID_ARGUMENT to ArrowInvalid and NOT_FOUND to ArrowKeyError.
        with pytest.raises((pa.ArrowInvalid, KeyError, flight.FlightError)) as info:
            with kalamflight.subscribe(kalam_server.uri, tenant.user_a, tenant.password, sql) as live:
                list(live)
        assert needle in str(info.value), str(info.value)


def test_kill_ends_the_python_stream(kalam_server, tenant):
    a = tenant.connect(tenant.user_a)
    live = kalamflight.subscribe(kalam_server.uri, tenant.user_a, tenant.password,
                                 f"SELECT id FROM {tenant.table}", heartbeat_ms=100)
    until_current(live)
    run(a, f"KILL LIVE QUERY '{live.subscription_id}'")
    with pytest.raises(flight.FlightCancelledError):
        for _ in live:
            pass
    live.close()
