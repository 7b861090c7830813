"""How a restarted control actor counts the grants its gateways tell it again (`Reopened`, `Reheld`, then
`Rejoined`; docs/ray.md, "What survives a restart"): `Rejoining`, a part of `ray_limits.KeyCounts`.

The restarted actor restores its last checkpoint. A grant a gateway tells it of may be missing from it (made
after the last write), or be in it as it was at the write: the dead actor may have counted more of it afterwards
(settlements, the lease's return), lost with it. Either way the restarted actor counts exactly what it lacks of
what the gateway tells. A lease's settlements carry their ordinal among the lease's (`Settled.num_settled`), and
the actor keeps which ordinals it counted for each lease, with their totals (`CountedSettlements`, in the
checkpoint with the lease). A `Reopened` telling k settlements and their totals then counts those of ordinals
1..k not counted here (their totals: the told ones less those counted), whether their own `Settled` reach this
actor before the `Reopened`, after it, or never (counted by the dead actor only), and whatever the order Ray
applies the gateway's batches in. What comes for a grant not known here before it is told (`Unlent`, and
`KeyCounts._unheld` for exact holds) is kept and counted when it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from switchboard.cluster.ray_limits import KeyLease, LeaseHold, Returned
    from switchboard.tenants.meter import Reservation, UsageMeter


@dataclasses.dataclass(frozen=True, slots=True)
class Reopened:
    """A lease its gateway took recently (or still admits from), told to a restarted control actor: `num_taken`
    requests admitted from it so far, `num_settled` of them settled, which released `usd_settled` of its hold and
    `num_tokens_settled` of its tokens (their estimates), and cost `usd_spent` and `num_tokens_used` real tokens
    (the estimate where unknown); `returned` if the gateway gave it back. The actor counts what of it its
    checkpoint lacks (all of it, if it was lent after the last write)."""

    lease: KeyLease
    num_taken: int
    num_settled: int
    usd_settled: float
    usd_spent: float
    returned: Returned | None
    num_tokens_settled: int
    num_tokens_used: int

    @property
    def settled(self) -> Tally:
        """The totals of its `num_settled` settlements."""
        return Tally(self.num_tokens_settled, self.num_tokens_used, self.usd_settled, self.usd_spent)


@dataclasses.dataclass(frozen=True, slots=True)
class Reheld:
    """A request the actor admitted exactly recently, told to a restarted control actor by its gateway: its
    estimates, and once settled its cost (`usd_settled`, None while it runs) and real tokens (`num_tokens_used`,
    None: unknown, the estimate stays)."""

    hold_id: str
    key_id: str
    num_tokens: int
    usd: float
    usd_settled: float | None
    num_tokens_used: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Rejoined:
    """The end of what a gateway tells a restarted control actor (`Reopened`, `Reheld`): the actor lends no
    quota until every gateway that used keys before the restart has sent this (or a timeout passed)."""


class Tally(NamedTuple):
    """Totals of some settled requests of one lease: their estimated tokens and USD (what the lease counted and
    held for them), their real tokens (the estimate where unknown) and their cost. (A tuple: one is made per
    settlement, on the actor's loop.)"""

    num_tokens_estimated: int = 0
    num_tokens: int = 0
    usd_estimated: float = 0.0
    usd_spent: float = 0.0

    @classmethod
    def of(cls, hold: LeaseHold, num_tokens: int | None, usd: float) -> Tally:
        """One settlement of `hold` (`Settled`)."""
        return cls(hold.num_tokens, hold.num_tokens if num_tokens is None else num_tokens, hold.usd, usd)

    def plus(self, other: Tally) -> Tally:
        return Tally(self.num_tokens_estimated + other.num_tokens_estimated, self.num_tokens + other.num_tokens,
                     self.usd_estimated + other.usd_estimated, self.usd_spent + other.usd_spent)

    def minus(self, other: Tally) -> Tally:
        return Tally(self.num_tokens_estimated - other.num_tokens_estimated, self.num_tokens - other.num_tokens,
                     self.usd_estimated - other.usd_estimated, self.usd_spent - other.usd_spent)


@dataclasses.dataclass(slots=True)
class CountedSettlements:
    """Which settlements of one lease the actor counted, by ordinal (`Settled.num_settled`): all of 1..
    `num_in_order` (totals `in_order`: summed in ordinal order, as its gateway sums a `Reopened`'s), and those
    above it that came early (`out_of_order`). Settlements of ordinal 0 (made once the gateway forgot the lease:
    in no `Reopened`) are counted without being tracked here."""

    num_in_order: int = 0
    in_order: Tally = Tally()
    out_of_order: dict[int, Tally] = dataclasses.field(default_factory=dict)

    def add(self, ordinal: int, settled: Tally) -> bool:
        """Marks the settlement of `ordinal` counted; False if it was already (ordinal 0: never)."""
        if ordinal == 0:
            return True
        if ordinal <= self.num_in_order or ordinal in self.out_of_order:
            return False
        if ordinal == self.num_in_order + 1 and not self.out_of_order:  # (the usual case)
            self.num_in_order, self.in_order = ordinal, self.in_order.plus(settled)
        else:
            self.out_of_order[ordinal] = settled
            self._advance()
        return True

    def catch_up(self, num_settled: int, settled: Tally) -> tuple[int, Tally]:
        """Settlements 1..`num_settled` were made, with totals `settled` (a `Reopened`'s): marks them counted,
        and returns how many of them were not, and their totals (to be counted now)."""
        if num_settled <= self.num_in_order:
            return 0, Tally()
        missing = settled.minus(self.in_order)
        early = [ordinal for ordinal in self.out_of_order if ordinal <= num_settled]
        for ordinal in early:
            missing = missing.minus(self.out_of_order.pop(ordinal))
        num_missing = num_settled - self.num_in_order - len(early)
        self.num_in_order, self.in_order = num_settled, settled
        self._advance()
        return num_missing, missing

    def _advance(self) -> None:
        while (settled := self.out_of_order.pop(self.num_in_order + 1, None)) is not None:
            self.num_in_order += 1
            self.in_order = self.in_order.plus(settled)

    def state(self) -> tuple:
        """Plain data for `from_state` (a checkpoint)."""
        return self.num_in_order, tuple(self.in_order), {ordinal: tuple(t) for ordinal, t in self.out_of_order.items()}

    @classmethod
    def from_state(cls, state: tuple) -> CountedSettlements:
        num_in_order, in_order, out_of_order = state
        return cls(num_in_order, Tally(*in_order), {ordinal: Tally(*t) for ordinal, t in out_of_order.items()})


@dataclasses.dataclass(slots=True)
class Unlent:
    """What a gateway told of a lease not lent here before its `Reopened` (one this actor's predecessor lent
    after its last checkpoint), or of one released with its silent gateway: its settlements (ordinal and
    totals; their cost spent when they came), and its return."""

    first_at_s: float
    settled: list[tuple[int, Tally]]
    returned: Returned | None = None

    def state(self) -> tuple:
        """Plain data for `from_state` (a checkpoint)."""
        returned = None if self.returned is None else dataclasses.astuple(self.returned)
        return self.first_at_s, [(ordinal, tuple(t)) for ordinal, t in self.settled], returned

    @classmethod
    def from_state(cls, state: tuple, returned_type: Callable[..., Returned]) -> Unlent:
        first_at_s, settled, returned = state
        return cls(first_at_s, [(ordinal, Tally(*t)) for ordinal, t in settled],
                   None if returned is None else returned_type(*returned))


class Rejoining:
    """`KeyCounts`' part that counts what gateways tell a restarted actor (module docstring), on `KeyCounts`'
    state: its meter, leases lent (`_lent`), exact holds, the grants it is done with (`_forgotten`) and what
    came early (`_unlent`, `_unheld`), with its lease bookkeeping (`_lend`, `_count_settled`, `_give_back`,
    `_forget_if_done`, `settle`)."""

    meter: UsageMeter
    clock: Callable[[], float]
    _lent: dict[str, Any]
    _holds: dict[str, tuple[Reservation, str]]
    _forgotten: dict[str, float]
    _unlent: dict[str, Unlent]
    _unheld: dict[str, tuple[int | None, float, float]]

    def _reopen(self, reopened: Reopened, gateway_id: str) -> None:
        """Counts what of lease `reopened.lease` is not counted here: all of it if it is not known (lent by a
        predecessor after its last checkpoint: in full as if lent now, its requests then counting a little
        longer than they would have, never fewer; with what came for it here before), else the settlements
        and the return its checkpoint lacks. Nothing for a lease done with."""
        lease_id = reopened.lease.lease_id
        lent = self._lent.get(lease_id)
        returned_early = None
        if lent is None:
            if lease_id in self._forgotten:  # every request it admitted is counted, and its return
                return
            lent = self._lend(reopened.lease, gateway_id, self.clock())
            unlent = self._unlent.pop(lease_id, None)
            if unlent is not None:
                for ordinal, settled in unlent.settled:
                    if lent.counted.add(ordinal, settled):
                        self._count_settled(lent, 1, settled, is_spent=True)  # (spent when it came)
                returned_early = unlent.returned
        num_missing, missing = lent.counted.catch_up(reopened.num_settled, reopened.settled)
        if num_missing:
            self._count_settled(lent, num_missing, missing)
        for returned in (reopened.returned, returned_early):
            if returned is not None:
                self._give_back(returned)  # (once: a lease given back is not given back again)
        self._forget_if_done(lease_id, lent)

    def _rehold(self, reheld: Reheld, gateway_id: str) -> None:
        """Counts a request a predecessor admitted exactly after its last checkpoint (with its cost, if settled:
        as its gateway tells it, or as a settlement that came first says), or settles a hold the checkpoint has
        that its gateway tells settled (by the predecessor after its last checkpoint: that `Settled` is lost)."""
        if reheld.hold_id in self._holds:
            if reheld.usd_settled is not None:
                self.settle(reheld.hold_id, reheld.num_tokens_used, reheld.usd_settled)
            return
        if reheld.hold_id in self._forgotten:
            return
        now_s = self.clock()
        early = self._unheld.pop(reheld.hold_id, None)
        if reheld.usd_settled is not None:  # (then `early`, if any, is this very settlement)
            num_tokens, usd = reheld.num_tokens_used, reheld.usd_settled
        elif early is not None:
            num_tokens, usd = early[0], early[1]
        else:
            self._holds[reheld.hold_id] = (self.meter.reserve(reheld.key_id, now_s, reheld.num_tokens, reheld.usd), gateway_id)
            return
        self.meter.reserve(reheld.key_id, now_s, reheld.num_tokens if num_tokens is None else num_tokens)
        self.meter.add_spend(reheld.key_id, usd, now_s)
        self._forgotten[reheld.hold_id] = now_s

    if TYPE_CHECKING:  # KeyCounts' own
        def _lend(self, lease: KeyLease, gateway_id: str, now_s: float) -> Any: ...
        def _count_settled(self, lent: Any, num_settled: int, settled: Tally, is_spent: bool = False) -> None: ...
        def _give_back(self, returned: Returned) -> None: ...
        def _forget_if_done(self, lease_id: str, lent: Any) -> None: ...
        def settle(self, hold: Any, num_tokens: int | None, usd: float, num_settled: int = 0) -> None: ...
