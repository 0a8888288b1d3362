#!/usr/bin/env python3
"""Streams a large result through Flight (pyarrow.flight, DoGet) and reports throughput and the
server's peak RSS while streaming: the result never sits in server memory.

    cargo build --release -p kalam-server
    python3 benches/stream_rss.py [--rows 100000000]

The query generates its rows (`range()` + a string column), so the figure isolates the
query → encoder → network path from storage.
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
from adbc_point_query import root_flight, rss_mib, start_server  # noqa: E402
from kalam_testing import command_statement_query  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = start_server(tmp)
        try:
            client, opts = root_flight(uri)
            sql = f"SELECT value, concat('row-', CAST(value AS VARCHAR)) AS label FROM range(0, {args.rows})"
            baseline = rss_mib(proc.pid)
            peak = [baseline]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mib(proc.pid))
                    time.sleep(0.05)

            threading.Thread(target=sample, daemon=True).start()
            t0 = time.perf_counter()
            info = client.get_flight_info(flight.FlightDescriptor.for_command(command_statement_query(sql)), opts)
            rows = nbytes = 0
            for ep in info.endpoints:
                reader = client.do_get(ep.ticket, opts)
                for chunk in reader:
                    rows += chunk.data.num_rows
                    nbytes += chunk.data.nbytes
            wall = time.perf_counter() - t0
            done.set()
            assert rows == args.rows, (rows, args.rows)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"streamed {rows:,} rows, {nbytes / 2**20:,.0f} MiB of Arrow data in {wall:.1f} s "
          f"({nbytes / 2**20 / wall:,.0f} MiB/s, {rows / wall / 1e6:.1f} M rows/s)")
    print(f"server RSS: {baseline:.1f} MiB before, peak {peak[0]:.1f} MiB while streaming "
          f"(+{peak[0] - baseline:.1f} MiB for {nbytes / 2**20:,.0f} MiB streamed)")


if __name__ == "__main__":
    main()
