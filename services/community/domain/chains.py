"""Chain orders (接龙): a guide offers a product in a group at a price, with a stock,
a per-member limit and a deadline; members join with a quantity, change or withdraw
before the deadline; stock is never oversold. No I/O: each function checks a change
and returns the new documents, or raises RuleViolation."""

from __future__ import annotations

from typing import Any

from services.community.domain.errors import RuleViolation

OPEN, CLOSED = "open", "closed"
ACTIVE, WITHDRAWN = "active", "withdrawn"
MAX_STOCK = 1_000_000
MAX_PRICE_FEN = 10**10
Doc = dict[str, Any]


def new_chain(chain_id: str, group_id: str, product: str, price_fen: int, stock: int,
              per_member_limit: int, deadline: int, opened_by: str, now: int) -> Doc:
    return {
        "_id": chain_id, "group_id": group_id, "product": product, "price_fen": price_fen,
        "stock": stock, "per_member_limit": per_member_limit, "deadline": deadline,
        "state": OPEN, "sold": 0, "entries_made": 0, "opened_by": opened_by,
        "create_time": now, "close_time": 0, "closed_by": "",
    }


def limit_of(chain: Doc) -> int:
    return int(chain["per_member_limit"] or chain["stock"])


def _ensure_open(chain: Doc, now: int) -> None:
    if chain["state"] != OPEN:
        raise RuleViolation("CHAIN_CLOSED", f"chain {chain['_id']!r} is closed")
    if now >= chain["deadline"]:
        raise RuleViolation("CHAIN_DEADLINE_PASSED", f"chain {chain['_id']!r} is past its deadline")


def _ensure_quantity(chain: Doc, quantity: int, sold_without: int) -> None:
    limit = limit_of(chain)
    if quantity > limit:
        raise RuleViolation("CHAIN_MEMBER_LIMIT", f"at most {limit} per member",
                            per_member_limit=str(limit))
    left = chain["stock"] - sold_without
    if quantity > left:
        raise RuleViolation("CHAIN_OVER_STOCK", f"only {left} left", left=str(left))


def join(chain: Doc, entry: Doc | None, member_id: str, quantity: int,
         now: int) -> tuple[Doc, Doc]:
    """(chain, entry) after the member joins with `quantity`."""
    _ensure_open(chain, now)
    if entry is not None and entry["state"] == ACTIVE:
        raise RuleViolation("CHAIN_ALREADY_JOINED",
                            "the member is in the chain: change the entry instead")
    _ensure_quantity(chain, quantity, chain["sold"])
    position = chain["entries_made"] + 1
    chain = {**chain, "sold": chain["sold"] + quantity, "entries_made": position}
    new_entry = {
        **(entry or {}), "_id": entry_id(chain["_id"], member_id), "chain_id": chain["_id"],
        "member_id": member_id, "quantity": quantity, "state": ACTIVE, "position": position,
        "join_time": now, "update_time": now,
    }
    return chain, new_entry


def change(chain: Doc, entry: Doc | None, quantity: int, now: int) -> tuple[Doc, Doc]:
    _ensure_open(chain, now)
    entry = _active(entry)
    _ensure_quantity(chain, quantity, chain["sold"] - entry["quantity"])
    chain = {**chain, "sold": chain["sold"] - entry["quantity"] + quantity}
    return chain, {**entry, "quantity": quantity, "update_time": now}


def withdraw(chain: Doc, entry: Doc | None, now: int) -> tuple[Doc, Doc]:
    _ensure_open(chain, now)
    entry = _active(entry)
    chain = {**chain, "sold": chain["sold"] - entry["quantity"]}
    return chain, {**entry, "state": WITHDRAWN, "update_time": now}


def _active(entry: Doc | None) -> Doc:
    if entry is None or entry["state"] != ACTIVE:
        raise RuleViolation("CHAIN_ENTRY_NOT_FOUND", "the member has no entry in the chain")
    return entry


def merge_entry(chain: Doc, merged: Doc, kept: Doc | None, surviving_id: str,
                now: int) -> list[Doc]:
    """The entries after the member of `merged` (an active entry) was merged into
    `surviving_id` (whose entry in the chain is `kept`, if any): the survivor holds
    the merged quantity (added to its own when both had joined, even past the
    per-member limit: both were orders the chain accepted, and stock already counts
    them; the limit binds changes from now on) in the earlier place in the order list,
    and the merged entry is withdrawn. Stock and sold are unchanged. Closed chains are
    left as they are: their order list is history."""
    if chain["state"] != OPEN or merged["state"] != ACTIVE:
        return []
    gone = {**merged, "state": WITHDRAWN, "update_time": now, "merged_into": surviving_id}
    base = {**merged, "_id": entry_id(chain["_id"], surviving_id), "member_id": surviving_id,
            "update_time": now}
    if kept is not None and kept["state"] == ACTIVE:
        first = merged if merged["position"] < kept["position"] else kept
        survivor = {**kept, "quantity": kept["quantity"] + merged["quantity"],
                    "position": first["position"], "join_time": first["join_time"],
                    "update_time": now}
    elif kept is not None:  # withdrawn earlier: the document is reused (its version)
        survivor = {**base, "_v": kept["_v"]}
    else:  # a new document: no version yet
        survivor = {k: v for k, v in base.items() if k != "_v"}
    return [gone, survivor]


def closed(chain: Doc, now: int, closed_by: str) -> Doc:
    return {**chain, "state": CLOSED, "close_time": now, "closed_by": closed_by}


def entry_id(chain_id: str, member_id: str) -> str:
    return f"{chain_id}:{member_id}"
