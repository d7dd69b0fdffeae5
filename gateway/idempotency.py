"""`Idempotency-Key` for every POST that moves value (redeeming points, paying with
stored value, claiming a campaign's prize): required, 8-64 of letters, digits, `_`
and `-` (a UUID fits), and passed to the service as the RPC's `idempotency_key`,
prefixed with the member id so two customers' keys never meet. The service stores
the first response: a replay (a retry after a lost answer) returns it, the same key
with other parameters is refused (409/400 IDEMPOTENCY_KEY_REUSED).

    @router.post("/v1/me/points/redemptions")
    async def redeem(me: Writing, key: ValueMovingKey, ...):
        await members.call(stub.RedeemPoints, RedeemPointsRequest(..., idempotency_key=key))
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header

from gateway.auth import SignedInMember
from gateway.errors import Problem
from gateway.ratelimit import signed_in

KEY_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")


async def idempotency_key(
    member: Annotated[SignedInMember, Depends(signed_in("write"))],
    key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Client-made, unique per operation (a UUID)",
    )] = None,
) -> str:
    if key is None:
        raise Problem(400, "IDEMPOTENCY_KEY_REQUIRED", "this request needs an Idempotency-Key",
                      violations=[("Idempotency-Key", "required")])
    if not KEY_RE.fullmatch(key):
        raise Problem(400, "INVALID_ARGUMENT", "Idempotency-Key: 8-64 of A-Z a-z 0-9 _ -",
                      violations=[("Idempotency-Key", "8-64 of A-Z a-z 0-9 _ -")])
    return f"{member.member_id}:{key}"


ValueMovingKey = Annotated[str, Depends(idempotency_key)]
