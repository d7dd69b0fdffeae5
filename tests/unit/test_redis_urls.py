"""REDIS_URL forms the runtime accepts (credentials, TLS) and how it shows them."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import Connection, SSLConnection

from services.runtime.redis_conn import EmbeddedValkey, connect_redis, redact_url


async def test_rediss_url_gives_tls_connections_with_the_credentials_and_ca():
    client = connect_redis(
        "rediss://pond-member:s%40cret%2Fx@redis.internal:6380/2"
        "?ssl_ca_certs=/run/secrets/redis-ca.pem&ssl_cert_reqs=required"
    )
    pool = client.connection_pool
    try:
        assert pool.connection_class is SSLConnection
        kwargs = pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)
        assert (kwargs["username"], kwargs["password"]) == ("pond-member", "s@cret/x")
        assert kwargs["ssl_ca_certs"] == "/run/secrets/redis-ca.pem"
        connection = pool.make_connection()
        assert isinstance(connection, SSLConnection)
        assert connection.ssl_context.ca_certs == "/run/secrets/redis-ca.pem"
    finally:
        await client.aclose()


async def test_redis_url_with_credentials_is_plain_tcp():
    client = connect_redis("redis://pond-tagging:pw@127.0.0.1:6379/0")
    try:
        pool = client.connection_pool
        assert pool.connection_class is Connection
        assert pool.connection_kwargs["username"] == "pond-tagging"
        assert pool.connection_kwargs["password"] == "pw"
    finally:
        await client.aclose()


@pytest.mark.parametrize("password", ["plain", "a+b/c=", 'q"u@o:t%e\\'])
async def test_embedded_valkey_url_carries_any_password(tmp_path: Path, password: str):
    valkey = EmbeddedValkey(tmp_path, port=6390, password=password)
    client = connect_redis(valkey.url)
    try:
        assert client.connection_pool.connection_kwargs["password"] == password
        assert password not in redact_url(valkey.url)
    finally:
        await client.aclose()


def test_embedded_valkey_makes_a_password_when_given_none(tmp_path: Path):
    first, second = EmbeddedValkey(tmp_path), EmbeddedValkey(tmp_path)
    assert first.password and first.password != second.password


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://u:pw@h:6380/1?ssl_ca_certs=/ca.pem", "rediss://u:***@h:6380/1?ssl_ca_certs=/ca.pem"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown
