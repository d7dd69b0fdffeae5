"""Paging as every list route takes it: `page_size` capped, `page_token` passed
through to the service untouched (opaque, signed and bound to the member there)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 20, 50

PageSize = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX,
                                description=f"Items per page (1..{PAGE_SIZE_MAX})")]
PageToken = Annotated[str, Query(max_length=1024,
                                 description="next_page_token of the previous page")]
