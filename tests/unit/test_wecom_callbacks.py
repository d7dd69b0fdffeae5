"""WeCom's callback crypto against the sample values of WeCom's own documentation
and SDK samples, and the customer-group events parsed from decrypted messages."""

from __future__ import annotations

import pytest

from services.community.wecom.callbacks import (
    CallbackError,
    GroupChange,
    encrypted_field,
    parse_group_change,
)
from services.community.wecom.crypto import (
    BAD_AES_KEY,
    RECEIVER_MISMATCH,
    SIGNATURE_MISMATCH,
    WeComCrypto,
    WeComCryptoError,
)

# The values of WeCom's published samples (Sample.py / Sample.cs of WXBizMsgCrypt).
SAMPLE = WeComCrypto("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
VERIFY_URL = dict(
    msg_signature="5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    timestamp="1409659589",
    nonce="263014780",
    encrypted="P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
)
POSTED = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA["
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3Qczc"
    "dCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qL"
    "jvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUM"
    "nvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3"
    "k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Yo"
    "yyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
)


def test_url_verification_sample_decrypts_to_the_echo_string():
    assert SAMPLE.decrypt(**VERIFY_URL) == "1616140317555161061"


def test_posted_sample_decrypts_to_the_documented_message():
    message = SAMPLE.decrypt(
        "477715d11cdb4164915debcba66cb864d751f3e6",
        "1409659813",
        "1372623149",
        encrypted_field(POSTED),
    )
    assert "<Content><![CDATA[hello]]></Content>" in message
    assert "<AgentID>218</AgentID>" in message
    assert parse_group_change(message) is None  # a text message, not a group event


def test_a_wrong_signature_is_refused_before_decrypting():
    with pytest.raises(WeComCryptoError) as err:
        SAMPLE.decrypt(**{**VERIFY_URL, "msg_signature": "0" * 40})
    assert err.value.code == SIGNATURE_MISMATCH
    with pytest.raises(WeComCryptoError):
        SAMPLE.decrypt(**{**VERIFY_URL, "timestamp": "1409659590"})


def test_a_message_for_another_corp_is_refused():
    other = WeComCrypto(SAMPLE.token, SAMPLE.encoding_aes_key, "ww-other-corp")
    with pytest.raises(WeComCryptoError) as err:
        other.decrypt(**VERIFY_URL)
    assert err.value.code == RECEIVER_MISMATCH


@pytest.mark.parametrize("key", ["short", "!" * 43])
def test_bad_aes_keys_are_refused_at_start(key):
    with pytest.raises(WeComCryptoError) as err:
        WeComCrypto("t", key, "corp")
    assert err.value.code == BAD_AES_KEY


def test_encrypt_round_trips_and_matches_the_sdk_layout():
    encrypted, sig = SAMPLE.encrypt("你好 group", "1700000000", "n1", random16=b"a" * 16)
    assert SAMPLE.decrypt(sig, "1700000000", "n1", encrypted) == "你好 group"


def _event(change_type: str, detail: str = "", members: tuple[str, ...] = ()) -> str:
    items = "".join(f"<Item><![CDATA[{m}]]></Item>" for m in members)
    return (
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[sys]]>"
        "</FromUserName><CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]>"
        "</MsgType><Event><![CDATA[change_external_chat]]></Event>"
        "<ChatId><![CDATA[wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA]]></ChatId>"
        f"<ChangeType><![CDATA[{change_type}]]></ChangeType>"
        f"<UpdateDetail><![CDATA[{detail}]]></UpdateDetail><JoinScene>3</JoinScene>"
        f"<QuitScene>0</QuitScene><MemChangeCnt>{len(members)}</MemChangeCnt>"
        f"<MemChangeList>{items}</MemChangeList><CurMemVer>v2</CurMemVer></xml>"
    )


def test_group_events_are_parsed():
    added = parse_group_change(_event("update", "add_member", ("wmA", "wmB")))
    assert added is not None and added.change is GroupChange.MEMBERS_ADDED
    assert added.member_ids == ("wmA", "wmB") and added.join_scene == 3
    left = parse_group_change(_event("update", "del_member", ("wmA",)))
    assert left is not None and left.change is GroupChange.MEMBERS_LEFT
    assert left.key != added.key
    assert parse_group_change(_event("create")).change is GroupChange.CREATED  # type: ignore[union-attr]
    assert parse_group_change(_event("dismiss")).change is GroupChange.DISMISSED  # type: ignore[union-attr]
    assert parse_group_change(_event("update", "change_owner")).change is GroupChange.OTHER  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        "not xml",
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>',
        "<xml><Other/></xml>",
        "<xml><Encrypt>" + "A" * 70_000 + "</Encrypt></xml>",
    ],
)
def test_bad_envelopes_are_refused(body):
    with pytest.raises(CallbackError):
        encrypted_field(body)
