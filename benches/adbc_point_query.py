#!/usr/bin/env python3
"""Point queries on a USER table through ADBC (adbc_driver_flightsql): queries/s and p50/p99
latency with 1 and 8 clients, and server RSS after warm-up and after N queries.

Starts its own release server on 127.0.0.1:0 with a temporary data dir. Run:

    cargo build --release -p kalam-server
    python3 benches/adbc_point_query.py [--users 100] [--rows-per-user 1000] [--queries 100000]

(`KALAM_SERVER_BIN` overrides the binary; the venv of scripts/test.sh has the packages.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
PW = "bench-pw"


def server_bin() -> str:
    if os.environ.get("KALAM_SERVER_BIN"):
        return os.environ["KALAM_SERVER_BIN"]
    for d in (os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target"), os.path.expanduser("~/.cache/kalam-target-release")):
        if d and Path(d, "release", "kalam-server").exists():
            return str(Path(d, "release", "kalam-server"))
    sys.exit("release kalam-server not found: cargo build --release -p kalam-server")


def start_server(data_dir: str, extra_args: list[str] | None = None):
    env = dict(os.environ, KALAM_ROOT_PASSWORD=PW, RUST_LOG="warn")
    proc = subprocess.Popen(
        [server_bin(), "--listen", "127.0.0.1:0", "--data-dir", data_dir, *(extra_args or [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    found: list[str] = []
    done = threading.Event()

    def read():
        for line in proc.stdout:  # keep draining so the pipe never fills
            if line.startswith("listening on ") and not found:
                found.append(line.split()[-1])
                done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(60):
        proc.kill()
        sys.exit("server did not start")
    return proc, f"grpc://{found[0]}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def root_flight(uri: str):
    """A pyarrow.flight client logged in as root, and the call options carrying its token."""
    import pyarrow.flight as flight

    client = flight.FlightClient(uri)
    header = client.authenticate_basic_token("root", PW)
    return client, flight.FlightCallOptions(headers=[header])


def connect(uri: str, user: str, pw: str):
    return flightsql.connect(uri, db_kwargs={"username": user, "password": pw}, autocommit=True)


def load(uri: str, users: int, rows: int) -> None:
    with connect(uri, "root", PW) as conn, conn.cursor() as cur:
        cur.execute("CREATE NAMESPACE bench")
        cur.execute("CREATE USER TABLE bench.m (id BIGINT PRIMARY KEY, room TEXT, body TEXT)")
        for u in range(users):
            cur.execute(f"CREATE USER u{u} WITH PASSWORD '{PW}' ROLE user")
        for u in range(users):
            with connect(uri, f"u{u}", PW) as uc, uc.cursor() as ucur:
                ids = list(range(rows))
                table = pa.table({
                    "id": pa.array(ids, pa.int64()),
                    "room": pa.array([f"room-{i % 10}" for i in ids]),
                    "body": pa.array([f"message {i} of user {u}" for i in ids]),
                })
                ucur.adbc_ingest("m", table, mode="append", db_schema_name="bench")


def client(uri: str, user: str, rows: int, n: int, out: mp.Queue) -> None:
    lat = []
    with connect(uri, user, PW) as conn, conn.cursor() as cur:
        sql = "SELECT id, room, body FROM bench.m WHERE id = $1"
        for _ in range(n):
            key = random.randrange(rows)
            t = time.perf_counter()
            cur.execute(sql, (key,))
            got = cur.fetchall()
            lat.append(time.perf_counter() - t)
            if len(got) != 1 or got[0][0] != key:
                out.put(("error", f"{user}: wrong result for id {key}: {got}"))
                return
    out.put(("ok", lat))


def run(uri: str, clients: int, per_client: int, users: int, rows: int) -> dict:
    # "spawn": the parent already runs the ADBC (Go) runtime, which does not survive fork().
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=client, args=(uri, f"u{i % users}", rows, per_client, q)) for i in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        kind, val = q.get()
        if kind == "error":
            sys.exit(val)
        lat.extend(val)
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    return summarize(clients, lat, wall)


def summarize(clients: int, lat: list[float], wall: float) -> dict:
    lat = sorted(lat)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    return {"clients": clients, "queries": len(lat), "qps": len(lat) / wall,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "_lat": lat, "_wall": wall}


def merge(chunks: list[dict]) -> dict:
    lat = [x for c in chunks for x in c["_lat"]]
    return summarize(chunks[0]["clients"], lat, sum(c["_wall"] for c in chunks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rows-per-user", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=100_000, help="total queries in the long 8-client run")
    ap.add_argument("--json", help="write the figures here as JSON")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = start_server(tmp)
        try:
            load(uri, args.users, args.rows_per_user)
            print("loaded", flush=True)
            rss_loaded = rss_mib(proc.pid)
            warm = run(uri, 8, 1000, args.users, args.rows_per_user)
            rss_warm = rss_mib(proc.pid)
            print(f"warm-up: {warm['qps']:.0f} q/s", flush=True)
            one = run(uri, 1, 5000, args.users, args.rows_per_user)
            print(f"1 client: {one['qps']:.0f} q/s", flush=True)
            # The long run in chunks, sampling RSS after each: flat means no per-query leak.
            chunks, rss_series = [], [rss_warm]
            per_chunk = max(8, args.queries // 5)
            done = 0
            while done < args.queries:
                n = min(per_chunk, args.queries - done)
                chunks.append(run(uri, 8, n // 8, args.users, args.rows_per_user))
                done += chunks[-1]["queries"]
                rss_series.append(rss_mib(proc.pid))
                print(f"  {done} queries: {chunks[-1]['qps']:.0f} q/s, RSS {rss_series[-1]:.1f} MiB", flush=True)
            eight = merge(chunks)
            rss_after = rss_series[-1]
        finally:
            proc.terminate()
            proc.wait(30)
    figures = {
        "rss_series_mib": rss_series,
        "table_rows": args.users * args.rows_per_user, "users": args.users,
        "rss_after_load_mib": rss_loaded, "rss_after_warmup_mib": rss_warm,
        "rss_after_long_run_mib": rss_after, "warmup": warm, "one_client": one, "eight_clients": eight,
    }
    print(f"USER table: {args.users} users x {args.rows_per_user} rows; point query by primary key via ADBC")
    for r in (one, eight):
        print(f"  {r['clients']} client(s): {r['queries']} queries, {r['qps']:.0f} q/s, "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
    print(f"  server RSS: after load {rss_loaded:.1f} MiB, after warm-up {rss_warm:.1f} MiB, "
          f"after {eight['queries'] + one['queries'] + warm['queries']} queries {rss_after:.1f} MiB")
    if args.json:
        strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")} if isinstance(d, dict) else d
        Path(args.json).write_text(json.dumps({k: strip(v) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
