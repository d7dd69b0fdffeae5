"""The gateway as an attacker and a careless client meet it, over real servers (a
gateway on uvicorn over a real member service, a real community service and real
Redis): value-moving calls raced, sessions raced, identities crossed, bad input."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import structlog
import yaml
from pond.community.v1 import community_pb2 as pb
from pond.member.v1 import member_pb2 as mpb

from services.runtime.logs import configure_logging
from services.runtime.redis_conn import EmbeddedValkey
from tests.conftest import eventually
from tests.gateway_harness import (
    GATEWAY_TEST_SECRET,
    WECHAT_APP_SECRET,
    GatewayHarness,
    bearer,
)
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    community_fixture,
)
from tests.integration.test_gateway_auth import assert_problem
from tests.integration.test_gateway_community import TEMPLATE as TEST_TEMPLATE
from tests.integration.test_gateway_community import open_chain, signed_in
from tests.integration.test_transport import restore_logging  # noqa: F401 (fixture)


@pytest.fixture
async def gw(gateway_factory, community: Community) -> GatewayHarness:
    return await gateway_factory(community_target=f"127.0.0.1:{community.service.port}")


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def test_concurrent_chain_joins_with_other_keys_take_one_entry(
        gw: GatewayHarness, community: Community):
    """Ten joins of one member at once, each with its own key: one entry, never more
    than the per-member limit, and the chain's stock counts exactly it."""
    _, headers = await signed_in(gw, "alice")
    await community.group("g1")
    await open_chain(community, "g1", "cherries", stock=5, per_member_limit=3)
    replies = await asyncio.gather(*(gw.http.post(
        "/v1/chains/cherries/entries", headers={**headers, **key()}, json={"quantity": 3})
        for _ in range(10)))
    codes = sorted(r.status_code for r in replies)
    assert codes.count(201) == 1, [r.text for r in replies]
    assert set(codes) <= {201, 409}, [r.text for r in replies]
    chain = (await gw.http.get("/v1/chains/cherries", headers=headers)).json()
    assert chain["my_entry"]["quantity"] == 3
    assert chain["stock_left"] == 2, chain


async def test_join_change_withdraw_raced_keep_the_stock_true(
        gw: GatewayHarness, community: Community):
    """Members joining, changing and withdrawing at once: the stock left is always
    the stock less the active entries' quantities, never oversold."""
    await community.group("g1")
    await open_chain(community, "g1", "cherries", stock=6, per_member_limit=3)
    members = [await signed_in(gw, f"m{i}") for i in range(4)]

    async def churn(headers: dict[str, str]) -> None:
        url = "/v1/chains/cherries/entries"
        for quantity in (3, 1, 2):
            await gw.http.post(url, headers={**headers, **key()}, json={"quantity": quantity})
            await asyncio.gather(
                gw.http.patch(url + "/me", headers=headers, json={"quantity": 3}),
                gw.http.delete(url + "/me", headers=headers),
                gw.http.post(url, headers={**headers, **key()}, json={"quantity": 2}))

    await asyncio.gather(*(churn(h) for _, h in members))
    taken = 0
    for _, headers in members:
        chain = (await gw.http.get("/v1/chains/cherries", headers=headers)).json()
        taken += chain["my_entry"]["quantity"] if chain["my_entry"] else 0
    assert 0 <= taken <= 6
    assert chain["stock_left"] == 6 - taken, (chain, taken)


