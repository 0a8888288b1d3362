#!/usr/bin/env python3
"""Durable single-row INSERTs per second with 1, 4, 16 and 64 concurrent clients.

Each INSERT is one Flight SQL `CommandStatementUpdate` (DoPut) over pyarrow.flight and is
acknowledged only after its WAL record is fsynced (group commit shares one fsync among the
writes queued meanwhile). Starts its own release server on 127.0.0.1:0 with a temp data dir:

    cargo build --release -p kalam-server
    python3 benches/insert_throughput.py [--seconds 10] [--flush-age-secs 1]

With `--flush-age-secs 1` the table is flushed to Parquet every second while the inserts run, so
every INSERT's primary-key check also probes the Parquet files (key-range and bloom-filter
pruning); the flushes and compactions that ran are printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.flight as flight

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from adbc_point_query import root_flight, start_server  # noqa: E402
from kalam_testing import command_statement_update, decode_do_put_update_result  # noqa: E402


def update(client: flight.FlightClient, opts, sql: str) -> int:
    descriptor = flight.FlightDescriptor.for_command(command_statement_update(sql))
    writer, reader = client.do_put(descriptor, __import__("pyarrow").schema([]), opts)
    writer.done_writing()
    buf = reader.read()
    writer.close()
    return decode_do_put_update_result(buf.to_pybytes())


def run(uri: str, opts, clients: int, seconds: float, start_id: int) -> tuple[int, list[float]]:
    counts = [0] * clients
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def worker(i: int):
        client = flight.FlightClient(uri)
        n = 0
        while time.perf_counter() < stop:
            key = start_id + i * 10_000_000 + n
            t = time.perf_counter()
            got = update(client, opts, f"INSERT INTO bench.t VALUES ({key}, 'payload {key}')")
            lat[i].append(time.perf_counter() - t)
            assert got == 1, got
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = sorted(x for l in lat for x in l)
    return sum(counts), [sum(counts) / wall, flat[len(flat) // 2] * 1000, flat[int(len(flat) * 0.99)] * 1000]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--flush-age-secs", type=int, help="flush the buffer this often (server flag)")
    args = ap.parse_args()
    extra = ["--flush-age-secs", str(args.flush_age_secs)] if args.flush_age_secs else []
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = start_server(tmp, extra)
        try:
            client, opts = root_flight(uri)
            update(client, opts, "CREATE NAMESPACE bench")
            update(client, opts, "CREATE SHARED TABLE bench.t (id BIGINT PRIMARY KEY, v TEXT)")
            print(f"durable single-row INSERTs via Flight SQL DoPut, {args.seconds:.0f} s per level")
            for level, clients in enumerate([1, 4, 16, 64]):
                n, (rate, p50, p99) = run(uri, opts, clients, args.seconds, level * 1_000_000_000)
                print(f"  {clients:>2} clients: {n:>7} inserts, {rate:8.0f} inserts/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            if args.flush_age_secs:
                import adbc_driver_flightsql.dbapi as flightsql
                from adbc_point_query import PW
                with flightsql.connect(uri, db_kwargs={"username": "root", "password": PW}) as conn:
                    with conn.cursor() as cur:
                        cur.execute("SELECT name, value FROM system.stats WHERE name IN "
                                    "('flushes', 'compactions', 'files_written')")
                        print("  " + ", ".join(f"{n} {v}" for n, v in cur.fetchall()))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
