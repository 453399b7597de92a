"""DICOM TLS with certificates made at test time (openssl), against dcmtk's echoscu."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import load_settings
from gateway.server import Gateway
from tests.conftest import free_port, need_tool


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one self-signed."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem", cwd=d)  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", "stranger.key", "-out", "stranger.pem", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def gateway(tmp_path: Path, pki: Path) -> Iterator[Gateway]:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={
            "port": free_port(),
            "tls": {
                "certificate": str(pki / "server.pem"),
                "private_key": str(pki / "server.key"),
                "client_ca": str(pki / "ca.pem"),
            },
        },
        metrics={"port": 0},
    )
    gw = Gateway(settings)
    gw.start()
    yield gw
    gw.stop()


def echo(gw: Gateway, pki: Path, *tls: str) -> subprocess.CompletedProcess:
    argv = [need_tool("echoscu"), "-aec", "PEDIFACE", *tls, "127.0.0.1", str(gw.settings.dicom.port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=pki)


def test_client_with_a_certificate_from_the_ca_is_served(gateway: Gateway, pki: Path) -> None:
    result = echo(gateway, pki, "+tls", "client.key", "client.pem", "+cf", "ca.pem")
    assert result.returncode == 0, result.stderr


def test_client_with_a_self_signed_certificate_is_refused(gateway: Gateway, pki: Path) -> None:
    result = echo(gateway, pki, "+tls", "stranger.key", "stranger.pem", "+cf", "ca.pem")
    # echoscu sees the connection go (aborted or reset, as timing has it) before any association.
    assert result.returncode != 0 and "Association Request Failed" in result.stderr, result.stderr
    # Why: the server refuses the certificate in the handshake. TLS 1.2 makes the client see the
    # alert during the handshake itself (TLS 1.3 would only report it on the first read).
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "stranger.pem", pki / "stranger.key")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway.settings.dicom.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="unknown ca"):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_tcp_client_is_refused(gateway: Gateway, pki: Path) -> None:
    result = echo(gateway, pki)
    assert result.returncode != 0 and "Association Request Failed" in result.stderr, result.stderr
    # An A-ASSOCIATE-RQ in plain TCP gets no DICOM answer at all (no A-ASSOCIATE-AC 0x02 or -RJ 0x03):
    # the server takes it for a broken TLS handshake and drops the connection.
    request = bytes([0x01, 0x00]) + struct.pack(">I", 68) + b"\x00\x01\x00\x00"
    request += b"PEDIFACE".ljust(16) + b"ECHOSCU".ljust(16) + bytes(32)
    with socket.create_connection(("127.0.0.1", gateway.settings.dicom.port), timeout=10) as raw:
        raw.sendall(request)
        try:
            answer = raw.recv(64)
        except ConnectionResetError:
            answer = b""
    assert answer[:1] not in (b"\x02", b"\x03"), answer
    # ... and the server still serves TLS clients afterwards.
    assert echo(gateway, pki, "+tls", "client.key", "client.pem", "+cf", "ca.pem").returncode == 0


def test_missing_key_file_is_a_clear_start_up_error(tmp_path: Path, pki: Path) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={
            "port": free_port(),
            "tls": {"certificate": str(pki / "server.pem"), "private_key": "/nonexistent"},
        },
        metrics={"port": 0},
    )
    with pytest.raises(ValueError, match="DICOM TLS files cannot be used"):
        Gateway(settings).start()
