"""Who may do what in the member service: the roles per method, what the gateway
(acting for one signed-in customer) may do, and what identities prove per role."""

from __future__ import annotations

from services.member.domain.members import WECHAT_KINDS, IdentityTrust
from services.runtime.auth import BACK_OFFICE, EVERYONE, OPERATORS, STAFF, Caller, Role

# Which roles may call which method (the role sets are the runtime's). The gateway is
# further limited to the member it verified: every gateway method below checks it
# (ensure_acts_for), apart from GATEWAY_BEFORE_SIGN_IN. Guides work the POS and the
# WeCom sidebar. OPERATORS only: the brand's tier program and manual points
# corrections, decisions a person answers for; a service token (another service, a
# scheduled job) cannot make them. The scheduled runs and the order system's refunds
# are BACK_OFFICE: operators and services.
AUTH_RULES: dict[str, frozenset[Role]] = {
    "RegisterMember": EVERYONE,
    "GetMember": EVERYONE,
    "FindMember": STAFF,
    "ListMembers": STAFF,
    "UpdateMember": EVERYONE,
    "AddMemberIdentity": EVERYONE,
    "SetPaidMembership": BACK_OFFICE,
    # The gateway binds the phone WeChat verified for its signed-in member (and may
    # thereby merge that member into the phone's owner); the back office may too.
    "BindVerifiedPhone": BACK_OFFICE | {Role.GATEWAY},
    # Merging two records moves all their value: a person answers for it.
    "MergeMembers": OPERATORS,
    "GetTierProgram": EVERYONE,
    "UpdateTierProgram": OPERATORS,
    "EvaluateTiers": BACK_OFFICE,
    "ListTierChanges": EVERYONE,
    "RedeemPoints": EVERYONE,
    "AdjustPoints": OPERATORS,
    "ListPointsEntries": EVERYONE,
    "ListExpiringPoints": EVERYONE,
    "RunPointsExpiry": BACK_OFFICE,
    "GrantBirthdayGifts": BACK_OFFICE,
    "TopUpStoredValue": STAFF,
    "PayWithStoredValue": EVERYONE,
    "RefundStoredValuePayment": BACK_OFFICE,
    "ListStoredValueEntries": EVERYONE,
    "RecordOrder": STAFF,
    "RefundOrder": BACK_OFFICE,
    "GetOrder": EVERYONE,
    "ListOrders": EVERYONE,
}
# The gateway may call these before it has a member (x-pond-member-id): signing a
# customer in by their WeChat identities, and the brand's tier program (no member
# data). Every other gateway call without a member is refused by the runtime.
GATEWAY_BEFORE_SIGN_IN = frozenset({"RegisterMember", "GetTierProgram"})
# What a customer may change about themselves through the gateway.
GATEWAY_UPDATABLE = frozenset(
    {"profile", "profile.name", "profile.gender", "profile.birthday", "profile.city", "consents"}
)

# Operators and services: any identity identifies its member, errors name owners.
_BACK_OFFICE_TRUST = IdentityTrust()
# Guides register customers at the POS by phone, in person: any identity identifies
# its member, but who owns an identity is not theirs to learn from an error.
_GUIDE_TRUST = IdentityTrust(sees_owners=False)
# The gateway has verified only the WeChat identities of the customer signing in; a
# phone (or WeCom id) it passes on is the customer's claim, never proof: it is added
# only while nobody owns it and never leads to the member who does.
_GATEWAY_TRUST = IdentityTrust(proving=WECHAT_KINDS, sees_owners=False)


def identity_trust(caller: Caller | None) -> IdentityTrust:
    if caller is None or caller.role in BACK_OFFICE:
        return _BACK_OFFICE_TRUST
    return _GUIDE_TRUST if caller.role is Role.GUIDE else _GATEWAY_TRUST
