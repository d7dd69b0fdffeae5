"""Page tokens over a real member service: signed, bound to the request they continue
(AIP-158), and paging through a list yields every item exactly once."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from pond.member.v1 import member_pb2 as pb

from services.runtime.errors import error_details
from tests.conftest import MemberHarness


async def register(h: MemberHarness, n: int, store_id: str) -> str:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=f"138{n:08d}")],
        store_id=store_id), metadata=h.md())
    return resp.member.id


async def refused_token(call) -> str:
    """The page_token violation a refused call carries."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    _, violations = error_details(info.value)
    assert [f for f, _ in violations] == ["page_token"]
    return violations[0][1]


async def test_paging_yields_every_member_exactly_once(member: MemberHarness):
    ids = {await register(member, i, "s1") for i in range(7)}
    await register(member, 100, "s2")
    seen, token, pages = [], "", 0
    while True:
        page = await member.stub.ListMembers(
            pb.ListMembersRequest(store_id="s1", page_size=2, page_token=token),
            metadata=member.md())
        seen += [m.id for m in page.members]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and pages == 4


async def test_a_page_token_is_refused_with_another_filter(member: MemberHarness):
    for i in range(3):
        await register(member, i, "s1")
    first = await member.stub.ListMembers(pb.ListMembersRequest(store_id="s1", page_size=1),
                                          metadata=member.md())
    token = first.next_page_token
    assert token
    problem = await refused_token(member.stub.ListMembers(
        pb.ListMembersRequest(store_id="s2", page_size=1, page_token=token),
        metadata=member.md()))
    assert "another request" in problem
    # The page size may change between pages (AIP-158).
    rest = await member.stub.ListMembers(
        pb.ListMembersRequest(store_id="s1", page_size=5, page_token=token), metadata=member.md())
    assert len(rest.members) == 2 and not rest.next_page_token


async def test_a_member_history_token_is_bound_to_its_member_and_method(member: MemberHarness):
    a, b = await register(member, 1, "s1"), await register(member, 2, "s1")
    for i in range(3):
        await member.stub.AdjustPoints(pb.AdjustPointsRequest(
            member_id=a, delta=10 + i, reason="goodwill", idempotency_key=f"adj-{i}"),
            metadata=member.md())
    page = await member.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(member_id=a, page_size=1), metadata=member.md())
    token = page.next_page_token
    assert token
    await refused_token(member.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(member_id=b, page_size=1, page_token=token),
        metadata=member.md()))
    # Same cursor shape, same member, another List method.
    await refused_token(member.stub.ListStoredValueEntries(
        pb.ListStoredValueEntriesRequest(member_id=a, page_size=1, page_token=token),
        metadata=member.md()))


def _tampered(token: str) -> list[str]:
    """Ways to change a token: its cursor rewritten (keeping the signature), a
    character of the signature changed, the signature dropped."""
    payload_b64, tag = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    body["c"] = {"a": ""}  # back to the start
    rewritten = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    flipped = tag[:-1] + ("A" if tag[-1] != "A" else "B")
    return [f"{rewritten}.{tag}", f"{payload_b64}.{flipped}", payload_b64, payload_b64 + "."]


async def test_a_tampered_page_token_is_refused(member: MemberHarness):
    for i in range(3):
        await register(member, i, "s1")
    first = await member.stub.ListMembers(pb.ListMembersRequest(page_size=1),
                                          metadata=member.md())
    for token in _tampered(first.next_page_token):
        problem = await refused_token(member.stub.ListMembers(
            pb.ListMembersRequest(page_size=1, page_token=token), metadata=member.md()))
        assert problem == "is not a token this service issued"
