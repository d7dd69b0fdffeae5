"""`python -m gateway`, as production runs it (its own process, uvicorn on uvloop and
httptools): it says what configuration is missing, refuses the services' secret as
its token secret, serves a sign-in end to end, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRET, eventually
from tests.e2e.test_stack_journey import _free_port
from tests.gateway_harness import (
    GATEWAY_TEST_SECRET,
    WECHAT_APP_ID,
    WECHAT_APP_SECRET,
    standin_server,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("POND_") and k not in ("REDIS_URL", "MONGODB_URI")}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}", POND_LOG_FORMAT="json", **settings)
    return env


def test_missing_configuration_is_named(tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "gateway"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    for name in ("POND_AUTH_SECRET", "POND_GATEWAY_TOKEN_SECRET", "REDIS_URL",
                 "POND_WECHAT_APP_ID", "POND_WECHAT_APP_SECRET"):
        assert name in run.stdout
    same = _env(POND_AUTH_SECRET=TEST_SECRET, POND_GATEWAY_TOKEN_SECRET=TEST_SECRET,
                REDIS_URL="redis://127.0.0.1:1/0", POND_WECHAT_APP_ID="wx",
                POND_WECHAT_APP_SECRET="s")
    run = subprocess.run([sys.executable, "-m", "gateway"], cwd=tmp_path, env=same,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "must differ" in run.stdout
    assert TEST_SECRET not in run.stdout + run.stderr


async def test_python_m_gateway_serves_and_stops_on_sigterm(member, redis_url, tmp_path):
    from stack.wechat_standin import WeChatStandIn

    standin = await standin_server(WeChatStandIn(WECHAT_APP_ID, WECHAT_APP_SECRET)).start()
    port = _free_port()
    env = _env(POND_AUTH_SECRET=TEST_SECRET, POND_GATEWAY_TOKEN_SECRET=GATEWAY_TEST_SECRET,
               REDIS_URL=redis_url, POND_MEMBER_TARGET=member.target,
               POND_WECHAT_API_BASE=standin.url, POND_WECHAT_APP_ID=WECHAT_APP_ID,
               POND_WECHAT_APP_SECRET=WECHAT_APP_SECRET, POND_GATEWAY_PORT=str(port),
               POND_HOST="127.0.0.1")
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as out:
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "gateway"], cwd=tmp_path, env=env,
            stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async def ready() -> int:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return (await http.get("/readyz")).status_code
                except httpx.TransportError:
                    return 0

            await eventually(ready, lambda status: status == 200, timeout=60)
            login = await http.post("/v1/auth/wechat-login", json={"code": "dev-proc.1"})
            assert login.status_code == 200, login.text
            me = await http.get("/v1/me", headers={
                "Authorization": f"Bearer {login.json()['access_token']}"})
            assert me.json()["id"] == login.json()["member_id"]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
        output = log_path.read_text()
        assert '"method":"GET /v1/me","code":"200"' in output
        assert "session_key" not in output and login.json()["access_token"] not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await standin.stop()
