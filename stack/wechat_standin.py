"""A local stand-in for WeChat's server APIs, for `make run` and the tests: its own
small ASGI app on its own port, speaking WeChat's real paths and JSON, so the
gateway's real adapter (gateway/wechat.py) runs end to end.

Codes are made so that tests and the `make run` banner can use them deterministically
(WeChat's own codes come from wx.login() and the getPhoneNumber button, on a phone):
- login: `dev-<name>` or `dev-<name>.<anything>` (name: 1-64 of letters, digits, _
  and -) signs in the person <name>: openid `o` + a hash of (app id, name) and
  unionid `u` + a hash of name, so the same name is the same member every time (the
  part after the dot only makes a fresh code); any other code is 40029 (invalid).
  `err-<errcode>` answers that WeChat error (err-40226 risky user, err-45011 rate
  limited, err--1 system busy), to see how the gateway maps it.
- phone: `phone-<11 digits>` (or `phone-<11 digits>.<anything>`) is that verified
  mainland number (+86).
- every code works once, as WeChat's do: a second use is 40163 (code been used).
- the server access token (/cgi-bin/token, /cgi-bin/stable_token) needs the app id
  and secret the stand-in was made with, lives `token_ttl_seconds` (7200 as
  WeChat's), and getuserphonenumber refuses any other (40001)."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PHONE_RE = re.compile(r"1[3-9]\d{9}")


def openid_for(app_id: str, name: str) -> str:
    return "o" + hashlib.sha256(f"{app_id}\0{name}".encode()).hexdigest()[:27]


def unionid_for(name: str) -> str:
    return "u" + hashlib.sha256(f"unionid\0{name}".encode()).hexdigest()[:27]


class WeChatStandIn:
    def __init__(self, app_id: str, app_secret: str, *, token_ttl_seconds: int = 7200) -> None:
        self.app_id, self.app_secret = app_id, app_secret
        self.token_ttl_seconds = token_ttl_seconds
        self.used_codes: set[str] = set()
        self.tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self.token_requests = 0
        self.app = Starlette(routes=[
            Route("/sns/jscode2session", self.jscode2session, methods=["GET"]),
            Route("/cgi-bin/token", self.token, methods=["GET"]),
            Route("/cgi-bin/stable_token", self.stable_token, methods=["POST"]),
            Route("/wxa/business/getuserphonenumber", self.phone_number, methods=["POST"]),
        ])

    def _credentials_error(self, app_id: Any, secret: Any) -> JSONResponse | None:
        if app_id != self.app_id:
            return _error(40013, "invalid appid")
        if secret != self.app_secret:
            return _error(40125, "invalid appsecret")
        return None

    def _spend(self, code: str) -> bool:
        if code in self.used_codes:
            return False
        self.used_codes.add(code)
        return True

    async def jscode2session(self, request: Request) -> JSONResponse:
        q = request.query_params
        refused = self._credentials_error(q.get("appid"), q.get("secret"))
        if refused is not None:
            return refused
        if q.get("grant_type") != "authorization_code":
            return _error(40002, "invalid grant_type")
        code = q.get("js_code", "")
        if code.startswith("err-") and re.fullmatch(r"-?\d{1,6}", code[4:]):
            return _error(int(code[4:]), "stand-in")
        name = code[4:].partition(".")[0] if code.startswith("dev-") else ""
        if not _NAME_RE.fullmatch(name):
            return _error(40029, "invalid code")
        if not self._spend(code):
            return _error(40163, "code been used")
        return JSONResponse({
            "openid": openid_for(self.app_id, name),
            "unionid": unionid_for(name),
            "session_key": secrets.token_urlsafe(16),
        })

    def _new_token(self) -> JSONResponse:
        self.token_requests += 1
        now = time.time()
        live = [t for t, exp in self.tokens.items() if exp > now + 300]
        # As stable_token: the same token until it nears its end.
        token = live[0] if live else secrets.token_urlsafe(48)
        self.tokens.setdefault(token, now + self.token_ttl_seconds)
        return JSONResponse({"access_token": token,
                             "expires_in": int(self.tokens[token] - now)})

    async def token(self, request: Request) -> JSONResponse:
        q = request.query_params
        if q.get("grant_type") != "client_credential":
            return _error(40002, "invalid grant_type")
        return self._credentials_error(q.get("appid"), q.get("secret")) or self._new_token()

    async def stable_token(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if body.get("grant_type") != "client_credential":
            return _error(40002, "invalid grant_type")
        return (self._credentials_error(body.get("appid"), body.get("secret"))
                or self._new_token())

    async def phone_number(self, request: Request) -> JSONResponse:
        token = request.query_params.get("access_token", "")
        if self.tokens.get(token, 0) <= time.time():
            return _error(40001, "invalid credential, access_token is invalid or not latest")
        code = str((await _json(request)).get("code", ""))
        number = code[6:].partition(".")[0] if code.startswith("phone-") else ""
        if not _PHONE_RE.fullmatch(number):
            return _error(40029, "invalid code")
        if not self._spend(code):
            return _error(40163, "code been used")
        return JSONResponse({"errcode": 0, "errmsg": "ok", "phone_info": {
            "phoneNumber": number, "purePhoneNumber": number, "countryCode": "86",
            "watermark": {"timestamp": int(time.time()), "appid": self.app_id},
        }})


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})
