"""`make run`: the whole stack in one process on embedded defaults.

SQLite files and a private Valkey server under ./.pond (POND_DATA_DIR), every
service on its own port, scheduled jobs (points expiry, tier re-evaluation, paid
membership lapse), a dev operator token printed for copy-paste calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from services.member.server import start_member_service
from services.member.settings import MemberSettings
from services.runtime.auth import Role, mint_token
from services.runtime.logs import configure_logging, get_logger
from services.runtime.redis_conn import EmbeddedValkey
from services.runtime.server import freeze_startup_heap, wait_for_termination_signal
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from stack.jobs import run_schedule
from stack.secrets import dev_secret

log = get_logger("pond.stack")


async def main() -> int:
    data_dir = Path(os.environ.get("POND_DATA_DIR", ".pond"))
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("POND_MODE", "embedded")
    os.environ.setdefault("POND_AUTH_SECRET", dev_secret(data_dir, "auth.secret"))
    os.environ.setdefault("POND_PHONE_KEY", dev_secret(data_dir, "phone.key"))
    valkey = None
    if not os.environ.get("REDIS_URL"):
        valkey = EmbeddedValkey(data_dir / "valkey", int(os.environ.get("POND_VALKEY_PORT", "0")))
        valkey.start()
        os.environ["REDIS_URL"] = valkey.url
    settings = MemberSettings()
    configure_logging(settings.log_level, settings.log_format)
    member = await start_member_service(settings)
    tagging_settings = TaggingSettings()
    tagging = await start_tagging_service(tagging_settings)
    freeze_startup_heap()
    token = mint_token(settings.auth_config(), "dev-operator", Role.OPERATOR, ttl_seconds=7 * 86400)
    (data_dir / "dev-operator.token").write_text(token)
    stop = asyncio.Event()
    jobs = asyncio.create_task(run_schedule(member.app, tagging.runner, stop))
    _banner(settings, tagging_settings, member.port, tagging.port, token)
    try:
        await wait_for_termination_signal()
    finally:
        stop.set()
        jobs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await jobs
        await tagging.stop(settings.shutdown_grace)
        await member.stop(settings.shutdown_grace)
        if valkey:
            valkey.stop()
    return 0


def _banner(
    settings: MemberSettings,
    tagging_settings: TaggingSettings,
    member_port: int,
    tagging_port: int,
    token: str,
) -> None:
    print(
        f"""
Pond is running (data in {settings.data_dir.resolve()}, Redis at {os.environ["REDIS_URL"]})
  member    gRPC 127.0.0.1:{member_port}   metrics :{settings.member_metrics_port}
  tagging   gRPC 127.0.0.1:{tagging_port}   metrics :{tagging_settings.tagging_metrics_port}

Dev operator token (7 days), also in {settings.data_dir / "dev-operator.token"}:
  {token}

Try it (in another terminal):
  .venv/bin/python -m stack.call RegisterMember \\
      '{{"identities": [{{"kind": "IDENTITY_KIND_PHONE", "value": "13812345678"}}], \\
        "acquisition_channel": "CHANNEL_STORE_POS"}}'
  .venv/bin/python -m stack.call ListMembers '{{"page_size": 5}}'
  .venv/bin/python -m stack.call TaggingService.CreateSegment \\
      '{{"segment": {{"id": "repeat_buyers", "expression": "orders_90d >= 2"}}}}'
Ctrl-C stops the stack.
""",
        flush=True,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
