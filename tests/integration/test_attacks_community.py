"""The community service as an attacker meets it: its WeCom callback port faces the
internet, and anyone may post to it before a signature is checked."""

from __future__ import annotations

import asyncio

from services.community.wecom.callbacks import MAX_CALLBACK_BYTES
from tests.integration.community_harness import Community
from tests.integration.test_community_wecom import _url as callback_url
from tests.integration.test_community_wecom import (  # noqa: F401 (fixture)
    event_xml,
    http,
    sealed,
    wecom_fixture,
)

# Long enough for any machine to answer; a server waiting for the rest of the body
# never does, and the test fails rather than hangs.
NO_ANSWER = 30.0


async def _post_without_finishing(port: int, headers: str, chunks: list[bytes]) -> bytes:
    """Posts the request line, `headers` and `chunks`, never finishing the body, and
    returns the status line the server answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("POST /wecom/callback?msg_signature=a&timestamp=1&nonce=2 HTTP/1.1\r\n"
                      "Host: pond\r\n" + headers + "\r\n").encode())
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        return await asyncio.wait_for(reader.readline(), NO_ANSWER)
    finally:
        writer.close()


async def test_a_callback_body_is_read_no_further_than_its_limit(wecom: Community):
    port = wecom.service.use_cases.callbacks.port
    # A Content-Length of 10 GB: refused on the header, without waiting for the body.
    status = await _post_without_finishing(
        port, "Content-Length: 10000000000\r\n", [b"x" * (2 * MAX_CALLBACK_BYTES)])
    assert status.startswith(b"HTTP/1.1 413"), status
    # An endless chunked body: refused once the limit is passed, not read to its end.
    chunk = b"x" * 16384
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    status = await _post_without_finishing(
        port, "Transfer-Encoding: chunked\r\n", [framed] * (2 * MAX_CALLBACK_BYTES // 16384))
    assert status.startswith(b"HTTP/1.1 413"), status
    # The receiver still serves a real callback afterwards.
    query, body = sealed(event_xml("update", "add_member", ("wmNobody",)))
    assert await http(callback_url(wecom, **query), body) == (200, "success")
