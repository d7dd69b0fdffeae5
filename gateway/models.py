"""The gateway's request and response bodies (pydantic): what the OpenAPI document,
the generated TypeScript types and the API tests are written from. Money is integer
fen, times are RFC 3339 UTC, enums are lower-case words, phone numbers are masked."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

ContactChannel = Literal["sms", "wechat", "wecom", "email", "phone_call"]
CONTACT_CHANNELS: tuple[ContactChannel, ...] = ("sms", "wechat", "wecom", "email", "phone_call")


class Strict(BaseModel):
    """A request body: unknown fields are refused (a typo is no silent no-op). Its
    scalars take only what the document says (StrictBool, IsoDate): pydantic would
    otherwise read 0 as false and 86400 as 1970-01-02."""

    model_config = ConfigDict(extra="forbid")


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date_text(value: Any) -> Any:
    if isinstance(value, date) or (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
        return value
    raise ValueError("a date as YYYY-MM-DD")


IsoDate = Annotated[date, BeforeValidator(_iso_date_text)]


# -- auth --
class WeChatLoginRequest(Strict):
    code: str = Field(min_length=1, max_length=128, description="The code from wx.login()")


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the access token is valid")
    refresh_token: str
    member_id: str


class LoginResponse(TokenPair):
    created: bool = Field(description="True when this login made a new member")


# -- tier programme --
class TierView(BaseModel):
    level: int
    name: str
    growth_threshold: int
    points_multiplier_permille: int
    birthday_gift_points: int
    benefits: dict[str, str]


class TierProgramView(BaseModel):
    tiers: list[TierView]
    evaluation_window_days: int
    retention_days: int


# -- me --
class NextTier(BaseModel):
    level: int
    name: str
    growth_threshold: int
    growth_needed: int = Field(description="Growth still to earn to reach it")


class TierStatus(BaseModel):
    level: int
    name: str
    points_multiplier_permille: int
    benefits: dict[str, str]
    growth_value: int
    next_tier: NextTier | None = Field(description="None at the top tier")


class ConsentView(BaseModel):
    channel: ContactChannel
    granted: bool
    updated_at: datetime | None


class MeView(BaseModel):
    id: str
    nickname: str
    name: str
    gender: Literal["unspecified", "male", "female", "other"]
    birthday: date | None
    city: str
    phone: str | None = Field(description="Masked (138****5678); None until bound")
    tier: TierStatus
    points_balance: int
    stored_value_fen: int
    store_id: str
    guide_id: str
    consents: list[ConsentView]
    paid_order_count: int
    member_since: datetime | None


class ConsentChange(Strict):
    channel: ContactChannel
    granted: StrictBool


class MePatch(Strict):
    nickname: str | None = Field(None, min_length=1, max_length=32)
    birthday: IsoDate | None = Field(None, description="Once: a birthday already set stays")
    consents: list[ConsentChange] | None = Field(None, max_length=5)

    @field_validator("birthday")
    @classmethod
    def _not_in_the_future(cls, value: date | None) -> date | None:
        # A day ahead of UTC: it is already tomorrow in the brand's time zone.
        if value is not None and value > datetime.now(UTC).date() + timedelta(days=1):
            raise ValueError("a birthday cannot be in the future")
        return value


class PhoneBindRequest(Strict):
    code: str = Field(min_length=1, max_length=128,
                      description="The code from the getPhoneNumber button")


class PhoneBindResponse(BaseModel):
    me: MeView
    merged: bool = Field(description="True when an earlier (store) membership was joined")
    tokens: TokenPair | None = Field(
        description="New tokens when merged: the old ones name a member that is gone")


# -- points, stored value, orders --
class PointsBalance(BaseModel):
    points_balance: int


class PointsEntryView(BaseModel):
    id: str
    kind: Literal["earn", "redeem", "expire", "adjust", "reverse", "gift", "unspecified"]
    delta: int
    balance_after: int
    reason: str
    order_id: str
    created_at: datetime | None
    expires_at: datetime | None


class PointsEntriesPage(BaseModel):
    entries: list[PointsEntryView]
    next_page_token: str = Field(description="Empty on the last page")


class ExpiringPointsView(BaseModel):
    points: int
    expires_at: datetime | None


class ExpiringPoints(BaseModel):
    within_days: int
    total: int
    lots: list[ExpiringPointsView]


class StoredValueBalance(BaseModel):
    stored_value_fen: int


class StoredValueEntryView(BaseModel):
    id: str
    kind: Literal["top_up", "pay", "refund", "unspecified"]
    delta_fen: int
    bonus_fen: int
    balance_after_fen: int
    reference: str
    created_at: datetime | None


class StoredValueEntriesPage(BaseModel):
    entries: list[StoredValueEntryView]
    next_page_token: str


class OrderItemView(BaseModel):
    sku: str
    category: str
    quantity: int
    unit_price_fen: int


class OrderView(BaseModel):
    id: str
    channel: str
    store_id: str
    items: list[OrderItemView]
    amount_fen: int
    paid_at: datetime | None
    points_earned: int
    growth_earned: int
    refunded_fen: int


class OrdersPage(BaseModel):
    orders: list[OrderView]
    next_page_token: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = Field(default_factory=dict)


# -- community: groups, live codes, check-in, chains --
GroupKindWord = Literal[
    "interest", "functional", "brand_welfare", "promotion_flash", "activity", "fans", "vip",
    "koc", "store", "city", "category", "ip", "unspecified"]
GroupLevelWord = Literal["first", "second", "top", "unspecified"]


class GroupView(BaseModel):
    id: str
    name: str
    kind: GroupKindWord
    level: GroupLevelWord
    store_id: str
    city: str
    qr_code_url: str = Field(description="The group's WeCom QR code (scan to enter the chat)")
    member_count: int
    capacity: int
    state: Literal["active", "archived", "unspecified"]


class MyGroupView(GroupView):
    joined_at: datetime | None


class MyGroupsPage(BaseModel):
    groups: list[MyGroupView]
    next_page_token: str = Field(description="Empty on the last page")


class LiveCodeContext(Strict):
    """Where the live code was scanned (the code's scene); unset: my own store and city."""

    store_id: str | None = Field(None, min_length=1, max_length=128,
                                 pattern=r"^[A-Za-z0-9_-]+$")
    city: str | None = Field(None, min_length=1, max_length=100)


class LiveCodeJoined(BaseModel):
    group: GroupView
    qr_code_url: str = Field(description="Show it: scanning it enters the WeCom group")
    already_member: bool = Field(description="I was in this group already: nothing changed")
    first_join: bool = Field(description="My first group ever")


class CheckInRequestBody(Strict):
    group_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                                 description="The group it happens in (I must be in it)")


class CheckInView(BaseModel):
    day: date = Field(description="The brand's calendar day")
    checked_in_at: datetime | None
    group_id: str
    streak: int
    best_streak: int
    total_days: int
    already_checked_in: bool = Field(description="True: today's check-in was made before")


class CheckInStreakView(BaseModel):
    streak: int = Field(description="Days in a row up to today (or yesterday); 0 once broken")
    best_streak: int
    total_days: int
    last_day: date | None
    checked_in_today: bool


class ChainEntryView(BaseModel):
    chain_id: str
    quantity: int
    amount_fen: int
    state: Literal["active", "withdrawn", "unspecified"]
    position: int = Field(description="My place in the chain's list (1, 2, ...)")
    joined_at: datetime | None
    updated_at: datetime | None


class ChainView(BaseModel):
    id: str
    group_id: str
    product: str
    price_fen: int
    stock: int
    stock_left: int
    per_member_limit: int = Field(description="The most one member may take")
    deadline: datetime | None
    state: Literal["open", "closed", "unspecified"]
    my_entry: ChainEntryView | None = Field(description="None until I join (or after I withdraw)")


class ChainQuantity(Strict):
    quantity: int = Field(ge=1, le=1_000_000, strict=True)
