"""Chain orders (接龙): a guide opens a chain in a group; members join with a quantity,
change or withdraw before the deadline; the guide closes it, or a runtime timer set
with the chain closes it at the deadline; closing produces the order list (the active
entries in joining order, in ChainClosed and in GetChain).

Stock is never oversold: every join, change and withdrawal writes the chain's sold
count guarded by the version it read, with the entry, its event and the call's
idempotency record (the value-moving calls take an idempotency_key) in one unit of
work. Calls on one chain take turns in the process; across replicas the guard
decides and the loser goes again (and replays if its key landed meanwhile)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message

from services.community.domain import chains as dch
from services.community.domain import groups as dg
from services.community.domain.errors import RuleViolation
from services.community.events import ChainClosed, ChainEntryChanged, ChainJoined, ChainOrderLine
from services.community.store import CHAIN_ENTRIES, CHAINS, GROUPS, active_entries
from services.community.writes import DOMAIN, Writes, rule_error
from services.runtime.clock import from_epoch_micros
from services.runtime.documents import Doc, DuplicateKey, Timer, UnitOfWork
from services.runtime.errors import already_exists, invalid_argument
from services.runtime.idempotency import IdempotencyKeeper, IdempotentCall
from services.runtime.ids import new_id

CHAIN_DEADLINE = "chain-deadline"  # timer kind: close the chain at its deadline
R = TypeVar("R", bound=Message)
Decide = Callable[[Doc, Doc | None, int], tuple[Doc, Doc]]


def _with_amount(chain: Doc, entry: Doc) -> Doc:
    return {**entry, "amount_fen": entry["quantity"] * chain["price_fen"]}


class Chains:
    def __init__(self, writes: Writes, retention: timedelta) -> None:
        self.w = writes
        self.store = writes.store
        self.keeper = IdempotencyKeeper(writes.store, writes.clock, retention, domain=DOMAIN)

    async def open(self, chain_id: str, group_id: str, product: str, price_fen: int,
                   stock: int, per_member_limit: int, deadline: int, opened_by: str) -> Doc:
        group = await self.w.need(GROUPS.name, "group", group_id)
        if group["state"] != dg.ACTIVE:
            raise rule_error(RuleViolation("GROUP_ARCHIVED", f"group {group_id!r} is archived",
                                              group_id=group_id))
        now = self.w.now_micros()
        if deadline <= now:
            raise invalid_argument([("deadline", "must be in the future")], domain=DOMAIN)
        chain = dch.new_chain(chain_id or new_id("c"), group_id, product, price_fen, stock,
                              per_member_limit, deadline, opened_by, now)
        uow = UnitOfWork()
        uow.insert(CHAINS.name, chain)
        uow.set_timer(Timer(f"{CHAIN_DEADLINE}:{chain['_id']}", CHAIN_DEADLINE, deadline,
                            {"chain_id": chain["_id"]}))
        try:
            await self.store.commit(uow)
        except DuplicateKey as exc:
            raise already_exists("CHAIN_EXISTS", f"chain {chain['_id']!r} exists",
                                 domain=DOMAIN, chain_id=chain["_id"]) from exc
        return chain

    async def get(self, chain_id: str) -> tuple[Doc, list[Doc]]:
        """The chain and its active entries in joining order (with their amounts)."""
        chain = await self.w.need(CHAINS.name, "chain", chain_id)
        return chain, [_with_amount(chain, e) for e in await active_entries(self.store, chain_id)]

    async def list_chains(self, group_id: str, state: str, after: str, limit: int) -> list[Doc]:
        where: dict[str, Any] = {}
        if group_id:
            where["group_id"] = group_id
        if state:
            where["state"] = state
        if after:
            where["_id"] = {"$gt": after}
        return await self.store.find(CHAINS.name, where, limit=limit)

    # -- the value-moving calls --
    async def join(self, chain_id: str, member_id: str, quantity: int,
                   call: IdempotentCall[R]) -> R:
        return await self._move(chain_id, member_id, call, lambda chain, entry, now: dch.join(
            chain, entry, member_id, quantity, now), joined=True)

    async def change(self, chain_id: str, member_id: str, quantity: int,
                     call: IdempotentCall[R]) -> R:
        return await self._move(chain_id, member_id, call, lambda chain, entry, now: dch.change(
            chain, entry, quantity, now))

    async def withdraw(self, chain_id: str, member_id: str, call: IdempotentCall[R]) -> R:
        return await self._move(chain_id, member_id, call, dch.withdraw)

    async def _move(self, chain_id: str, member_id: str, call: IdempotentCall[R],
                    decide: Decide, *, joined: bool = False) -> R:
        key = dch.entry_id(chain_id, member_id)

        async def attempt() -> tuple[UnitOfWork, Doc]:
            chain = await self.w.need(CHAINS.name, "chain", chain_id)
            entry = await self.store.get(CHAIN_ENTRIES.name, key)
            new_chain, new_entry = decide(chain, entry, self.w.now_micros())
            uow = UnitOfWork()
            uow.replace(CHAINS.name, new_chain)
            (uow.replace if entry is not None else uow.insert)(CHAIN_ENTRIES.name, new_entry)
            quantity = new_entry["quantity"] if new_entry["state"] == dch.ACTIVE else 0
            fields = dict(chain_id=chain_id, group_id=chain["group_id"], member_id=member_id,
                          quantity=quantity, amount_fen=quantity * chain["price_fen"])
            payload = ChainJoined(**fields) if joined else ChainEntryChanged(**fields)
            self.w.emit(uow, member_id, payload, self.w.now())
            return uow, _with_amount(chain, new_entry)

        return await self.w.run(("chain", chain_id), lambda: self.keeper.run(
            call, attempt, self.store.commit))

    # -- closing --
    async def close(self, chain_id: str) -> tuple[Doc, list[Doc]]:
        async def attempt() -> tuple[Doc, list[Doc]]:
            chain = await self.w.need(CHAINS.name, "chain", chain_id)
            if chain["state"] == dch.CLOSED:
                return await self.get(chain_id)
            uow = UnitOfWork()
            closed, entries = await self._close(uow, chain, "guide", self.w.now_micros())
            uow.cancel_timer(f"{CHAIN_DEADLINE}:{chain_id}")
            await self.store.commit(uow)
            return closed, entries

        return await self.w.run(("chain", chain_id), attempt)

    async def on_deadline(self, timer: Timer, uow: UnitOfWork) -> None:
        chain = await self.store.get(CHAINS.name, timer.payload["chain_id"])
        if chain is not None and chain["state"] == dch.OPEN:
            await self._close(uow, chain, "deadline", max(timer.due_at, chain["deadline"]))

    async def _close(self, uow: UnitOfWork, chain: Doc, by: str,
                     at: int) -> tuple[Doc, list[Doc]]:
        closed = dch.closed(chain, at, by)
        entries = [_with_amount(chain, e) for e in await active_entries(self.store, chain["_id"])]
        uow.replace(CHAINS.name, closed)
        lines = [ChainOrderLine(member_id=e["member_id"], quantity=e["quantity"],
                                amount_fen=e["amount_fen"]) for e in entries]
        self.w.emit(uow, chain["_id"], ChainClosed(
            chain_id=chain["_id"], group_id=chain["group_id"], product=chain["product"],
            price_fen=chain["price_fen"], lines=lines,
            total_quantity=sum(e["quantity"] for e in entries),
            total_fen=sum(e["amount_fen"] for e in entries), closed_by=by),
            from_epoch_micros(at))
        return closed, entries
