"""`make run`: the whole stack in one process on embedded defaults.

SQLite files and a private Valkey server (password, loopback, restarted when it
dies) under ./.pond (POND_DATA_DIR, owner-only: folders 0700, files 0600), every
service on its own port on 127.0.0.1, each hosted by the runtime's service host
exactly as in production (`python -m services.<name>`: the same tasks, health,
scheduled jobs and ordered stop), every scheduled job at every
POND_JOBS_INTERVAL_SECONDS on the clock (hourly by default), a dev operator token
written to a file (never printed) for stack.call, and the gateway (HTTP, :8080) with
a stand-in for WeChat's APIs (stack/wechat_standin.py, :8081) unless
POND_WECHAT_API_BASE names a real one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
from pathlib import Path

from gateway.server import EmbeddedServer, gateway_server
from gateway.settings import GatewaySettings
from services.community.server import SPEC as COMMUNITY
from services.community.settings import CommunitySettings
from services.member.server import SPEC as MEMBER
from services.member.settings import MemberSettings
from services.runtime.auth import Role, mint_token
from services.runtime.host import ServiceHost, start_service
from services.runtime.logs import configure_logging, get_logger
from services.runtime.loop import run
from services.runtime.redis_conn import EmbeddedValkey, redact_url
from services.runtime.server import termination_requested, tune_heap_for_serving
from services.runtime.supervision import Supervised, Task
from services.tagging.server import SPEC as TAGGING
from services.tagging.settings import TaggingSettings
from stack import config
from stack.secrets import dev_secret, write_private
from stack.wechat_standin import WeChatStandIn

log = get_logger("pond.stack")

TOKEN_TTL_SECONDS = 7 * 86400


async def main() -> int:
    # What the user set, before the stack's defaults: the banner repeats it for clients.
    client_env = {name: os.environ[name] for name in config.CLIENT_ENV if name in os.environ}
    config.apply_stack_defaults()
    # Everything the stack writes (SQLite and its -wal/-shm, secrets, the token, the
    # Valkey folder) is the owner's only, whatever the caller's umask.
    os.umask(0o077)
    data_dir = config.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if "POND_DATA_DIR" in client_env:
        client_env["POND_DATA_DIR"] = str(data_dir.resolve())
    os.environ.setdefault("POND_AUTH_SECRET", dev_secret(data_dir, "auth.secret"))
    os.environ.setdefault("POND_PHONE_KEY", dev_secret(data_dir, "phone.key"))
    os.environ.setdefault("POND_GATEWAY_TOKEN_SECRET", dev_secret(data_dir, "gateway-token.secret"))
    os.environ.setdefault("POND_WECHAT_APP_ID", config.DEV_WECHAT_APP_ID)
    os.environ.setdefault("POND_WECHAT_APP_SECRET", dev_secret(data_dir, "wechat-app.secret"))
    # The WeCom callback receiver on :8083 with dev callback settings (a stand-in for
    # what a brand enters in WeCom's console; secrets/wecom.* for a test client).
    os.environ.setdefault("POND_COMMUNITY_WECOM_TOKEN", dev_secret(data_dir, "wecom.token", 12))
    os.environ.setdefault("POND_COMMUNITY_WECOM_AES_KEY",
                          dev_secret(data_dir, "wecom.aeskey", 32).rstrip("="))
    os.environ.setdefault("POND_COMMUNITY_WECOM_CORP_ID", "pond-dev-corp")
    # From here on a SIGTERM (an impatient test, Ctrl-C) waits for the start-up to
    # finish and then stops everything in order.
    terminated = termination_requested()
    valkey = None
    if not os.environ.get("REDIS_URL"):
        valkey = EmbeddedValkey(
            data_dir / "valkey",
            int(os.environ.get("POND_VALKEY_PORT", "0")),
            password=dev_secret(data_dir, "valkey.password"),
        )
        valkey.start()
        os.environ["REDIS_URL"] = valkey.url
    settings = MemberSettings()
    configure_logging(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    supervised = []
    if valkey is not None:
        supervised.append(Supervised("stack", Task("valkey", valkey.supervise), stop))
        supervised[-1].start()
    hosts: list[ServiceHost] = []
    http: list[EmbeddedServer] = []
    try:
        # The same hosts as production, one per service, in one process.
        hosts.append(await start_service(MEMBER, settings))
        tagging_settings = TaggingSettings()
        hosts.append(await start_service(TAGGING, tagging_settings))
        # Community asks member (tiers, purchases) and tagging (tags, segments) where
        # they listen in this stack.
        os.environ.setdefault("POND_COMMUNITY_MEMBER_TARGET",
                              f"{config.client_host()}:{hosts[0].port}")
        os.environ.setdefault("POND_COMMUNITY_TAGGING_TARGET",
                              f"{config.client_host()}:{hosts[1].port}")
        community_settings = CommunitySettings()
        hosts.append(await start_service(COMMUNITY, community_settings))
        os.environ.setdefault("POND_MEMBER_TARGET", f"{config.client_host()}:{hosts[0].port}")
        # The gateway's community routes call the community service started above.
        os.environ.setdefault("POND_COMMUNITY_TARGET", f"{config.client_host()}:{hosts[2].port}")
        if not os.environ.get("POND_WECHAT_API_BASE"):
            http.append(await _wechat_standin(settings.host).start())
            os.environ["POND_WECHAT_API_BASE"] = http[-1].url
        gateway_settings = GatewaySettings()
        http.append(await gateway_server(gateway_settings).start())
        tune_heap_for_serving()
        token_file = config.token_path(data_dir)
        write_private(
            token_file,
            mint_token(settings.auth_config(), "dev-operator", Role.OPERATOR,
                       ttl_seconds=TOKEN_TTL_SECONDS),
        )
        _banner(settings, tagging_settings, hosts[0].port, hosts[1].port, token_file,
                client_env)
        _gateway_banner(http[-1].url, gateway_settings.wechat_api_base, bool(len(http) > 1))
        await terminated.wait()
    finally:
        for server in reversed(http):
            await server.stop()
        for host in reversed(hosts):
            await host.stop(settings.shutdown_grace)
        stop.set()
        for task in supervised:
            await task.join(5.0)
        if valkey:
            valkey.stop()
    return 0


def _banner(
    settings: MemberSettings,
    tagging_settings: TaggingSettings,
    member_port: int,
    tagging_port: int,
    token_file: Path,
    client_env: dict[str, str],
) -> None:
    host = settings.host
    community = CommunitySettings()  # as the stack started it (the same environment)
    community_metrics = community.community_metrics_port
    redis = redact_url(os.environ["REDIS_URL"])
    export = ""
    if client_env:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in client_env.items())
        export = f"  export {assignments}\n"
    print(
        f"""
