"""What `make run`, `stack.call` and `stack.token` agree on: the same environment
variables mean the same things to all three (POND_DATA_DIR, POND_HOST, the ports,
the auth secret), so a command copied from the banner reaches the stack it came from.

`make run` differs from production only in these defaults: embedded mode,
loopback-only listening (production keeps POND_HOST=0.0.0.0) and hourly scheduled
jobs."""

from __future__ import annotations

import os
from pathlib import Path

from services.community.settings import CommunitySettings
from services.member.settings import MemberSettings
from services.runtime.config import RuntimeSettings
from services.tagging.settings import TaggingSettings

STACK_DEFAULTS = {
    "POND_MODE": "embedded",
    "POND_HOST": "127.0.0.1",
    # Scheduled jobs hourly, on the hour, rather than nightly: a developer sees them run.
    "POND_JOBS_INTERVAL_SECONDS": "3600",
}
# What someone may have set for `make run` that a client in another terminal needs too.
CLIENT_ENV = ("POND_DATA_DIR", "POND_HOST", "POND_MEMBER_PORT", "POND_TAGGING_PORT",
              "POND_COMMUNITY_PORT", "POND_GATEWAY_PORT")
# The dev stack's WeChat: the stand-in (stack/wechat_standin.py) on this port, with
# this app id, unless POND_WECHAT_API_BASE names another WeChat.
WECHAT_STANDIN_PORT_ENV = "POND_WECHAT_STANDIN_PORT"
WECHAT_STANDIN_PORT = 8081
DEV_WECHAT_APP_ID = "wx0000000000000dev"
TOKEN_FILE = "dev-operator.token"
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def apply_stack_defaults() -> None:
    for name, value in STACK_DEFAULTS.items():
        os.environ.setdefault(name, value)


def data_dir() -> Path:
    return RuntimeSettings().data_dir


def token_path(folder: Path | None = None) -> Path:
    return (folder or data_dir()) / TOKEN_FILE


def client_host() -> str:
    """Where a client on this machine reaches the stack: its bind address, or
    loopback when it listens on every address."""
    host = os.environ.get("POND_HOST", STACK_DEFAULTS["POND_HOST"])
    return "127.0.0.1" if host in _ANY_ADDRESS else host


def member_target() -> tuple[str, str]:
    """(target, where it came from) for the member service."""
    if os.environ.get("POND_MEMBER_TARGET"):
        return os.environ["POND_MEMBER_TARGET"], "POND_MEMBER_TARGET"
    return f"{client_host()}:{MemberSettings().member_port}", "POND_HOST and POND_MEMBER_PORT"


def tagging_target() -> tuple[str, str]:
    if os.environ.get("POND_TAGGING_TARGET"):
        return os.environ["POND_TAGGING_TARGET"], "POND_TAGGING_TARGET"
    return f"{client_host()}:{TaggingSettings().tagging_port}", "POND_HOST and POND_TAGGING_PORT"


def community_target() -> tuple[str, str]:
    if os.environ.get("POND_COMMUNITY_TARGET"):
        return os.environ["POND_COMMUNITY_TARGET"], "POND_COMMUNITY_TARGET"
    port = CommunitySettings().community_port
    return f"{client_host()}:{port}", "POND_HOST and POND_COMMUNITY_PORT"
