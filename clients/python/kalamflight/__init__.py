"""KalamFlight for Python: `connect()` gives an ADBC DB-API connection, `subscribe()` a live
query over Arrow Flight `DoExchange` (DESIGN §7).

Only `pyarrow` and `adbc_driver_flightsql` are needed; the two small protobuf messages of the
live-query protocol are encoded here by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import pyarrow as pa
import pyarrow.flight as flight

__all__ = ["connect", "subscribe", "Subscription", "LiveEvent", "COMMAND_SUBSCRIBE_TYPE_URL"]

COMMAND_SUBSCRIBE_TYPE_URL = "type.googleapis.com/kalam.v1.CommandSubscribe"

#: `SubscriptionEvent.Kind` values, by number.
KINDS = {0: "schema", 1: "snapshot", 2: "current", 3: "changes", 4: "progress"}


def connect(uri: str, user: str, password: str, **db_kwargs):
    """An ADBC DB-API connection (autocommit on) to `uri` (`grpc://host:port`) as `user`.

    Extra keyword arguments are passed as ADBC database options.
    """
    import adbc_driver_flightsql.dbapi as flightsql

    kwargs = {"username": user, "password": password, **db_kwargs}
    return flightsql.connect(uri, db_kwargs=kwargs, autocommit=True)


@dataclass(frozen=True)
class LiveEvent:
    """The metadata of one live-query message.

    `kind` is `snapshot` (rows of the initial snapshot), `current` (the snapshot is complete;
    `seq` is its position), `changes` (committed changes; `seq` is the highest `_seq` in the
    batch) or `progress` (heartbeat: every change up to `seq` was delivered).
    """

    kind: str
    seq: int
    subscription_id: str


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_subscribe(sql: str, snapshot: bool, resume_after_seq: Optional[int],
                     max_batch_rows: int, heartbeat_ms: int) -> bytes:
    """`Any{CommandSubscribe}` as the bytes of a FlightDescriptor command."""
    msg = _bytes_field(1, sql.encode())
    if snapshot:
        msg += _field(2, 0) + _varint(1)
    if resume_after_seq is not None:
        msg += _field(3, 0) + _varint(resume_after_seq)
    if max_batch_rows:
        msg += _field(4, 0) + _varint(max_batch_rows)
    if heartbeat_ms:
        msg += _field(5, 0) + _varint(heartbeat_ms)
    return _bytes_field(1, COMMAND_SUBSCRIBE_TYPE_URL.encode()) + _bytes_field(2, msg)


def decode_event(data: bytes) -> LiveEvent:
    """Decodes a `SubscriptionEvent` (the `app_metadata` of every live message)."""
    kind, seq, sid = 0, 0, ""
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if number == 1:
                kind = value
            elif number == 2:
                seq = value
        elif wire == 2:
            n = varint()
            chunk = data[i:i + n]
            i += n
            if number == 3:
                sid = chunk.decode()
        else:
            raise ValueError(f"unexpected wire type {wire} in SubscriptionEvent")
    return LiveEvent(KINDS.get(kind, f"unknown({kind})"), seq, sid)


class Subscription:
    """An open live query; iterate it for `(LiveEvent, pyarrow.RecordBatch | None)` pairs.

    Use it as a context manager (or call `close()`): closing half-closes the exchange, which
    ends the subscription on the server. A server-side end (`KILL LIVE QUERY`, table dropped,
    client too slow) raises the corresponding `pyarrow.flight` error from the iterator; a client
    that fell behind finds its last delivered seq in the message and can resubscribe with
    `resume_after_seq`.
    """

    def __init__(self, client: flight.FlightClient, writer, reader):
        self._client = client
        self._writer = writer
        self._reader = reader
        self.schema: pa.Schema = reader.schema
        self.subscription_id: Optional[str] = None
        self._closed = False

    def __iter__(self) -> Iterator[Tuple[LiveEvent, Optional[pa.RecordBatch]]]:
        while True:
            try:
                chunk = self._reader.read_chunk()
            except StopIteration:
                return
            meta = chunk.app_metadata
            event = decode_event(meta.to_pybytes() if meta is not None else b"")
            if self.subscription_id is None and event.subscription_id:
                self.subscription_id = event.subscription_id
            yield event, chunk.data

    def close(self) -> None:
        """Ends the subscription."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.done_writing()
        except flight.FlightError:
            pass
        self._reader.cancel()
        self._client.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def subscribe(uri: str, user: str, password: str, sql: str, snapshot: bool = True,
              resume_after_seq: Optional[int] = None, max_batch_rows: int = 0,
              heartbeat_ms: int = 0) -> Subscription:
    """Opens a live query `SELECT <columns> FROM <table> [WHERE <condition>]` as `user`.

    Yields the snapshot rows (if `snapshot`), one `current` event, then `changes` batches
    (`_change_type` is insert / update / delete, `_seq` strictly increasing) and idle `progress`
    heartbeats. With `resume_after_seq`, every retained change after that seq is replayed first
    (no snapshot); a position no longer retained fails with "resume position too old".
    """
    client = flight.FlightClient(uri)
    header = client.authenticate_basic_token(user, password)
    options = flight.FlightCallOptions(headers=[header])
    cmd = encode_subscribe(sql, snapshot, resume_after_seq, max_batch_rows, heartbeat_ms)
    descriptor = flight.FlightDescriptor.for_command(cmd)
    try:
        writer, reader = client.do_exchange(descriptor, options)
        sub = Subscription(client, writer, reader)
    except Exception:
        client.close()
        raise
    return sub
