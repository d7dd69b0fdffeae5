"""The brand's tier programme: public, no sign-in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway import convert
from gateway.models import TierProgramView
from gateway.ratelimit import admitted

router = APIRouter(prefix="/v1", tags=["programme"])


@router.get("/tier-program", response_model=TierProgramView,
            summary="The tiers, their thresholds and benefits")
async def tier_program(request: Request,
                       _: Annotated[None, Depends(admitted("read"))]) -> TierProgramView:
    return convert.tier_program(await request.app.state.gateway.program())
