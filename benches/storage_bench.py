#!/usr/bin/env python3
"""Storage figures (issue 3): bulk ingest rows/s through ADBC `adbc_ingest`, and point-query
latency on a USER table with each user's rows in the write buffer vs in Parquet (after FLUSH
TABLE), with the object-store bytes read per query.

Starts its own release server on 127.0.0.1:0 with a temporary data dir. Run:

    cargo build --release -p kalam-server
    python3 benches/storage_bench.py [--ingest-rows 1000000] [--users 10000] [--rows-per-user 1000]

Users are created by root; their rows are written by a service account with
`EXECUTE AS USER '<user>' INSERT ...` (no per-user login needed to load). Point queries run as
real users over ADBC. `--users 10000 --rows-per-user 1000` is the 10M-row table of the issue;
smaller values run faster. (`KALAM_SERVER_BIN` overrides the binary.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from adbc_point_query import PW, connect, rss_mib, start_server


def stat(cur, name: str) -> int:
    cur.execute(f"SELECT value FROM system.stats WHERE name = '{name}'")
    return int(cur.fetchall()[0][0])


def bulk_ingest(uri: str, rows: int) -> dict:
    with connect(uri, "root", PW) as conn, conn.cursor() as cur:
        cur.execute("CREATE NAMESPACE IF NOT EXISTS bench")
        ids = pa.array(range(rows), pa.int64())
        table = pa.table({
            "id": ids,
            "v": pa.array([i * 7 for i in range(rows)], pa.int64()),
            "body": pa.array([f"row {i} of the bulk load" for i in range(rows)]),
        }).combine_chunks()
        t = time.perf_counter()
        cur.adbc_ingest("bulk", table.to_batches(max_chunksize=65536), mode="create", db_schema_name="bench")
        took = time.perf_counter() - t
        cur.execute("SELECT count(*) FROM bench.bulk")
        assert cur.fetchall()[0][0] == rows
    return {"rows": rows, "seconds": took, "rows_per_s": rows / took}


def create_users(uri: str, first: int, last: int) -> None:
    with connect(uri, "root", PW) as conn, conn.cursor() as cur:
        for u in range(first, last):
            cur.execute(f"CREATE USER u{u} WITH PASSWORD '{PW}' ROLE user")


def load_users(uri: str, first: int, last: int, rows: int) -> None:
    with connect(uri, "loader", PW) as conn, conn.cursor() as cur:
        for u in range(first, last):
            for lo in range(0, rows, 1000):
                values = ",".join(f"({i}, 'room-{i % 10}', 'message {i} of user {u}')"
                                  for i in range(lo, min(rows, lo + 1000)))
                cur.execute(f"EXECUTE AS USER 'u{u}' INSERT INTO bench.m VALUES {values}")


def parallel(target, uri: str, n: int, workers: int, *extra) -> None:
    # "spawn": the parent already runs the ADBC (Go) runtime, which does not survive fork().
    ctx = mp.get_context("spawn")
    step = (n + workers - 1) // workers
    procs = [ctx.Process(target=target, args=(uri, w * step, min(n, (w + 1) * step), *extra))
             for w in range(workers) if w * step < n]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"{target.__name__} failed")


def point_queries(uri: str, users: int, rows: int, n: int, root_cur) -> dict:
    """`n` point queries, each as a random user (new user every 50 queries)."""
    lat: list[float] = []
    before = (stat(root_cur, "store_bytes_read"), stat(root_cur, "store_reads"))
    done = 0
    while done < n:
        u = random.randrange(users)
        with connect(uri, f"u{u}", PW) as conn, conn.cursor() as cur:
            for _ in range(min(50, n - done)):
                key = random.randrange(rows)
                t = time.perf_counter()
                cur.execute("SELECT id, room, body FROM bench.m WHERE id = $1", (key,))
                got = cur.fetchall()
                lat.append(time.perf_counter() - t)
                if len(got) != 1 or got[0][0] != key or not got[0][2].endswith(f"of user {u}"):
                    sys.exit(f"wrong result for u{u} id {key}: {got}")
                done += 1
    after = (stat(root_cur, "store_bytes_read"), stat(root_cur, "store_reads"))
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    return {"queries": n, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "store_bytes_per_query": (after[0] - before[0]) / n,
            "store_reads_per_query": (after[1] - before[1]) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingest-rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--rows-per-user", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--json", help="write the figures here as JSON")
    args = ap.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        # A buffer big enough to hold the whole table: the "in the buffer" phase must not flush.
        proc, uri = start_server(tmp, ["--write-buffer-limit", "16GiB", "--flush-age-secs", "86400"])
        try:
            figures["bulk_ingest"] = bulk_ingest(uri, args.ingest_rows)
            print(f"bulk ingest: {args.ingest_rows} rows in {figures['bulk_ingest']['seconds']:.2f} s = "
                  f"{figures['bulk_ingest']['rows_per_s']:.0f} rows/s", flush=True)
            with connect(uri, "root", PW) as conn, conn.cursor() as cur:
                cur.execute("CREATE USER TABLE bench.m (id BIGINT PRIMARY KEY, room TEXT, body TEXT)")
                cur.execute(f"CREATE USER loader WITH PASSWORD '{PW}' ROLE service")
                t = time.perf_counter()
                parallel(create_users, uri, args.users, 2)
                print(f"created {args.users} users in {time.perf_counter() - t:.1f} s", flush=True)
                t = time.perf_counter()
                parallel(load_users, uri, args.users, 2, args.rows_per_user)
                total = args.users * args.rows_per_user
                took = time.perf_counter() - t
                print(f"loaded {total} rows in {took:.1f} s ({total / took:.0f} rows/s via INSERT)", flush=True)
                figures["table"] = {"users": args.users, "rows_per_user": args.rows_per_user, "rows": total,
                                    "load_rows_per_s": total / took, "rss_mib_loaded": rss_mib(proc.pid)}
                figures["buffer"] = point_queries(uri, args.users, args.rows_per_user, args.queries, cur)
                t = time.perf_counter()
                cur.execute("FLUSH TABLE bench.m")
                figures["flush_seconds"] = time.perf_counter() - t
                figures["rss_mib_after_flush"] = rss_mib(proc.pid)
                print(f"FLUSH TABLE: {figures['flush_seconds']:.1f} s", flush=True)
                point_queries(uri, args.users, args.rows_per_user, 200, cur)  # warm metadata cache
                figures["parquet"] = point_queries(uri, args.users, args.rows_per_user, args.queries, cur)
        finally:
            proc.terminate()
            proc.wait(30)
    t = figures["table"]
    print(f"USER table: {t['rows']} rows over {t['users']} users; point query by key via ADBC, new user every 50 queries")
    for where in ("buffer", "parquet"):
        r = figures[where]
        print(f"  rows in {where:8}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, p99.9 {r['p999_ms']:.2f} ms, "
              f"object store {r['store_bytes_per_query']:.0f} bytes / {r['store_reads_per_query']:.1f} reads per query")
    print(f"  server RSS: loaded {t['rss_mib_loaded']:.0f} MiB, after flush {figures['rss_mib_after_flush']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
