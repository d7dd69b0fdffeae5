"""REDIS_URL with rediss:// against a real TLS Redis: Debian's redis-server, which is
built with TLS (the embedded Valkey binary is not). CI installs it before rerunning
the Redis tests; where it is missing the test is skipped."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.runtime.redis_conn import connect_redis
from tests.conftest import wait_until

pytestmark = pytest.mark.redis
PASSWORD = "tls-test-password"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pond test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        _write_pem(folder / "ca.pem", ca.public_bytes(pem)),
        _write_pem(folder / "server.pem", cert.public_bytes(pem)),
        _write_pem(folder / "server.key", key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on this machine (CI installs Debian's)")
    ca, cert, key = make_certificates(tmp_path)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    process.stdin.write("\n".join([
        "port 0", f"tls-port {port}", "bind 127.0.0.1", f'dir "{tmp_path}"',
        f'tls-cert-file "{cert}"', f'tls-key-file "{key}"', f'tls-ca-cert-file "{ca}"',
        "tls-auth-clients no", f"requirepass {PASSWORD}", 'save ""', "appendonly no",
        f'logfile "{tmp_path / "redis.log"}"', "",
    ]).encode())
    process.stdin.close()
    try:
        def ready() -> bool:
            assert process.poll() is None, _read(tmp_path / "redis.log")
            return "Ready to accept connections" in _read(tmp_path / "redis.log")

        wait_until(ready, 10, "redis-server did not start")
        yield port, ca
    finally:
        process.terminate()
        process.wait(10)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_rediss_url_talks_tls_and_verifies_the_server(tls_redis: tuple[int, Path]):
    port, ca = tls_redis
    client = connect_redis(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    unverified = connect_redis(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")  # system CAs only
    try:
        assert await client.xadd("pond.events.member", {b"e": b"x"})
        assert await client.xlen("pond.events.member") == 1
        with pytest.raises(aioredis.ConnectionError, match=r"(?i)certificate"):
            await unverified.ping()
    finally:
        await client.aclose()
        await unverified.aclose()