Pond is running (data in {settings.data_dir.resolve()}, Redis at {redis})
  member    gRPC {host}:{member_port}   metrics {host}:{settings.member_metrics_port}
  tagging   gRPC {host}:{tagging_port}   metrics {host}:{tagging_settings.tagging_metrics_port}
  community gRPC {host}:{community.community_port}   metrics {host}:{community_metrics}
            WeCom callbacks http://{host}:{community.community_callback_port}/wecom/callback

Dev operator token (7 days, stack.call uses it): {token_file.resolve()}

Try it (in another terminal):
{export}  .venv/bin/python -m stack.call RegisterMember \\
      '{{"identities": [{{"kind": "IDENTITY_KIND_PHONE", "value": "13812345678"}}], \\
        "acquisition_channel": "CHANNEL_STORE_POS"}}'
  .venv/bin/python -m stack.call ListMembers '{{"page_size": 5}}'
  .venv/bin/python -m stack.call TaggingService.CreateSegment \\
      '{{"segment": {{"id": "repeat_buyers", "expression": "orders_90d >= 2"}}}}'
  .venv/bin/python -m stack.call CreateRoutingRule \\
      '{{"rule_id": "fruit", "rule": {{"name": "Fruit club", "template": \\
        {{"name_prefix": "Fruit club", "kind": "GROUP_KIND_STORE", "capacity": 200}}}}}}'
  .venv/bin/python -m stack.call RouteMember '{{"member_id": "<id>", "rule_id": "fruit"}}'
  .venv/bin/python -m stack.token --role guide --subject pos-17   # a token for another role
Ctrl-C stops the stack.
""",
        flush=True,
    )


def _wechat_standin(host: str) -> EmbeddedServer:
    import uvicorn

    standin = WeChatStandIn(os.environ["POND_WECHAT_APP_ID"], os.environ["POND_WECHAT_APP_SECRET"])
    port = int(os.environ.get(config.WECHAT_STANDIN_PORT_ENV, config.WECHAT_STANDIN_PORT))
    return EmbeddedServer(standin.app, uvicorn.Config(
        standin.app, host=host, port=port, loop="none", lifespan="off", log_config=None,
        access_log=False, server_header=False))


def _gateway_banner(url: str, wechat: str, standin: bool) -> None:
    codes = " (stand-in: login codes dev-<name>[.n], phone codes phone-<11 digits>[.n])"
    json_field = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    print(
        f"""Gateway  HTTP {url}   OpenAPI {url}/docs
  WeChat {wechat}{codes if standin else ""}
  # sign in as "alice" (a code works once; the part after the dot makes a new one)
  LOGIN='{{"code": "dev-alice.'$RANDOM'"}}'
  TOKEN=$(curl -s -X POST {url}/v1/auth/wechat-login \\
      -H 'Content-Type: application/json' -d "$LOGIN" | {json_field})
  curl -s {url}/v1/me -H "Authorization: Bearer $TOKEN"
  curl -s -X POST {url}/v1/me/phone -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' -d '{{"code": "phone-13812345678"}}'
  curl -s -X POST {url}/v1/check-ins -H "Authorization: Bearer $TOKEN"
  curl -s -X POST {url}/v1/live-codes/fruit/join -H "Authorization: Bearer $TOKEN"
""",
        flush=True,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(main()))
