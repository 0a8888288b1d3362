"""TLS interop: ADBC over `grpc+tls://` against a server started with --tls-cert/--tls-key,
trusting a test CA made by `trustme`; plaintext and untrusted clients are refused."""

from __future__ import annotations

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi
import adbc_driver_manager
import pytest
import trustme

from conftest import running_server
from kalam_testing import RPC_TIMEOUT_SECONDS, adbc_connect, rows


@pytest.fixture(scope="module")
def tls_ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, tls_ca):
    workdir = tmp_path_factory.mktemp("kalam-tls")
    leaf = tls_ca.issue_cert("localhost", "127.0.0.1")
    cert = workdir / "server.pem"
    key = workdir / "server.key"
    leaf.private_key_pem.write_to_path(str(key))
    # The chain file: the leaf first, then any intermediates.
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    with running_server(workdir, ["--tls-cert", str(cert), "--tls-key", str(key)], scheme="grpc+tls") as server:
        yield server


def tls_connect(uri: str, user: str, password: str, root_certs: str):
    opts = adbc_driver_flightsql.DatabaseOptions
    return adbc_driver_flightsql.dbapi.connect(
        uri,
        db_kwargs={
            "username": user,
            "password": password,
            opts.TLS_ROOT_CERTS.value: root_certs,
            opts.TIMEOUT_FETCH.value: RPC_TIMEOUT_SECONDS,
            opts.TIMEOUT_QUERY.value: RPC_TIMEOUT_SECONDS,
            opts.TIMEOUT_UPDATE.value: RPC_TIMEOUT_SECONDS,
        },
        autocommit=True,
    )


def test_adbc_over_tls(tls_server, tls_ca):
    assert tls_server.uri.startswith("grpc+tls://")
    ca_pem = tls_ca.cert_pem.bytes().decode()
    with tls_connect(tls_server.uri, "root", tls_server.root_password, ca_pem) as conn:
        rows(conn, "CREATE NAMESPACE tls_app")
        rows(conn, "CREATE SHARED TABLE tls_app.t (id BIGINT PRIMARY KEY, v TEXT)")
        rows(conn, "INSERT INTO tls_app.t VALUES (1, 'one'), (2, 'two')")
        assert rows(conn, "SELECT id, v FROM tls_app.t ORDER BY id") == [(1, "one"), (2, "two")]


def test_plaintext_client_is_refused(tls_server):
    with pytest.raises(adbc_driver_manager.Error) as info:
        conn = adbc_connect(f"grpc://{tls_server.host}:{tls_server.port}", "root", tls_server.root_password)
        try:
            rows(conn, "SELECT 1")
        finally:
            conn.close()
    # The server answers plaintext HTTP/2 on its TLS port with a status that says what to do.
    message = str(info.value)
    assert "requires TLS" in message and "grpc+tls://" in message, message


def test_untrusted_ca_is_refused(tls_server):
    other = trustme.CA().cert_pem.bytes().decode()
    with pytest.raises(adbc_driver_manager.Error) as info:
        conn = tls_connect(tls_server.uri, "root", tls_server.root_password, other)
        try:
            rows(conn, "SELECT 1")
        finally:
            conn.close()
    assert "certificate" in str(info.value).lower(), str(info.value)
