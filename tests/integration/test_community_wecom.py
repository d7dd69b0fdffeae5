"""The WeCom callback receiver over real HTTP (the community process's own small app),
with callbacks encrypted and signed the way WeCom does (WeComCrypto.encrypt): URL
verification, members added and left applied as joins and leaves (members found by
their WeCom external user id through the member service), replays changing nothing,
unknown members pending, a dismissed chat archiving its group, bad signatures 403."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
import pytest_asyncio
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc
from pond.member.v1 import member_pb2 as mpb

from services.community.server import start_community_service
from services.community.wecom.crypto import WeComCrypto
from tests.conftest import MemberHarness, eventually
from tests.integration.community_harness import Community, community_settings, published

TOKEN, CORP = "QDG6eK", "wx5823bf96d3bd56c7"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CRYPTO = WeComCrypto(TOKEN, AES_KEY, CORP)
CHAT = "wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA"


@pytest_asyncio.fixture(name="wecom")
async def wecom_fixture(member: MemberHarness, redis_url: str, redis,
                        tmp_path) -> AsyncIterator[Community]:
    clock = member.clock
    clock.set(datetime.fromisoformat("2026-03-01T02:00:00+00:00"))
    service = await start_community_service(community_settings(
        tmp_path, redis_url, member.target, community_callback_port=0,
        community_wecom_token=TOKEN, community_wecom_aes_key=AES_KEY,
        community_wecom_corp_id=CORP), clock=clock, port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield Community(service, channel, community_pb2_grpc.CommunityServiceStub(channel),
                        clock, member)
    finally:
        await channel.close()
        await service.stop(0)


def _url(c: Community, **params: str) -> str:
    port = c.service.use_cases.callbacks.port
    return f"http://127.0.0.1:{port}/wecom/callback?{urllib.parse.urlencode(params)}"


async def http(url: str, body: bytes | None = None) -> tuple[int, str]:
    def call() -> tuple[int, str]:
        req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    return await asyncio.to_thread(call)


def event_xml(change: str, detail: str = "", members: tuple[str, ...] = (), version: str = "v1",
              created: int = 1_700_000_000) -> str:
    items = "".join(f"<Item><![CDATA[{m}]]></Item>" for m in members)
    return (f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[sys]]>"
            f"</FromUserName><CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]>"
            "</MsgType><Event><![CDATA[change_external_chat]]></Event>"
            f"<ChatId><![CDATA[{CHAT}]]></ChatId><ChangeType><![CDATA[{change}]]></ChangeType>"
            f"<UpdateDetail><![CDATA[{detail}]]></UpdateDetail><JoinScene>3</JoinScene>"
            f"<MemChangeList>{items}</MemChangeList><CurMemVer>{version}</CurMemVer></xml>")


def sealed(message: str, nonce: str = "1372623149") -> tuple[dict[str, str], bytes]:
    """WeCom's POST: the query (signature, timestamp, nonce) and the envelope."""
    timestamp = "1409304348"
    encrypted, signature = CRYPTO.encrypt(message, timestamp, nonce)
    body = (f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]>"
            "</Encrypt><AgentID><![CDATA[218]]></AgentID></xml>").encode()
    return {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}, body


async def members_of(c: Community, group_id: str) -> list[str]:
    reply = await c.stub.ListGroupMembers(pb.ListGroupMembersRequest(group_id=group_id),
                                          metadata=c.md())
    return sorted(m.member_id for m in reply.memberships)


async def register_wecom(c: Community, phone: str, external_id: str) -> str:
    reply = await c.member.stub.RegisterMember(mpb.RegisterMemberRequest(identities=[
        mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value=phone),
        mpb.Identity(kind=mpb.IDENTITY_KIND_WECOM_EXTERNAL_USERID, value=external_id)]),
        metadata=c.member.md())
    return reply.member.id


