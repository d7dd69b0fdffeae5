"""WeChat's server APIs for a mini-program, over HTTP (httpx), base URL configurable
(POND_WECHAT_API_BASE: https://api.weixin.qq.com, or the stand-in's in `make run`
and the tests):

- code2session: GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code
  -> {openid, session_key, unionid?} or {errcode, errmsg}
- the server access token: POST /cgi-bin/stable_token {grant_type: client_credential,
  appid, secret} -> {access_token, expires_in}
- the phone number: POST /wxa/business/getuserphonenumber?access_token=... {code}
  -> {errcode: 0, phone_info: {phoneNumber, purePhoneNumber, countryCode, watermark}}

WeChat answers HTTP 200 with an `errcode` when something is wrong; each known one
becomes a clear problem (WECHAT_ERRORS). `session_key` is kept in this module's
return value only: it is never logged, stored or sent to the client (the gateway
needs no decryption: the phone comes from getuserphonenumber)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from gateway.errors import Problem

log = structlog.get_logger("pond.gateway.wechat")
# httpx logs each request's URL at INFO, and code2session's URL holds the app secret.
logging.getLogger("httpx").setLevel(logging.WARNING)

# errcode -> (HTTP status, problem code, detail)
WECHAT_ERRORS: dict[int, tuple[int, str, str]] = {
    40029: (400, "WECHAT_CODE_INVALID", "the WeChat code is invalid"),
    40163: (400, "WECHAT_CODE_USED", "the WeChat code was already used"),
    45011: (429, "WECHAT_RATE_LIMITED", "WeChat refused: too many requests"),
    40226: (403, "WECHAT_USER_RISKY", "WeChat blocked this user as risky"),
    -1: (503, "WECHAT_BUSY", "WeChat is busy; retry later"),
}
# The server access token is invalid or expired: renew it and retry once.
ACCESS_TOKEN_ERRORS = frozenset({40001, 42001, 40014})


class WeChatError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"WeChat errcode {errcode}: {errmsg}")
        self.errcode, self.errmsg = errcode, errmsg

    def problem(self) -> Problem:
        status, code, detail = WECHAT_ERRORS.get(
            self.errcode, (502, "WECHAT_ERROR", "WeChat refused the request")
        )
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return Problem(status, code, detail, headers=headers)


@dataclass(frozen=True)
class WeChatSession:
    openid: str
    unionid: str
    session_key: str = field(repr=False)  # never logged, never leaves the server


@dataclass(frozen=True)
class PhoneInfo:
    phone_number: str = field(repr=False)
    pure_phone_number: str = field(repr=False)
    country_code: str


class WeChat:
    def __init__(self, http: httpx.AsyncClient, base_url: str, app_id: str,
                 app_secret: str) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.app_id, self._secret = app_id, app_secret

    async def code2session(self, code: str) -> WeChatSession:
        body = await self._call("GET", "/sns/jscode2session", params={
            "appid": self.app_id, "secret": self._secret, "js_code": code,
            "grant_type": "authorization_code",
        })
        openid = body.get("openid")
        if not isinstance(openid, str) or not openid:
            raise _bad_answer("jscode2session")
        return WeChatSession(openid, str(body.get("unionid") or ""),
                             str(body.get("session_key") or ""))

    async def stable_access_token(self, force_refresh: bool = False) -> tuple[str, int]:
        body = await self._call("POST", "/cgi-bin/stable_token", json={
            "grant_type": "client_credential", "appid": self.app_id, "secret": self._secret,
            "force_refresh": force_refresh,
        })
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not isinstance(expires_in, int):
            raise _bad_answer("stable_token")
        return token, expires_in

    async def phone_number(self, access_token: str, code: str) -> PhoneInfo:
        body = await self._call("POST", "/wxa/business/getuserphonenumber",
                                params={"access_token": access_token}, json={"code": code})
        info = body.get("phone_info")
        if not isinstance(info, dict) or not info.get("purePhoneNumber"):
            raise _bad_answer("getuserphonenumber")
        return PhoneInfo(str(info.get("phoneNumber", "")), str(info["purePhoneNumber"]),
                         str(info.get("countryCode", "")))

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, self.base_url + path, **kwargs)
        except httpx.HTTPError as exc:
            # The URL holds the app secret: log the path and the error's kind only.
            log.warning("wechat unreachable", path=path, error=type(exc).__name__)
            raise Problem(503, "WECHAT_UNAVAILABLE", "WeChat could not be reached",
                          headers={"Retry-After": "1"}) from exc
        if response.status_code != 200:
            log.warning("wechat http error", path=path, status=response.status_code)
            raise Problem(502, "WECHAT_ERROR", "WeChat answered with an error")
        try:
            body = response.json()
        except ValueError as exc:
            raise _bad_answer(path) from exc
        if not isinstance(body, dict):
            raise _bad_answer(path)
        errcode = body.get("errcode", 0)
        if errcode:
            log.info("wechat refused", path=path, errcode=errcode)
            raise WeChatError(int(errcode), str(body.get("errmsg", "")))
        return body


def _bad_answer(what: str) -> Problem:
    log.warning("wechat answer not understood", api=what)
    return Problem(502, "WECHAT_ERROR", "WeChat's answer was not understood")
