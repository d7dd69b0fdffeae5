"""The runtime's Lua script registry against a real Redis-compatible server: called by
SHA, reloaded after the server lost its scripts (SCRIPT FLUSH, a restart), keys under
the service's prefix."""

from __future__ import annotations

import pytest

from services.runtime.redis_conn import EmbeddedValkey, connect_redis, wait_for_redis
from services.runtime.redis_scripts import ScriptRegistry

# Takes up to ARGV[1] of a stock once per member: the claim and the count move together.
CLAIM = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left <= 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return -2 end
return redis.call('DECR', KEYS[1])
"""
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_a_script_is_called_by_sha_with_the_service_prefix(redis):
    scripts = ScriptRegistry(redis, "pond:campaign:")
    claim = scripts.register("claim", CLAIM)
    await scripts.load()
    assert await redis.script_exists(claim.sha) == [True]
    await redis.set("pond:campaign:stock:p1", 2)
    assert await claim(keys=["stock:p1", "claimed:p1"], args=["m1"]) == 1
    assert await claim(keys=["stock:p1", "claimed:p1"], args=["m1"]) == -2  # once per member
    assert await claim(keys=["stock:p1", "claimed:p1"], args=["m2"]) == 0
    assert await claim(keys=["stock:p1", "claimed:p1"], args=["m3"]) == -1  # none left
    assert sorted(await redis.smembers("pond:campaign:claimed:p1")) == [b"m1", b"m2"]
    # Only prefixed keys were written.
    assert sorted(await redis.keys("*")) == [b"pond:campaign:claimed:p1",
                                              b"pond:campaign:stock:p1"]
    assert scripts["claim"] is claim and claim.reloads == 0


async def test_two_services_sharing_a_redis_keep_apart(redis):
    campaign = ScriptRegistry(redis, "pond:campaign:").register("incr", INCR)
    community = ScriptRegistry(redis, "pond:community:").register("incr", INCR)
    assert await campaign(keys=["n"], args=[5]) == 5
    assert await community(keys=["n"], args=[1]) == 1
    assert await redis.get("pond:campaign:n") == b"5"
    assert await redis.get("pond:community:n") == b"1"


async def test_a_flushed_script_is_loaded_again_by_the_call(redis):
    incr = ScriptRegistry(redis, "pond:test:").register("incr", INCR)
    await redis.script_flush()  # (another test may have loaded the same body)
    # Never loaded: the first call loads it.
    assert await incr(keys=["n"], args=[1]) == 1
    assert incr.reloads == 1
    assert await incr(keys=["n"], args=[1]) == 2
    assert incr.reloads == 1
    await redis.script_flush()
    assert await redis.script_exists(incr.sha) == [False]
    assert await incr(keys=["n"], args=[1]) == 3
    assert incr.reloads == 2
    assert await redis.script_exists(incr.sha) == [True]


async def test_scripts_survive_a_server_restart(tmp_path):
    """A restarted server has no scripts; the data (AOF) is back, the call reloads."""
    server = EmbeddedValkey(tmp_path / "valkey").start()
    client = connect_redis(server.url)
    try:
        scripts = ScriptRegistry(client, "pond:test:")
        incr = scripts.register("incr", INCR)
        await scripts.load()
        assert await incr(keys=["n"], args=[2]) == 2
        await client.execute_command("BGREWRITEAOF")  # the counter outlives the process
        server.stop()
        server = EmbeddedValkey(
            tmp_path / "valkey", port=server.port, password=server.password
        ).start()
        await wait_for_redis(client)
        assert await client.get("pond:test:n") == b"2"
        assert await incr(keys=["n"], args=[3]) == 5
        assert incr.reloads == 1
    finally:
        await client.aclose()
        server.stop()


def test_registration_is_once_per_name_and_prefixes_name_the_service(redis):
    scripts = ScriptRegistry(redis, "pond:test:")
    scripts.register("incr", INCR)
    with pytest.raises(ValueError, match="already registered"):
        scripts.register("incr", INCR)
    for prefix in ("", "pond:test"):
        with pytest.raises(ValueError):
            ScriptRegistry(redis, prefix)