async def test_url_verification_answers_the_decrypted_echostr(wecom: Community):
    encrypted, signature = CRYPTO.encrypt("echo-1503457284", "1409659589", "263014780")
    query = dict(msg_signature=signature, timestamp="1409659589", nonce="263014780",
                 echostr=encrypted)
    assert await http(_url(wecom, **query)) == (200, "echo-1503457284")
    tampered = {**query, "msg_signature": "0" * 40}
    assert await http(_url(wecom, **tampered)) == (403, "forbidden")
    assert (await http(_url(wecom, timestamp="1")))[0] == 400


async def test_members_added_and_left_become_joins_and_leaves_once(wecom: Community, redis):
    c = wecom
    await c.group("a", wecom_chat_id=CHAT)
    m1 = await register_wecom(c, "13800000001", "wmExternal1")
    m2 = await register_wecom(c, "13800000002", "wmExternal2")
    query, body = sealed(event_xml("update", "add_member", ("wmExternal1", "wmExternal2",
                                                            "wmStranger")))
    assert await http(_url(c, **query), body) == (200, "success")
    assert await eventually(lambda: members_of(c, "a"),
                            lambda m: len(m) == 2) == sorted([m1, m2])
    pending = await c.service.use_cases.wecom.pending(CHAT)
    assert [(p["external_user_id"], p["reason"]) for p in pending] == [
        ("wmStranger", "UNKNOWN_MEMBER")]
    left_q, left_body = sealed(event_xml("update", "del_member", ("wmExternal1",), "v2",
                                         1_700_000_100), nonce="2")
    assert await http(_url(c, **left_q), left_body) == (200, "success")
    assert await eventually(lambda: members_of(c, "a"), lambda m: len(m) == 1) == [m2]
    # WeCom retries: the add (after the leave) and the leave again change nothing.
    assert await http(_url(c, **query), body) == (200, "success")
    assert await http(_url(c, **left_q), left_body) == (200, "success")
    assert await c.service.host.timer_loop.fire_due() == 0
    assert await members_of(c, "a") == [m2]
    events = await eventually(lambda: published(redis), lambda e: len(
        [n for n, _ in e if n in ("MemberJoinedGroup", "MemberLeftGroup")]) >= 3)
    moves = [(n, p.member_id) for n, p in events if n in ("MemberJoinedGroup",
                                                          "MemberLeftGroup")]
    assert sorted(moves) == sorted([("MemberJoinedGroup", m1), ("MemberJoinedGroup", m2),
                                    ("MemberLeftGroup", m1)])


async def test_a_dismissed_chat_archives_its_group_and_unknown_chats_pend(wecom: Community):
    c = wecom
    await c.group("a", wecom_chat_id=CHAT)
    query, body = sealed(event_xml("dismiss"))
    assert await http(_url(c, **query), body) == (200, "success")

    async def group() -> pb.Group:
        return await c.stub.GetGroup(pb.GetGroupRequest(group_id="a"), metadata=c.md())

    archived = await eventually(group, lambda g: g.state == pb.GROUP_STATE_ARCHIVED)
    assert archived.archive_reason == "dismissed"


async def test_tampered_callbacks_are_refused_and_change_nothing(wecom: Community):
    c = wecom
    await c.group("a", wecom_chat_id=CHAT)
    await register_wecom(c, "13800000003", "wmExternal3")
    query, body = sealed(event_xml("update", "add_member", ("wmExternal3",)))
    assert await http(_url(c, **{**query, "msg_signature": "f" * 40}), body) == (
        403, "forbidden")
    other = WeComCrypto(TOKEN, AES_KEY, "another-corp")
    encrypted, signature = other.encrypt(event_xml("update", "add_member", ("wmExternal3",)),
                                         query["timestamp"], query["nonce"])
    forged = f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    assert await http(_url(c, **{**query, "msg_signature": signature}), forged) == (
        403, "forbidden")
    assert (await http(_url(c, **query), b"not xml"))[0] == 400
    assert await c.service.host.timer_loop.fire_due() == 0
    assert await members_of(c, "a") == []