async def test_a_refresh_token_raced_has_one_winner(gw: GatewayHarness):
    tokens = await gw.login("alice")
    replies = await asyncio.gather(*(gw.http.post(
        "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}) for _ in range(8)))
    assert sorted(r.status_code for r in replies) == [200] + [401] * 7, [
        r.text for r in replies]
    # The reuse revoked the family: the winner's tokens end too.
    winner = next(r.json() for r in replies if r.status_code == 200)
    assert_problem(await gw.get("/v1/me", winner["access_token"]), 401, "SESSION_REVOKED")
    assert_problem(await gw.http.post("/v1/auth/refresh", json={
        "refresh_token": winner["refresh_token"]}), 401, "REFRESH_TOKEN_INVALID")


async def test_two_members_binding_one_phone_at_once_make_one_member(
        gw: GatewayHarness, community: Community):
    """Two devices (two members) bind the same verified phone at once: one holds it,
    the other is merged into it, never two holders nor a merge both ways."""
    a, b = await gw.login("a"), await gw.login("b")
    replies = await asyncio.gather(*(gw.http.post(
        "/v1/me/phone", headers=bearer(t["access_token"]), json={"code": f"phone-13912345678.{n}"})
        for n, t in enumerate((a, b))))
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    merged = [r.json()["merged"] for r in replies]
    assert sorted(merged) == [False, True], merged
    holder = next(r.json() for r in replies if not r.json()["merged"])["me"]["id"]
    reply = await community.member.stub.FindMember(mpb.FindMemberRequest(
        identity=mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13912345678")),
        metadata=community.member.md())
    assert reply.id == holder


async def test_a_cycle_of_phone_binds_merges_one_way(gw: GatewayHarness, community: Community):
    """A holds one phone, B another; A binds B's while B binds A's at once: the two
    end as one member, with no merge cycle (each survivor is itself unmerged)."""
    a, b = await gw.login("ca"), await gw.login("cb")
    for t, phone in ((a, "13700000001"), (b, "13700000002")):
        r = await gw.http.post("/v1/me/phone", headers=bearer(t["access_token"]),
                               json={"code": f"phone-{phone}"})
        assert r.status_code == 200 and not r.json()["merged"], r.text
    replies = await asyncio.gather(
        gw.http.post("/v1/me/phone", headers=bearer(a["access_token"]),
                     json={"code": "phone-13700000002.x"}),
        gw.http.post("/v1/me/phone", headers=bearer(b["access_token"]),
                     json={"code": "phone-13700000001.x"}))
    statuses = sorted(r.status_code for r in replies)
    assert statuses in ([200, 200], [200, 401]), [r.text for r in replies]
    md = community.member.md()
    ids = set()
    for member_id in (a["member_id"], b["member_id"]):
        m = (await community.member.stub.GetMember(mpb.GetMemberRequest(member_id=member_id),
                                                   metadata=md))
        ids.add(m.merged_into or m.id)
    assert len(ids) == 1, ids
    (survivor,) = ids
    m = (await community.member.stub.GetMember(mpb.GetMemberRequest(member_id=survivor),
                                               metadata=md))
    assert not m.merged_into


@pytest.mark.parametrize("body", [
    b"[" * 30000 + b"]" * 30000,
    b'{"quantity": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"quantity": 1e400}', b'{"quantity": 9223372036854775808}', b'{"quantity": -1}',
    b'{"quantity": "1"}', b'{"quantity": true}', b'{"quantity": 1.0}', b'\xff\xfe',
    b'{"quantity": 1, "member_id": "someone"}', b"null", b"",
])
async def test_bad_chain_bodies_are_400s(gw: GatewayHarness, community: Community, body: bytes):
    _, headers = await signed_in(gw, "alice")
    await community.group("g1")
    await open_chain(community, "g1", "cherries")
    reply = await gw.http.post("/v1/chains/cherries/entries", content=body, headers={
        **headers, **key(), "content-type": "application/json"})
    assert reply.status_code in (400, 422), reply.text
    assert reply.headers["content-type"] == "application/problem+json"


async def test_flows_log_no_phone_token_or_secret(
        gw: GatewayHarness, community: Community, capsys, restore_logging):  # noqa: F811
    """Sign-in, refresh, a phone bound (a merge), a refused phone, a chain join and
    a sign-out, logged at debug: no phone number, token or secret in any line."""
    configure_logging("debug", "json")
    # Loggers first used now must not keep capsys's stream, closed after the test
    # (a later test's log line would raise into its request).
    structlog.configure(cache_logger_on_first_use=False)
    await community.member.stub.RegisterMember(mpb.RegisterMemberRequest(
        identities=[mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13612345678")]),
        metadata=community.member.md())
    await community.group("g1")
    await open_chain(community, "g1", "cherries")
    first = await gw.login("leaky")
    refreshed = (await gw.http.post("/v1/auth/refresh", json={
        "refresh_token": first["refresh_token"]})).json()
    headers = bearer(refreshed["access_token"])
    await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **key()},
                       json={"quantity": 1})
    await gw.http.post("/v1/me/phone", headers={**headers, "X-Request-Id": "13612345678"},
                       json={"code": "phone-1361234567"})
    bound = (await gw.http.post("/v1/me/phone", headers=headers,
                                json={"code": "phone-13612345678"})).json()
    await gw.http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    await gw.http.post("/v1/auth/logout", headers=bearer(bound["tokens"]["access_token"]))
    out = ""

    async def logged() -> str:
        nonlocal out
        out += capsys.readouterr().out
        return out

    # The canonical lines are written in batches: wait for the last request's.
    await eventually(logged, lambda text: "POST /v1/auth/logout" in text, timeout=10)
    secrets = ["13612345678", "1361234567", first["access_token"], first["refresh_token"],
               refreshed["access_token"], refreshed["refresh_token"],
               bound["tokens"]["access_token"], bound["tokens"]["refresh_token"],
               WECHAT_APP_SECRET, GATEWAY_TEST_SECRET, "session_key"]
    for secret in secrets:
        assert secret not in out, secret
    for part in (first["refresh_token"], refreshed["refresh_token"]):
        assert part.partition(".")[2] not in out


async def test_redis_restarted_under_the_gateway_is_503_then_serves_again(
        gateway_factory, tmp_path):
    """The gateway's own Redis stops while it serves: every request that needs it is
    503 with Retry-After (never a 500), and once Redis is back (its AOF kept the
    session) the same tokens work again."""
    valkey = EmbeddedValkey(tmp_path / "valkey").start()
    try:
        gw = await gateway_factory(redis_url=valkey.url)
        tokens = await gw.login("alice")
        assert (await gw.get("/v1/me", tokens["access_token"])).status_code == 200
        await asyncio.to_thread(valkey.stop)
        for reply in (await gw.get("/v1/me", tokens["access_token"]),
                      await gw.http.post("/v1/auth/refresh",
                                         json={"refresh_token": tokens["refresh_token"]}),
                      await gw.http.post("/v1/auth/wechat-login",
                                         json={"code": gw.code("bob")})):
            body = assert_problem(reply, 503, "SERVICE_UNAVAILABLE")
            assert reply.headers["retry-after"], body
        await asyncio.to_thread(valkey.start)

        async def me() -> int:
            return (await gw.get("/v1/me", tokens["access_token"])).status_code

        await eventually(me, lambda status: status == 200, timeout=10)
        refreshed = await gw.http.post("/v1/auth/refresh",
                                       json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
    finally:
        valkey.stop()


LIMITS = "auth=0/2/60,read=100/100/60,write=100/100/60"


def _manifest_env(name: str) -> str:
    manifest = Path(__file__).parents[2] / "k8s" / "base" / "gateway.yaml"
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if env["name"] == name:
                        return str(env["value"])
    raise AssertionError(f"{name} is not in the gateway's Deployment")


async def _logins(gw: GatewayHarness, forwarded_for: list[str]) -> list[int]:
    return [(await gw.http.post("/v1/auth/wechat-login", json={"code": gw.code("x")},
                                headers={"X-Forwarded-For": xff})).status_code
            for xff in forwarded_for]


async def test_the_deployed_gateway_counts_no_ip_the_client_wrote(gateway_factory, redis):
    """Configured as k8s/base deploys it, a client that writes a new X-Forwarded-For
    on every request is still one client to the per-IP limits (here the peer is no
    proxy of the deployment's, so the header counts for nothing)."""
    gw = await gateway_factory(rate_limits=LIMITS,
                               forwarded_allow_ips=_manifest_env("POND_FORWARDED_ALLOW_IPS"))
    assert await _logins(gw, [f"203.0.113.{i}" for i in range(3)]) == [200, 200, 429]


async def test_behind_a_proxy_the_address_it_added_counts(gateway_factory, redis):
    """Behind a named proxy (here the loopback peer) that appends the address it saw,
    the client's own entries on the left count for nothing; another client is not
    counted with it; "*", which would believe the leftmost entry, is refused."""
    gw = await gateway_factory(rate_limits=LIMITS, forwarded_allow_ips="127.0.0.0/8")
    spoofed = [f"203.0.113.{i}, 198.51.100.7" for i in range(3)]
    assert await _logins(gw, spoofed) == [200, 200, 429]
    assert await _logins(gw, ["198.51.100.8"]) == [200]
    with pytest.raises(ValueError, match="POND_FORWARDED_ALLOW_IPS"):
        await gateway_factory(forwarded_allow_ips="*")


async def test_a_merged_members_session_reads_no_empty_history(
        gw: GatewayHarness, community: Community):
    """An operator merges A into B: A's still-valid access token gets 401 MEMBER_MERGED
    on every member route, lists included (they would show A's history, moved to B,
    as empty, as if the customer's points and orders were gone), and writes nothing."""
    a, b = await gw.login("dup-a"), await gw.login("dup-b")
    await community.group("g1")
    await open_chain(community, "g1", "cherries")
    await community.member.stub.MergeMembers(mpb.MergeMembersRequest(
        surviving_id=b["member_id"], merged_id=a["member_id"], reason="duplicate"),
        metadata=community.member.md())
    headers = bearer(a["access_token"])
    for path in ("/v1/me", "/v1/me/orders", "/v1/me/orders/o1", "/v1/me/points",
                 "/v1/me/points/entries", "/v1/me/points/expiring", "/v1/me/stored-value",
                 "/v1/me/stored-value/entries", "/v1/me/groups", "/v1/me/check-in-streak",
                 "/v1/chains/cherries"):
        assert_problem(await gw.http.get(path, headers=headers), 401, "MEMBER_MERGED")
    for method, path, extra in (
            ("PATCH", "/v1/me", {"json": {"nickname": "x"}}),
            ("POST", "/v1/chains/cherries/entries", {"json": {"quantity": 1},
                                                     "headers": {**headers, **key()}}),
            ("POST", "/v1/check-ins", {})):
        reply = await gw.http.request(method, path, **{"headers": headers, **extra})
        assert_problem(reply, 401, "MEMBER_MERGED")
    chain = (await gw.http.get("/v1/chains/cherries", headers=bearer(b["access_token"]))).json()
    assert chain["stock_left"] == 5


async def test_live_code_scans_at_once_never_overfill_a_group(
        gw: GatewayHarness, community: Community):
    """Seven members scan a live code of 2-seat groups at once, twice each: every
    member lands in one group, and no group holds more than its capacity."""
    await community.rule("fruit", template=TEST_TEMPLATE)
    members = [await signed_in(gw, f"scan{i}") for i in range(7)]
    replies = await asyncio.gather(*(gw.http.post("/v1/live-codes/fruit/join", headers=h)
                                     for _, h in members + members))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    by_member: dict[str, set[str]] = {}
    for (member_id, _), reply in zip(members + members, replies, strict=True):
        by_member.setdefault(member_id, set()).add(reply.json()["group"]["id"])
    assert all(len(groups) == 1 for groups in by_member.values()), by_member
    listed = await community.stub.ListGroups(pb.ListGroupsRequest(pool_id="fruit"),
                                             metadata=community.md())
    for group in listed.groups:
        assert group.member_count <= 2, group
    assert sum(g.member_count for g in listed.groups) == 7


async def test_check_ins_at_once_make_one(gw: GatewayHarness, community: Community):
    _, headers = await signed_in(gw, "early")
    await community.rule("fruit", template=TEST_TEMPLATE)
    assert (await gw.http.post("/v1/live-codes/fruit/join", headers=headers)).status_code == 200
    replies = await asyncio.gather(*(gw.http.post("/v1/check-ins", headers=headers)
                                     for _ in range(6)))
    assert sorted(r.status_code for r in replies) == [200] * 5 + [201], [
        r.text for r in replies]
    assert len({r.json()["day"] for r in replies}) == 1
    streak = (await gw.http.get("/v1/me/check-in-streak", headers=headers)).json()
    assert streak["total_days"] == 1, streak
