"""Sign-in with WeChat through the gateway (real uvicorn, real member service, real
Redis, the WeChat stand-in behind the real adapter), token rotation and sign-out,
and what the gateway refuses: tokens that are missing, expired, tampered, unsigned,
for another audience, signed with another algorithm or key, refresh tokens reused,
WeChat codes replayed."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.runtime.auth import Role, key_id_of, mint_token
from stack.wechat_standin import openid_for, unionid_for
from tests.conftest import TEST_SECRET, MemberHarness
from tests.gateway_harness import GATEWAY_TEST_SECRET, WECHAT_APP_ID, GatewayHarness, bearer


def assert_problem(reply, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["request_id"] == reply.headers["x-request-id"]
    return body


async def test_login_makes_a_member_once_and_signs_in_the_same_one_again(
    gateway: GatewayHarness, member: MemberHarness
):
    first = await gateway.login("alice")
    assert first["created"] is True and first["token_type"] == "Bearer"
    assert first["expires_in"] == 900
    again = await gateway.login("alice")
    assert again["created"] is False
    assert again["member_id"] == first["member_id"]
    assert again["refresh_token"] != first["refresh_token"]
    other = await gateway.login("bob")
    assert other["member_id"] != first["member_id"]
    # The member holds the WeChat identities (openid per app id, unionid), and nothing
    # from WeChat's session (session_key) ever reaches the client.
    from pond.member.v1 import member_pb2 as pb
    found = await member.stub.GetMember(pb.GetMemberRequest(member_id=first["member_id"]),
                                        metadata=member.md())
    kinds = {(i.kind, i.value, i.app_id) for i in found.identities}
    assert (pb.IDENTITY_KIND_WECHAT_OPENID, openid_for(WECHAT_APP_ID, "alice"),
            WECHAT_APP_ID) in kinds
    assert (pb.IDENTITY_KIND_WECHAT_UNIONID, unionid_for("alice"), "") in kinds
    assert "session_key" not in json.dumps(first)


async def test_access_token_claims(gateway: GatewayHarness):
    tokens = await gateway.login()
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "HS256" and header["kid"] == key_id_of(GATEWAY_TEST_SECRET)
    claims = jwt.decode(tokens["access_token"], GATEWAY_TEST_SECRET, algorithms=["HS256"],
                        audience="pond.gateway")
    assert claims["sub"] == tokens["member_id"] and claims["iss"] == "pond"
    assert 890 <= claims["exp"] - claims["iat"] <= 900


async def test_a_wechat_code_works_once(gateway: GatewayHarness):
    code = gateway.code("alice")
    assert (await gateway.http.post("/v1/auth/wechat-login", json={"code": code})).is_success
    replayed = await gateway.http.post("/v1/auth/wechat-login", json={"code": code})
    assert_problem(replayed, 400, "WECHAT_CODE_USED")


async def test_wechat_errors_are_clear_problems(gateway: GatewayHarness):
    cases = {"not-a-code": (400, "WECHAT_CODE_INVALID"), "err-40226": (403, "WECHAT_USER_RISKY"),
             "err-45011": (429, "WECHAT_RATE_LIMITED"), "err--1": (503, "WECHAT_BUSY"),
             "err-99999": (502, "WECHAT_ERROR")}
    for code, (status, problem) in cases.items():
        reply = await gateway.http.post("/v1/auth/wechat-login", json={"code": code})
        assert_problem(reply, status, problem)


async def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(
    gateway: GatewayHarness
):
    tokens = await gateway.login()
    rotated = await gateway.http.post("/v1/auth/refresh",
                                      json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["member_id"] == tokens["member_id"]
    assert second["refresh_token"] != tokens["refresh_token"]
    assert (await gateway.get("/v1/me", second["access_token"])).status_code == 200
    # The first refresh token again: someone else holds the family. All of it ends,
    # the access tokens issued with it included.
    reused = await gateway.http.post("/v1/auth/refresh",
                                     json={"refresh_token": tokens["refresh_token"]})
    assert_problem(reused, 401, "REFRESH_TOKEN_REUSED")
    latest = await gateway.http.post("/v1/auth/refresh",
                                     json={"refresh_token": second["refresh_token"]})
    assert_problem(latest, 401, "REFRESH_TOKEN_INVALID")
    assert_problem(await gateway.get("/v1/me", second["access_token"]), 401, "SESSION_REVOKED")
    # Another session of the same member (another phone) is not touched.
    other = await gateway.login()
    assert (await gateway.get("/v1/me", other["access_token"])).status_code == 200


async def test_logout_ends_the_session(gateway: GatewayHarness):
    tokens = await gateway.login()
    out = await gateway.http.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert out.status_code == 204
    assert_problem(await gateway.get("/v1/me", tokens["access_token"]), 401, "SESSION_REVOKED")
    refreshed = await gateway.http.post("/v1/auth/refresh",
                                        json={"refresh_token": tokens["refresh_token"]})
    assert_problem(refreshed, 401, "REFRESH_TOKEN_INVALID")


async def test_an_unknown_refresh_token_is_refused(gateway: GatewayHarness):
    for token in ("nonsense", "fam.nothing", "." * 10):
        reply = await gateway.http.post("/v1/auth/refresh", json={"refresh_token": token})
        assert_problem(reply, 401, "REFRESH_TOKEN_INVALID")


def _claims(member_id: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": "pond", "aud": "pond.gateway", "sub": member_id, "fam": "f",
              "typ": "access", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return claims


def _unsigned(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# The HS512 case signs with the (short for HS512) test secret on purpose.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_tokens_the_gateway_refuses(gateway: GatewayHarness):
    tokens = await gateway.login()
    member_id = tokens["member_id"]
    kid = {"kid": key_id_of(GATEWAY_TEST_SECRET)}
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header, payload, signature = tokens["access_token"].split(".")
    other_payload = base64.urlsafe_b64encode(json.dumps(
        dict(claims, sub="someone-else")).encode()).rstrip(b"=").decode()
    refused = {
        "no token": None,
        "not a JWT": "garbage",
        "expired": jwt.encode(_claims(member_id, iat=int(time.time()) - 3600,
                                      exp=int(time.time()) - 600),
                              GATEWAY_TEST_SECRET, algorithm="HS256", headers=kid),
        "tampered payload": f"{header}.{other_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": _unsigned(_claims(member_id)),
        "another audience": jwt.encode(_claims(member_id, aud="pond.member"),
                                       GATEWAY_TEST_SECRET, algorithm="HS256", headers=kid),
        "another issuer": jwt.encode(_claims(member_id, iss="elsewhere"),
                                     GATEWAY_TEST_SECRET, algorithm="HS256", headers=kid),
        "signed RS256": jwt.encode(_claims(member_id), rsa_key, algorithm="RS256", headers=kid),
        # Algorithm confusion: a public key used as an HMAC secret.
        "HS256 with a public key": jwt.encode(_claims(member_id), rsa_public_pem.decode()[:64],
                                              algorithm="HS256", headers=kid),
        "HS512 with the right secret": jwt.encode(_claims(member_id), GATEWAY_TEST_SECRET,
                                                  algorithm="HS512", headers=kid),
        # The services' secret (a service token): worth nothing here.
        "a service token": mint_token(TEST_SECRET, member_id, Role.GATEWAY),
        "signed with the services' secret": jwt.encode(
            _claims(member_id), TEST_SECRET, algorithm="HS256",
            headers={"kid": key_id_of(TEST_SECRET)}),
        "no expiry": jwt.encode({k: v for k, v in _claims(member_id).items() if k != "exp"},
                                GATEWAY_TEST_SECRET, algorithm="HS256", headers=kid),
        "a refresh token as bearer": tokens["refresh_token"],
    }
    for name, token in refused.items():
        headers = bearer(token) if token is not None else {}
        reply = await gateway.http.get("/v1/me", headers=headers)
        assert reply.status_code == 401, (name, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer"), name
        assert reply.json()["code"] in ("UNAUTHENTICATED", "TOKEN_EXPIRED"), name
    assert (await gateway.get("/v1/me", tokens["access_token"])).status_code == 200
