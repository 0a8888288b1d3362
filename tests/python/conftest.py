"""Fixtures: one real kalam-server per test session, ADBC connections, per-test tenants.

The server binary comes from `KALAM_SERVER_BIN`, else `$CARGO_TARGET_DIR/debug/kalam-server`,
else `target/debug/kalam-server` (scripts/test.sh builds it and sets the variable). It listens
on 127.0.0.1:0; the port is read from its `listening on 127.0.0.1:PORT` line on stdout.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow.flight as flight
import pytest

from kalam_testing import MESSAGES_DDL, Tenant, adbc_connect, run, unique

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60
SHUTDOWN_TIMEOUT_SECONDS = 60
# `match` (anchored at the start): the `metrics listening on ...` line must not match.
LISTENING = re.compile(r"listening on (\S+):(\d+)\s*$")


def _server_binary() -> Path:
    explicit = os.environ.get("KALAM_SERVER_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            pytest.exit(f"KALAM_SERVER_BIN={explicit} does not exist; build it first", returncode=2)
        return path
    candidates = []
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    if target_dir:
        base = Path(target_dir)
        candidates.append((base if base.is_absolute() else REPO_ROOT / base) / "debug" / "kalam-server")
    candidates.append(REPO_ROOT / "target" / "debug" / "kalam-server")
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    pytest.exit(
        f"kalam-server binary not found (tried {tried}); run `cargo build --bins` "
        "or set KALAM_SERVER_BIN",
        returncode=2,
    )


@dataclass
class KalamServer:
    """A running kalam-server child process and how to reach it."""

    process: subprocess.Popen
    host: str
    port: int
    root_password: str
    data_dir: Path
    log_path: Path
    stdout_lines: list = field(default_factory=list)
    scheme: str = "grpc"

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        stderr = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        stdout = self.stdout_lines[-lines:]
        return "--- server stdout ---\n{}\n--- server stderr ---\n{}".format(
            "\n".join(stdout), "\n".join(stderr)
        )

    def assert_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            pytest.fail(f"kalam-server exited early with code {code}\n{self.log_tail()}")

    def connect(self, user: str, password: str):
        self.assert_running()
        return adbc_connect(self.uri, user, password)


def _pump_stdout(stream, lines: list, events: queue.Queue) -> None:
    """Read the server's stdout to the end (so the pipe never fills), reporting each line."""
    for line in stream:
        line = line.rstrip("\n")
        lines.append(line)
        events.put(line)
    events.put(None)


@contextlib.contextmanager
def running_server(workdir: Path, extra_args: Sequence[str] = (), scheme: str = "grpc"):
    """Start kalam-server (data under `workdir`) with `extra_args`, yield it, stop it with
    SIGTERM and check it exited 0."""
    binary = _server_binary()
    data_dir = workdir / "data"
    log_path = workdir / "server.stderr.log"
    password = "root-" + secrets.token_urlsafe(18)

    env = dict(os.environ)
    env["KALAM_ROOT_PASSWORD"] = password
    # Flags win over these anyway, but keep a developer's shell settings out of the test server.
    for name in ("KALAM_LISTEN", "KALAM_DATA_DIR", "KALAM_CONFIG", "KALAM_STORAGE_URL"):
        env.pop(name, None)

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
            bufsize=1,
        )
    lines: list = []
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_pump_stdout, args=(process.stdout, lines, events), daemon=True).start()

    server = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while server is None:
        remaining = deadline - time.monotonic()
        try:
            line = events.get(timeout=max(remaining, 0))
        except queue.Empty:
            line = "<timeout>"
        if line is None or line == "<timeout>":
            process.kill()
            process.wait()
            reason = (
                f"did not print 'listening on' within {STARTUP_TIMEOUT_SECONDS}s"
                if line
                else f"exited with code {process.returncode} before listening"
            )
            stderr = log_path.read_text(errors="replace")[-6000:]
            pytest.fail(
                f"kalam-server {reason}\n--- stdout ---\n" + "\n".join(lines) + f"\n--- stderr ---\n{stderr}",
                pytrace=False,
            )
        match = LISTENING.match(line)
        if match:
            server = KalamServer(
                process=process,
                host=match.group(1),
                port=int(match.group(2)),
                root_password=password,
                data_dir=data_dir,
                log_path=log_path,
                stdout_lines=lines,
                scheme=scheme,
            )

    yield server

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(
                f"kalam-server did not exit within {SHUTDOWN_TIMEOUT_SECONDS}s of SIGTERM\n"
                + server.log_tail(),
                pytrace=False,
            )
    assert process.returncode == 0, (
        f"kalam-server exited with {process.returncode} after SIGTERM (expected 0)\n{server.log_tail()}"
    )


@pytest.fixture(scope="session")
def kalam_server(tmp_path_factory) -> KalamServer:
    with running_server(tmp_path_factory.mktemp("kalam-server")) as server:
        yield server


@pytest.fixture
def connect(kalam_server):
    """Factory: `connect(user, password)` -> ADBC connection, closed after the test."""
    opened = []

    def _connect(user: str, password: str):
        conn = kalam_server.connect(user, password)
        opened.append(conn)
        return conn

    yield _connect
    for conn in reversed(opened):
        conn.close()


@pytest.fixture
def root_conn(kalam_server, connect):
    """ADBC connection as `root` (role system), autocommit on."""
    return connect("root", kalam_server.root_password)


@pytest.fixture
def make_tenant(kalam_server, root_conn):
    """Factory for fresh tenants: namespace `t_<uuid>`, USER table `<ns>.messages`
    (id BIGINT PRIMARY KEY, room TEXT, body TEXT) and users `u_a_<uuid>` / `u_b_<uuid>`
    with role `user`."""
    tenants: list[Tenant] = []

    def _make() -> Tenant:
        ns = unique("t")
        suffix = ns[2:]
        tenant = Tenant(
            uri=kalam_server.uri,
            ns=ns,
            table=f"{ns}.messages",
            user_a=f"u_a_{suffix}",
            user_b=f"u_b_{suffix}",
            password=f"pw_{secrets.token_hex(6)}",
        )
        run(root_conn, f"CREATE NAMESPACE {ns}")
        run(root_conn, MESSAGES_DDL.format(table=tenant.table))
        for user in (tenant.user_a, tenant.user_b):
            run(root_conn, f"CREATE USER {user} WITH PASSWORD '{tenant.password}' ROLE user")
        tenants.append(tenant)
        return tenant

    yield _make
    for tenant in tenants:
        tenant.close()


@pytest.fixture
def tenant(make_tenant) -> Tenant:
    return make_tenant()


@pytest.fixture
def flight_client(kalam_server):
    """A plain pyarrow.flight client (no credentials attached)."""
    kalam_server.assert_running()
    client = flight.FlightClient(kalam_server.uri)
    yield client
    client.close()
