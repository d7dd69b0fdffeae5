"""A customer's community journey through `make run`'s stack (`python -m stack` in its
own process), driven as the mini-program drives it (HTTP to the gateway) and as the
brand's staff drive it (gRPC to the community service): an operator prints a live
code, the customer signs in and scans it, checks in twice the same day, a guide opens
a chain in the customer's group, the customer joins it (the retry of a lost answer
takes the stock once) and withdraws."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc

from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from tests.e2e.test_dev_stack import DevStack, dev_stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_a_customer_scans_a_live_code_checks_in_and_orders_from_a_chain(
        dev_stack: DevStack):  # noqa: F811 (the imported fixture)
    secret = (dev_stack.data_dir / "secrets" / "auth.secret").read_text().strip()
    guide = call_metadata(mint_token(secret, "guide-7", Role.GUIDE))
    with grpc.insecure_channel(f"127.0.0.1:{dev_stack.community_port}") as channel:
        community = community_pb2_grpc.CommunityServiceStub(channel)
        # The brand's live code (a routing rule is the operators'), printed in the store.
        community.CreateRoutingRule(pb.CreateRoutingRuleRequest(
            rule_id="e2e-fruit", rule=pb.RoutingRule(name="Fruit club", template=pb.GroupTemplate(
                name_prefix="Fruit club", kind=pb.GROUP_KIND_STORE,
                qr_code_url="https://qr.example/e2e-fruit-{sequence}"))),
            metadata=dev_stack.md(), timeout=10)

        with httpx.Client(base_url=f"http://127.0.0.1:{dev_stack.gateway_port}",
                          timeout=10) as http:
            login = http.post("/v1/auth/wechat-login", json={"code": "dev-e2e-mei.1"})
            assert login.status_code == 200, login.text
            me = {"Authorization": f"Bearer {login.json()['access_token']}"}

            scanned = http.post("/v1/live-codes/e2e-fruit/join", headers=me)
            assert scanned.status_code == 200, scanned.text
            group = scanned.json()["group"]
            assert group["id"] == "e2e-fruit-1" and group["name"] == "Fruit club 1"
            assert scanned.json()["qr_code_url"] == "https://qr.example/e2e-fruit-1"
            assert [g["id"] for g in http.get("/v1/me/groups", headers=me).json()[
                "groups"]] == ["e2e-fruit-1"]

            first, second = (http.post("/v1/check-ins", headers=me) for _ in range(2))
            assert (first.status_code, second.status_code) == (201, 200), second.text
            assert second.json()["day"] == first.json()["day"]
            assert second.json()["already_checked_in"] is True
            streak = http.get("/v1/me/check-in-streak", headers=me).json()
            assert streak["streak"] == 1 and streak["checked_in_today"] is True

            # A guide opens a chain in the customer's group.
            deadline = timestamp_pb2.Timestamp()
            deadline.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
            community.OpenChain(pb.OpenChainRequest(
                chain_id="e2e-cherries", group_id=group["id"], product="Cherries 1kg",
                price_fen=3990, stock=10, per_member_limit=2, deadline=deadline),
                metadata=guide, timeout=10)
            chain = http.get("/v1/chains/e2e-cherries", headers=me).json()
            assert (chain["price_fen"], chain["stock_left"], chain["my_entry"]) == (3990, 10, None)

            key = {"Idempotency-Key": uuid.uuid4().hex}
            joined, retried = (http.post("/v1/chains/e2e-cherries/entries", headers=me | key,
                                         json={"quantity": 2}) for _ in range(2))
            assert joined.status_code == retried.status_code == 201, retried.text
            assert joined.json() == retried.json() and joined.json()["amount_fen"] == 7980
            assert http.get("/v1/chains/e2e-cherries", headers=me).json()["stock_left"] == 8

            withdrawn = http.delete("/v1/chains/e2e-cherries/entries/me", headers=me)
            assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"
            chain = http.get("/v1/chains/e2e-cherries", headers=me).json()
            assert chain["stock_left"] == 10 and chain["my_entry"] is None

            ready = http.get("/readyz").json()
            assert ready["checks"] == {"member": True, "redis": True, "community": True}
