"""The synthetic brand's catalogue: 30 categories, 4 manual tags, 20 rule tags and
10 segments, as an operator would define them through the TaggingService.

Rules use features, has_tag (manual, score and other rule tags) and the category
functions; segments combine tags, feature comparisons and in_segment. kernel.py
holds a hand-written numpy version of every rule here (the throughput baseline),
so a rule changed here must be changed there too (the bench checks that both give
the same members)."""

from __future__ import annotations

CATEGORIES = (
    "coffee", "tea", "fresh", "dairy", "bakery", "snacks", "drinks", "frozen", "baby",
    "beauty", "wine", "pet", "household", "personal_care", "health", "fruit", "vegetables",
    "meat", "seafood", "grain", "oil", "seasoning", "instant", "breakfast", "dessert", "gift",
    "stationery", "kitchen", "electronics", "clothing",
)  # fmt: skip

# Manual tags and the share of members a guide or operator has given them.
MANUAL_TAGS = {"has_kids": 0.12, "vip_group": 0.03, "staff": 0.005, "do_not_disturb": 0.04}

# In dependency order (a rule's has_tag targets come before it).
RULES: list[tuple[str, str]] = [
    ("big_spender", "spend_365d >= 200000"),
    ("frequent", "orders_90d >= 3"),
    ("recent_buyer", "days_since_last_order < 14"),
    ("lapsed_regular", "orders_total >= 4 and days_since_last_order >= 120"),
    ("high_aov", "aov >= 15000 and orders_total >= 3"),
    ("coffee_lover", 'bought("coffee", 60) and category_orders("coffee") >= 3'),
    ("new_parent", 'has_tag("has_kids") and bought("baby", 180)'),
    ("fresh_regular", 'bought("fresh", 30) and orders_30d >= 2'),
    ("points_rich", "points_balance >= 3000"),
    ("vip_candidate", 'tier >= 2 and spend_90d >= 50000 and not has_tag("vip_group")'),
    ("engaged", "interactions_30d >= 1"),
    ("silent_buyer", "orders_90d >= 1 and interactions_90d == 0"),
    ("snack_fan", 'days_since_bought("snacks") < 45'),
    ("wine_buyer", 'bought("wine", 365) and spend_365d / orders_365d >= 10000'),
    ("beauty_repeat", 'category_orders("beauty") >= 2 and bought("beauty", 90)'),
    ("churn_risk", 'has_tag("lifecycle:sleeping") and spend_total >= 50000'),
    (
        "win_back",
        'has_tag("rfm:important_winback") or (has_tag("lifecycle:churned") and orders_total >= 5)',
    ),
    ("loyal", "days_since_first_order >= 365 and orders_365d >= 6"),
    ("accelerating", "spend_30d * 3 > spend_90d and orders_90d >= 2"),
    ("premium_family", 'has_tag("new_parent") and has_tag("big_spender")'),
]

# In dependency order (an in_segment target comes before the segment).
SEGMENTS: list[tuple[str, str]] = [
    ("vip_push", 'has_tag("big_spender") and not has_tag("do_not_disturb")'),
    ("coffee_promo", 'has_tag("coffee_lover") or has_tag("repurchase_due:coffee")'),
    ("winback_campaign", 'has_tag("win_back") and not has_tag("staff")'),
    ("new_members", "days_since_registered < 30 and orders_total == 0"),
    ("new_buyers", "days_since_registered < 30 and orders_total >= 1"),
    (
        "family",
        'has_tag("new_parent") or has_tag("premium_family")'
        ' or (has_tag("has_kids") and orders_90d >= 2)',
    ),
    ("high_value_active", 'has_tag("rfm:important_value") and has_tag("lifecycle:active")'),
    ("engaged_low_spend", 'has_tag("engaged") and spend_90d < 20000'),
    ("vip_family", 'in_segment("vip_push") and in_segment("family")'),
    (
        "fresh_keepers",
        'has_tag("fresh_regular") and not in_segment("winback_campaign") and aov >= 5000',
    ),
]

# The segment a member's first order moves them into (event-to-segment latency).
FIRST_ORDER_SEGMENT = "new_buyers"
# The segments a CheckMembership call asks about.
CHECKED_SEGMENTS = ("vip_push", "coffee_promo", "new_buyers")
# The three-segment boolean evaluated on bitmaps: A and B and not C.
BOOLEAN_SEGMENTS = ("engaged_low_spend", "coffee_promo", "winback_campaign")
