"""WeCom's customer-group change callbacks (客户群事件), decrypted, as typed events.

WeCom posts `<xml><ToUserName/><Encrypt/><AgentID/></xml>`; the decrypted message is
an event with Event=change_external_chat and ChangeType create, update (with
UpdateDetail add_member or del_member and MemChangeList of the members' ids) or
dismiss. Other change types (owner, name, notice) are acknowledged and ignored.
No DTD or entities are accepted: callbacks come from outside."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum

MAX_CALLBACK_BYTES = 64 * 1024  # WeCom's events are a few hundred bytes


class CallbackError(ValueError):
    """A body that is not a WeCom callback we can read."""


class GroupChange(StrEnum):
    CREATED = "created"
    MEMBERS_ADDED = "members_added"
    MEMBERS_LEFT = "members_left"
    DISMISSED = "dismissed"
    OTHER = "other"  # owner, name or notice changed: nothing for Pond to do


@dataclass(frozen=True)
class GroupChangeEvent:
    chat_id: str
    change: GroupChange
    member_ids: tuple[str, ...]  # WeCom user ids / external user ids changed
    created_at: int  # CreateTime, seconds
    # WeCom's member-list version after the change: with the chat id it makes the
    # event's idempotency key (WeCom retries a callback that was not answered in 5 s).
    member_version: str
    join_scene: int = 0  # 1 invited directly, 2 by link, 3 by QR code
    quit_scene: int = 0  # 0 left by themselves, 1 removed by the owner

    @property
    def key(self) -> str:
        members = ",".join(sorted(self.member_ids))
        return f"{self.chat_id}:{self.change}:{self.member_version}:{self.created_at}:{members}"


def parse_xml(text: str) -> ET.Element:
    if len(text.encode()) > MAX_CALLBACK_BYTES:
        raise CallbackError("callback body too large")
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise CallbackError("DTDs and entities are not accepted")
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise CallbackError("callback body is not XML") from exc


def encrypted_field(body: str) -> str:
    """The Encrypt element of the posted envelope."""
    encrypted = parse_xml(body).findtext("Encrypt")
    if not encrypted:
        raise CallbackError("no Encrypt element")
    return encrypted.strip()


def _text(root: ET.Element, name: str) -> str:
    return (root.findtext(name) or "").strip()


def _int(root: ET.Element, name: str) -> int:
    value = _text(root, name)
    try:
        return int(value) if value else 0
    except ValueError as exc:
        raise CallbackError(f"{name} is not a number") from exc


def parse_group_change(message: str) -> GroupChangeEvent | None:
    """The event in a decrypted message, or None for events that are not about
    customer groups (WeCom sends every subscribed event to one URL)."""
    root = parse_xml(message)
    if _text(root, "Event") != "change_external_chat":
        return None
    chat_id = _text(root, "ChatId")
    if not chat_id:
        raise CallbackError("ChatId is missing")
    change_type, detail = _text(root, "ChangeType"), _text(root, "UpdateDetail")
    change = {
        ("create", ""): GroupChange.CREATED,
        ("dismiss", ""): GroupChange.DISMISSED,
        ("update", "add_member"): GroupChange.MEMBERS_ADDED,
        ("update", "del_member"): GroupChange.MEMBERS_LEFT,
    }.get((change_type, detail if change_type == "update" else ""), GroupChange.OTHER)
    members = tuple(
        (item.text or "").strip() for item in root.iterfind("MemChangeList/Item") if item.text
    )
    return GroupChangeEvent(
        chat_id=chat_id,
        change=change,
        member_ids=members,
        created_at=_int(root, "CreateTime"),
        member_version=_text(root, "CurMemVer"),
        join_scene=_int(root, "JoinScene"),
        quit_scene=_int(root, "QuitScene"),
    )
