"""The shared runtime: auth tokens and the authorizer, redaction and logging, field
encryption, page tokens, idempotency fingerprints and error statuses. No sockets."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from datetime import UTC, datetime

import grpc
import pytest
import structlog
from cryptography.exceptions import InvalidTag
from google.rpc import code_pb2, error_details_pb2
from pond.member.v1 import member_pb2 as pb

from services.runtime import auth, logs, paging
from services.runtime.auth import (
    ALL_ROLES,
    BACK_OFFICE,
    STAFF,
    Authorizer,
    Caller,
    Role,
    TokenVerifier,
    current_caller,
    ensure_acts_for,
    method_rules,
    mint_token,
)
from services.runtime.crypto import FieldCipher
from services.runtime.errors import (
    PondError,
    Violations,
    failed_precondition,
    invalid_argument,
    not_found,
)
from services.runtime.idempotency import IdempotencyRecord, fingerprint, replay
from services.runtime.logs import RpcLog, configure_logging, log_rpc, request_id_var
from services.runtime.redaction import mask_phone, redact_value, scrub_text
from services.runtime.status import grpc_code, to_status
from tests.conftest import eventually

SECRET = "unit-secret-" + "y" * 20
SERVICE = "pond.member.v1.MemberService"
AUDIENCE = "pond.member"


def _code(exc: pytest.ExceptionInfo[PondError]) -> grpc.StatusCode:
    return grpc_code(exc.value)


# -- tokens --

def _verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, audience=AUDIENCE)


def test_token_round_trip() -> None:
    caller = _verifier().verify(mint_token(SECRET, "ops-1", Role.OPERATOR))
    assert caller == Caller("ops-1", Role.OPERATOR)
    assert caller.sees_phone
    guide = _verifier().verify(mint_token(SECRET, "g-1", "guide"))
    assert guide.role is Role.GUIDE and not guide.sees_phone


def test_minting_needs_a_secret_and_a_known_role() -> None:
    with pytest.raises(ValueError):
        mint_token("", "x", Role.SERVICE)
    with pytest.raises(ValueError):
        mint_token(SECRET, "x", "root")


def test_expired_token() -> None:
    # Past the leeway that allows for clock skew.
    token = mint_token(SECRET, "ops-1", Role.OPERATOR, ttl_seconds=-auth.DEFAULT_LEEWAY_SECONDS - 5)
    with pytest.raises(PondError) as exc:
        _verifier().verify(token)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in exc.value.message


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = _verifier()
    token = mint_token(SECRET, "svc", Role.SERVICE, ttl_seconds=60)
    assert verifier.verify(token).subject == "svc"
    later = time.time() + 120
    monkeypatch.setattr(auth.time, "time", lambda: later)
    with pytest.raises(PondError) as exc:
        verifier.verify(token)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_tampered_claims_are_rejected() -> None:
    header, payload, signature = mint_token(SECRET, "g-1", Role.GUIDE).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "operator"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(PondError) as exc:
        _verifier().verify(forged)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def test_tampered_signature_is_rejected() -> None:
    header, payload, signature = mint_token(SECRET, "g-1", Role.GUIDE).split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    with pytest.raises(PondError) as exc:
        _verifier().verify(f"{header}.{payload}.{flipped}")
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def test_wrong_secret_is_rejected() -> None:
    token = mint_token("another-secret-" + "z" * 20, "ops-1", Role.OPERATOR)
    with pytest.raises(PondError) as exc:
        _verifier().verify(token)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a.b.c", "...", "x.y.!!!"])
def test_malformed_tokens_are_unauthenticated(token: str) -> None:
    with pytest.raises(PondError) as exc:
        _verifier().verify(token)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def test_auth_settings_read_previous_keys_and_refuse_other_algorithms(tmp_path) -> None:
    from services.runtime.config import RuntimeSettings

    previous = tmp_path / "previous-keys"
    previous.write_text("# rotated 2026-11\nk1:old-secret\n\nbare-secret\n")
    config = RuntimeSettings(auth_secret="new-secret", auth_key_id="k2",
                             auth_previous_keys_file=str(previous)).auth_config()
    assert [k.key_id for k in config.keys()] == ["k2", "k1", auth.key_id_of("bare-secret")]
    assert config.keys()[1].secret == "old-secret" and "old-secret" not in repr(config)
    for algorithms in ("none", "HS256,RS256", ""):
        with pytest.raises(ValueError):
            RuntimeSettings(auth_secret="s", auth_algorithms=algorithms).auth_config()
    with pytest.raises(ValueError):  # two keys under one id
        RuntimeSettings(auth_secret="s", auth_key_id="k1",
                        auth_previous_keys="k1:other").auth_config()


# -- the authorizer --

RULES = method_rules(SERVICE, {"GetMember": STAFF, "AdjustPoints": BACK_OFFICE,
                               "RedeemPoints": frozenset({Role.GATEWAY, Role.SERVICE})})


def authorizer() -> Authorizer:
    return Authorizer(_verifier(), RULES)


def bearer(role: Role, subject: str = "tester") -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(SECRET, subject, role)}"}


def test_method_rules_use_full_method_names() -> None:
    assert set(RULES) == {f"/{SERVICE}/GetMember", f"/{SERVICE}/AdjustPoints",
                          f"/{SERVICE}/RedeemPoints"}


def test_allowed_role_passes() -> None:
    caller = authorizer().authorize(f"/{SERVICE}/GetMember", bearer(Role.GUIDE, "g-7"))
    assert caller == Caller("g-7", Role.GUIDE)


@pytest.mark.parametrize("metadata", [{}, {"authorization": "Basic dXNlcjpwdw=="},
                                      {"authorization": "bearer-less"}])
def test_missing_token_is_unauthenticated(metadata: dict[str, str]) -> None:
    with pytest.raises(PondError) as exc:
        authorizer().authorize(f"/{SERVICE}/GetMember", metadata)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def test_wrong_role_is_denied() -> None:
    with pytest.raises(PondError) as exc:
        authorizer().authorize(f"/{SERVICE}/AdjustPoints", bearer(Role.GUIDE))
    assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert "AdjustPoints" in exc.value.message


def test_unknown_method_is_denied_even_to_operators() -> None:
    with pytest.raises(PondError) as exc:
        authorizer().authorize(f"/{SERVICE}/DropEverything", bearer(Role.OPERATOR))
    assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED


def test_health_is_public() -> None:
    assert authorizer().authorize("/grpc.health.v1.Health/Check", {}) is None
    assert authorizer().authorize("/grpc.reflection.v1.ServerReflection/Info", {}) is None


def test_public_prefix_is_exact() -> None:
    with pytest.raises(PondError) as exc:
        authorizer().authorize("/grpc.health.v1.HealthX/Check", {})
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED


def test_gateway_carries_the_member_it_verified() -> None:
    md = {**bearer(Role.GATEWAY, "gw"), auth.MEMBER_ID_METADATA: "m-42"}
    caller = authorizer().authorize(f"/{SERVICE}/RedeemPoints", md)
    assert caller == Caller("gw", Role.GATEWAY, "m-42")
    # Only the gateway's member id travels: other roles ignore the header.
    md = {**bearer(Role.SERVICE, "svc"), auth.MEMBER_ID_METADATA: "m-42"}
    assert authorizer().authorize(f"/{SERVICE}/RedeemPoints", md).member_id == ""


def test_gateway_without_a_member_is_refused_unless_signing_in() -> None:
    sign_in = f"/{SERVICE}/GetMember"
    authz = Authorizer(_verifier(), RULES | method_rules(SERVICE, {
        "GetMember": frozenset({Role.GATEWAY})}), frozenset({sign_in}))
    with pytest.raises(PondError) as exc:
        authz.authorize(f"/{SERVICE}/RedeemPoints", bearer(Role.GATEWAY, "gw"))
    assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert authz.authorize(sign_in, bearer(Role.GATEWAY, "gw")) == Caller("gw", Role.GATEWAY)
    # Other roles never need one.
    assert authz.authorize(f"/{SERVICE}/RedeemPoints", bearer(Role.SERVICE)).member_id == ""


def test_sign_in_methods_must_be_open_to_the_gateway() -> None:
    from services.runtime.server import ServiceRegistration

    descriptor = pb.DESCRIPTOR.services_by_name["MemberService"]
    rules = {m.name: STAFF for m in descriptor.methods} | {"GetMember": ALL_ROLES}
    ok = ServiceRegistration(descriptor, lambda s: None, rules, frozenset({"GetMember"}))
    assert ok.full_before_sign_in() == {f"/{descriptor.full_name}/GetMember"}
    wrong = ServiceRegistration(descriptor, lambda s: None, rules, frozenset({"ListMembers"}))
    with pytest.raises(RuntimeError, match="ListMembers"):
        wrong.full_before_sign_in()


def test_gateway_without_a_member_acts_for_nobody() -> None:
    reset = current_caller.set(Caller("gw", Role.GATEWAY, ""))
    try:
        for member_id in ("", "m-1"):
            with pytest.raises(PondError) as exc:
                ensure_acts_for(member_id)
            assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED
    finally:
        current_caller.reset(reset)
    reset = current_caller.set(Caller("gw", Role.GATEWAY, "m-1"))
    try:
        with pytest.raises(PondError):
            ensure_acts_for("")  # "" means every member to list methods
    finally:
        current_caller.reset(reset)


def test_gateway_acts_only_for_its_member() -> None:
    reset = current_caller.set(Caller("gw", Role.GATEWAY, "m-1"))
    try:
        ensure_acts_for("m-1")
        with pytest.raises(PondError) as exc:
            ensure_acts_for("m-2")
        assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED
    finally:
        current_caller.reset(reset)
    reset = current_caller.set(Caller("ops", Role.OPERATOR))
    try:
        ensure_acts_for("m-2")
    finally:
        current_caller.reset(reset)


# -- redaction and logs --

def test_mask_phone() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+8613812345678") == "138****5678"
    assert mask_phone("123") == "****"


def test_scrub_text() -> None:
    assert scrub_text("call 13812345678 now") == "call 138****5678 now"
    assert scrub_text("tel:+8613912345678.") == "tel:139****5678."
    assert scrub_text("a 13812345678 and 15912345678") == "a 138****5678 and 159****5678"
    # Longer digit runs are ids, not phones.
    assert scrub_text("order 2026013812345678") == "order 2026013812345678"
    assert scrub_text("no numbers") == "no numbers"
    # However it is split, and after whatever country code.
    for written in ("184.9125.9190", "184_9125_9190", "184:9125:9190", "184 9125/9190",
                    "918491259190", "0086 184 9125 9190", "1-8-4-9-1-2-5-9-1-9-0"):
        assert scrub_text(f"call {written} now") == "call 184****9190 now", written
    assert scrub_text("(184) 9125 9190") == "(184****9190"
    # Dates and times are not phones.
    assert scrub_text("at 2026-11-30 10:11:08") == "at 2026-11-30 10:11:08"


@pytest.mark.parametrize("key", ["token", "auth_token", "client_secret", "Authorization",
                                 "password", "phone_key", "REFRESH_TOKEN"])
def test_redact_value_hides_secrets(key: str) -> None:
    assert redact_value(key, "abc") == "[redacted]"
    assert redact_value(key, 12345) == "[redacted]"


def test_redact_value_masks_phones_and_keeps_the_rest() -> None:
    assert redact_value("phone", "13812345678") == "138****5678"
    assert redact_value("member_phone", "13812345678") == "138****5678"
    assert redact_value("note", "call 13812345678") == "call 138****5678"
    assert redact_value("count", 5) == 5
    assert redact_value("member_id", "m-1") == "m-1"


@pytest.fixture
def restore_logging():
    saved = structlog.get_config()
    saved_rpc = logs._rpc_log_batch, logs._rpc_log
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    # configure_logging pointed the RPC lines at this test's captured stdout.
    logs._rpc_log_batch, logs._rpc_log = saved_rpc


def test_log_lines_never_show_phones_or_secrets(capsys, restore_logging) -> None:
    configure_logging("info", "json")
    structlog.get_logger("pond.test").info("call 13812345678", phone="13812345678",
                                           token="abc", member_id="m-1")
    out = capsys.readouterr().out
    assert out.strip(), "nothing was logged"
    assert "13812345678" not in out
    assert "abc" not in out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["event"] == "call 138****5678"
    assert line["phone"] == "138****5678"
    assert line["token"] == "[redacted]"
    assert line["member_id"] == "m-1"
    assert line["level"] == "info"


def test_log_level_filters(capsys, restore_logging) -> None:
    configure_logging("warning", "json")
    log = structlog.get_logger("pond.test")
    log.info("quiet")
    log.warning("loud")
    out = capsys.readouterr().out
    assert "loud" in out and "quiet" not in out


def test_redact_value_masks_phone_numbers_held_as_numbers() -> None:
    assert redact_value("phone", 13812345678) == "138****5678"
    assert redact_value("contact", 13812345678) == "138****5678"
    assert redact_value("count", 1381234) == 1381234
    assert redact_value("ratio", 0.5) == 0.5 and redact_value("ok", True) is True


def test_log_timestamps_match_structlogs_iso_format(capsys, restore_logging) -> None:
    configure_logging("info", "json")
    structlog.get_logger("pond.test").info("tick")
    stamp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - time.time()) < 5


def test_rpc_lines_are_json_with_the_call_fields(capsys, restore_logging) -> None:
    configure_logging("info", "json")
    token = request_id_var.set("req-1")
    try:
        log_rpc("/pond.member.v1.MemberService/GetMember", "NOT_FOUND", 0.00042)
    finally:
        request_id_var.reset(token)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == {"method": "/pond.member.v1.MemberService/GetMember", "code": "NOT_FOUND",
                    "ms": 0.42, "event": "rpc", "request_id": "req-1", "level": "info",
                    "timestamp": line["timestamp"]}


def test_rpc_lines_are_written_in_batches_from_the_event_loop() -> None:
    stream = io.BytesIO()
    rpc_log = RpcLog(stream, flush_seconds=0.05)

    async def serve() -> tuple[bytes, bytes]:
        for i in range(3):
            rpc_log.add("/s/M", "OK", i / 1000)
        held = stream.getvalue()  # nothing written while the calls are served

        async def written() -> bytes:
            return stream.getvalue()

        return held, await eventually(written, lambda out: out.count(b"\n") == 3, timeout=5)

    held, written = asyncio.run(serve())
    assert held == b""
    lines = [json.loads(x) for x in written.splitlines()]
    assert [x["ms"] for x in lines] == [0.0, 1.0, 2.0]
    # Outside an event loop (start-up, scripts) a line is written at once.
    rpc_log.add("/s/M", "OK", 0.009)
    assert json.loads(stream.getvalue().splitlines()[-1])["ms"] == 9.0


def test_rpc_lines_follow_the_log_level_and_format(capsys, restore_logging) -> None:
    configure_logging("warning", "json")
    log_rpc("/s/M", "OK", 0.001)
    assert capsys.readouterr().out == ""
    configure_logging("info", "console")
    log_rpc("/s/M", "OK", 0.001)
    out = capsys.readouterr().out
    assert "rpc" in out and "/s/M" in out and not out.startswith("{")


# -- field encryption --

KEY = b"k" * 32


def test_cipher_round_trip() -> None:
    cipher = FieldCipher(KEY)
    for text in ("13812345678", "张三", ""):
        assert cipher.decrypt(cipher.encrypt(text)) == text
    assert FieldCipher.from_b64(base64.b64encode(KEY).decode()).decrypt(
        cipher.encrypt("13812345678")) == "13812345678"


def test_nonce_makes_ciphertexts_differ() -> None:
    cipher = FieldCipher(KEY)
    a, b = cipher.encrypt("13812345678"), cipher.encrypt("13812345678")
    assert a != b
    assert "13812345678" not in a
    assert cipher.decrypt(a) == cipher.decrypt(b)


def test_ciphertext_needs_the_key() -> None:
    token = FieldCipher(KEY).encrypt("13812345678")
    with pytest.raises(InvalidTag):
        FieldCipher(b"j" * 32).decrypt(token)
    raw = bytearray(base64.b64decode(token))
    raw[-1] ^= 1
    with pytest.raises(InvalidTag):
        FieldCipher(KEY).decrypt(base64.b64encode(bytes(raw)).decode())


def test_lookup_hash_is_stable_and_keyed() -> None:
    h = FieldCipher(KEY).lookup_hash("13812345678")
    assert h == FieldCipher(KEY).lookup_hash("13812345678")
    assert h != FieldCipher(b"j" * 32).lookup_hash("13812345678")
    assert h != FieldCipher(KEY).lookup_hash("13812345679")
    assert len(h) == 64 and "13812345678" not in h


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError):
        FieldCipher(b"k" * size)


# -- paging --

SHAPE = {"b": str, "s": int}
PAGE_KEY = b"unit-page-key-" + b"p" * 18


@pytest.fixture
def page_key():
    reset = paging.page_key.set(PAGE_KEY)
    yield PAGE_KEY
    paging.page_key.reset(reset)


def _listing(token: str = "", member_id: str = "m1") -> pb.ListPointsEntriesRequest:
    return pb.ListPointsEntriesRequest(member_id=member_id, page_size=2, page_token=token)


def _signed(body: object, request: pb.ListPointsEntriesRequest | None = None) -> str:
    """A token signed with the page key whose content is `body` (as issued, bound
    to `request`, when body is a cursor dict)."""
    page = paging.begin(request or _listing(), Violations(), SHAPE)
    if isinstance(body, dict):
        return page._token(body)
    payload = json.dumps(body).encode()
    return f"{paging._b64(payload)}.{paging._b64(paging._tag(PAGE_KEY, payload))}"


def test_page_token_round_trip(page_key) -> None:
    cursor = {"b": "p0193abc", "s": 42}
    v = Violations()
    first = paging.begin(_listing(), v, SHAPE)
    assert first.cursor is None and first.size == 2 and first.fetch == 3
    items, token = first.finish(["x", "y", "z"], lambda item: cursor)
    assert items == ["x", "y"] and token
    assert paging.begin(_listing(token), v, SHAPE).cursor == cursor
    # Another page size is the same request (AIP-158).
    other_size = _listing(token)
    other_size.page_size = 7
    assert paging.begin(other_size, v, SHAPE).get("s", 0) == 42
    assert v.items == []
    assert first.finish(["x", "y"], lambda item: cursor) == (["x", "y"], "")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize("token", [
    "!!!not-base64!!!", "abc", _b64(b"not json"), _b64(b"[1, 2]"), _b64(b"\xff\xfe"),
    # unsigned JSON: what page tokens were before they were signed
    _b64(b'{"b": "x", "s": 1}'), "a.b", "a.b.c", "." * 5, "x" * 2000,
])
def test_garbage_page_token_is_a_violation(page_key, token: str) -> None:
    v = Violations()
    assert paging.begin(_listing(token), v, SHAPE).cursor is None
    assert v.items == [("page_token", "is not a token this service issued")]


@pytest.mark.parametrize("body", [
    # signed, but not the shape this caller's tokens have
    {"b": "x"}, {"b": "x", "s": "1"}, {"b": ["x"], "s": 1}, {"b": "x", "s": True},
    {"b": "x", "s": 99999999999999999999}, {"b": "x", "s": 1, "t": 2},
    [1, 2], {"c": {"b": "x", "s": 1}}, "text",
])
def test_signed_token_of_another_shape_is_a_violation(page_key, body: object) -> None:
    v = Violations()
    assert paging.begin(_listing(_signed(body)), v, SHAPE).cursor is None
    assert [f for f, _ in v.items] == ["page_token"]


def test_page_token_is_bound_to_the_filter_method_and_key(page_key) -> None:
    token = _signed({"b": "x", "s": 1})
    v = Violations()
    paging.begin(_listing(token, member_id="m2"), v, SHAPE)
    assert v.items and "another request" in v.items[0][1]
    v = Violations()
    other_method = pb.ListStoredValueEntriesRequest(member_id="m1", page_token=token)
    paging.begin(other_method, v, SHAPE)
    assert [f for f, _ in v.items] == ["page_token"]
    reset = paging.page_key.set(b"another deployment's page key")
    try:
        v = Violations()
        paging.begin(_listing(token), v, SHAPE)
        assert v.items == [("page_token", "is not a token this service issued")]
    finally:
        paging.page_key.reset(reset)


@pytest.mark.parametrize(("requested", "size", "bad"), [
    (0, paging.DEFAULT_PAGE_SIZE, False), (10, 10, False),
    (paging.MAX_PAGE_SIZE, paging.MAX_PAGE_SIZE, False),
    (paging.MAX_PAGE_SIZE + 1, paging.DEFAULT_PAGE_SIZE, True),
    (-1, paging.DEFAULT_PAGE_SIZE, True),
])
def test_page_size(requested: int, size: int, bad: bool) -> None:
    v = Violations()
    assert paging.page_size(requested, v) == size
    assert bool(v.items) is bad


# -- idempotency --

def test_fingerprint_is_stable() -> None:
    a = pb.RedeemPointsRequest(member_id="m1", points=50, reason="gift", idempotency_key="k1")
    b = pb.RedeemPointsRequest()
    b.idempotency_key, b.reason, b.points, b.member_id = "k1", "gift", 50, "m1"
    assert fingerprint(a) == fingerprint(b) == fingerprint(a)
    assert len(fingerprint(a)) == 64


@pytest.mark.parametrize("change", [
    {"member_id": "m2"}, {"points": 51}, {"reason": "gift!"}, {"idempotency_key": "k2"},
])
def test_fingerprint_sees_every_field(change: dict) -> None:
    base = dict(member_id="m1", points=50, reason="gift", idempotency_key="k1")
    assert fingerprint(pb.RedeemPointsRequest(**base)) != fingerprint(
        pb.RedeemPointsRequest(**{**base, **change}))


def test_replay_returns_the_first_response_or_rejects_the_key() -> None:
    request = pb.RedeemPointsRequest(member_id="m1", points=50, idempotency_key="k1")
    response = pb.PointsEntry(id="p1", delta=-50)
    record = IdempotencyRecord("RedeemPoints", "k1", fingerprint(request),
                               response.SerializeToString(), expires_at=0)
    assert replay(record, fingerprint(request), pb.PointsEntry) == response
    other = pb.RedeemPointsRequest(member_id="m1", points=60, idempotency_key="k1")
    with pytest.raises(PondError) as exc:
        replay(record, fingerprint(other), pb.PointsEntry, domain="pond.member")
    assert _code(exc) is grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert exc.value.domain == "pond.member"
    assert exc.value.metadata == {"key": "k1"}


# -- errors --

def _details(err: PondError) -> tuple[int, error_details_pb2.ErrorInfo,
                                       error_details_pb2.BadRequest | None]:
    status = to_status(err)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    bad = None
    if len(status.details) > 1:
        bad = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad)
    assert len(status.details) <= 2
    assert status.message == err.message
    return status.code, info, bad


def test_invalid_argument_status_carries_error_info_and_bad_request() -> None:
    err = invalid_argument([("member_id", "is required"), ("points", "must be positive")],
                           domain="pond.member")
    code, info, bad = _details(err)
    assert code == code_pb2.INVALID_ARGUMENT
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "pond.member")
    assert bad is not None
    assert [(f.field, f.description) for f in bad.field_violations] == [
        ("member_id", "is required"), ("points", "must be positive")]
    assert "member_id: is required" in err.message


def test_failed_precondition_status_carries_metadata() -> None:
    err = failed_precondition("INSUFFICIENT_POINTS", "not enough", domain="pond.member",
                              available="5", needed="10")
    code, info, bad = _details(err)
    assert code == code_pb2.FAILED_PRECONDITION
    assert info.reason == "INSUFFICIENT_POINTS"
    assert dict(info.metadata) == {"available": "5", "needed": "10"}
    assert bad is None


def test_not_found_status() -> None:
    code, info, _ = _details(not_found("member", "m-9", domain="pond.member"))
    assert code == code_pb2.NOT_FOUND
    assert info.reason == "MEMBER_NOT_FOUND"
    assert dict(info.metadata) == {"id": "m-9"}


def test_violations_raise_only_when_there_are_any() -> None:
    v = Violations("pond.member")
    v.raise_if_any()
    assert v.check(True, "a", "fine")
    assert not v.check(False, "b", "bad")
    with pytest.raises(PondError) as exc:
        v.raise_if_any()
    assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.violations == [("b", "bad")]
    assert exc.value.domain == "pond.member"


# -- the interceptor --


def test_handlers_are_wrapped_once_and_unchecked_streams_refused() -> None:
    from services.runtime.interceptors import ServiceInterceptor

    interceptor = ServiceInterceptor(Authorizer(_verifier(), {}))

    async def unary(request, context):  # pragma: no cover - never called here
        return request

    handler = grpc.unary_unary_rpc_method_handler(unary)
    wrapped = interceptor.wrap("/pond.x.v1.X/Get", handler)
    assert wrapped is not handler and wrapped.unary_unary is not unary
    assert interceptor.wrap("/pond.x.v1.X/Get", handler) is wrapped
    assert interceptor.wrap("/pond.x.v1.X/Get", None) is None
    # Client streaming is only served for public methods (reflection); anything else
    # would go through without auth, so it is refused.
    stream = grpc.stream_stream_rpc_method_handler(unary)
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert interceptor.wrap(reflection, stream) is stream
    with pytest.raises(RuntimeError, match="streaming requests"):
        interceptor.wrap("/pond.x.v1.X/Upload", grpc.stream_unary_rpc_method_handler(unary))


def test_rpc_line_durations_are_milliseconds_to_the_microsecond() -> None:
    from services.runtime.logs import _ms

    assert [_ms(s) for s in (0.0, 0.00042, 0.0123456, 1.5, 0.0000004, 0.0000006)] == [
        "0.000", "0.420", "12.346", "1500.000", "0.000", "0.001"]


def test_generated_handler_tables_are_wrapped_once_and_other_handlers_per_lookup() -> None:
    from services.runtime.interceptors import ServiceInterceptor, _InterceptedGenericHandler

    async def behavior(request, context):
        return request

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    verifier = TokenVerifier("s" * 40, audience="svc")
    interceptor = ServiceInterceptor(Authorizer(verifier, {"/svc/M": frozenset({Role.SERVICE})}))

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    # The generated code's table: wrapped at registration, one lookup per call.
    table = _InterceptedGenericHandler(
        grpc.method_handlers_generic_handler("svc", {"M": handler}), interceptor)
    wrapped = table.service(Details("/svc/M"))
    assert wrapped is not None and wrapped.unary_unary is not behavior
    assert wrapped.request_deserializer is None  # raw bytes: decoded after the auth check
    assert table.service(Details("/svc/M")) is wrapped
    assert table.service(Details("/svc/Other")) is None

    # Any other generic handler is asked on every call, its answers wrapped.
    class Custom(grpc.GenericRpcHandler):
        def service(self, details):
            return handler if details.method == "/svc/M" else None

    custom = _InterceptedGenericHandler(Custom(), interceptor)
    first = custom.service(Details("/svc/M"))
    assert first is not None and first.unary_unary is not behavior
    assert custom.service(Details("/svc/M")) is first
    assert custom.service(Details("/svc/Other")) is None


def test_the_handler_reads_the_metadata_grpc_converted_for_the_lookup() -> None:
    import contextvars

    from services.runtime.interceptors import ServiceInterceptor, _InterceptedGenericHandler

    async def behavior(request, context):
        return current_caller.get()

    secret = "s" * 40
    verifier = TokenVerifier(secret, audience="svc")
    interceptor = ServiceInterceptor(Authorizer(verifier, {"/svc/M": frozenset({Role.SERVICE})}))
    table = _InterceptedGenericHandler(grpc.method_handlers_generic_handler(
        "svc", {"M": grpc.unary_unary_rpc_method_handler(behavior)}), interceptor)
    token = mint_token(secret, "job", Role.SERVICE, audience="svc")
    metadata = (("authorization", f"Bearer {token}"),)

    class Details:
        method, invocation_metadata = "/svc/M", metadata

    class Context:
        def __init__(self, offered: tuple) -> None:
            self.offered, self.asked = offered, 0

        def invocation_metadata(self) -> tuple:
            self.asked += 1
            return self.offered

        def set_trailing_metadata(self, metadata) -> None:
            pass

    async def call(context: Context, looked_up: bool):
        handler = table.service(Details) if looked_up else table._table["/svc/M"]
        return await handler.unary_unary(b"", context)

    # Through grpc's lookup (grpc.aio runs the lookup and the handler in the call's
    # own task): the lookup's metadata, the context is not asked.
    context = Context(())
    caller = contextvars.Context().run(asyncio.run, call(context, True))
    assert caller.subject == "job" and context.asked == 0
    # A handler reached without the lookup asks the context.
    context = Context(metadata)
    caller = contextvars.Context().run(asyncio.run, call(context, False))
    assert caller.subject == "job" and context.asked == 1


def test_an_envelope_holds_what_any_pack_and_a_timestamp_would() -> None:
    from google.protobuf import any_pb2
    from pond.events.v1 import member_events_pb2 as mev

    from services.runtime.envelopes import make_event

    payload = mev.MembersMerged(surviving_id="m-new", merged_id="m-old", cause="phone")
    at = datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC)
    event = make_event("member", "m-new", payload, at, "req-1")
    packed = any_pb2.Any()
    packed.Pack(payload)
    assert event.payload == packed and event.type == "pond.events.v1.MembersMerged"
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == at
    assert (event.producer, event.subject_id, event.request_id) == ("member", "m-new", "req-1")
    unpacked = mev.MembersMerged()
    assert event.payload.Unpack(unpacked) and unpacked == payload


def test_a_serving_process_freezes_its_start_up_heap_and_collects_less_often() -> None:
    import gc

    from services.runtime.server import GC_THRESHOLDS, tune_heap_for_serving

    before = gc.get_threshold()
    try:
        tune_heap_for_serving()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
