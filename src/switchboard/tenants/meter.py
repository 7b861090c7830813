"""`UsageMeter`: each key's recent requests and its spend, in memory, fed by the gateway and seeded at start
from the request log (spend survives a restart; the one-minute windows start empty).

Not thread-safe: used from the gateway's one event loop. Each gateway process meters on its own (several
processes behind a balancer each enforce the full rate limit; budgets are rebuilt from the shared log at start).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence

from switchboard.tenants.limits import WINDOW_S, UsageSnapshot, WindowEntry, day_of, month_of


Reservation = WindowEntry  # what `reserve` returns and `settle` takes

EntryRef = tuple
"""Names a reservation in a `MeterDump`: ("w", key, position in its window), or ("v", key, at_s, tokens, USD
held) for one no longer in its window."""


class _KeyUsage:
    __slots__ = ("window", "num_tokens", "day", "usd_day", "month", "usd_month", "usd_held", "num_holding")

    def __init__(self) -> None:
        self.window: deque[WindowEntry] = deque()
        self.num_tokens = 0  # the sum over `window`, kept as entries come, go and settle
        self.day = -1
        self.usd_day = 0.0
        self.month = -1
        self.usd_month = 0.0
        self.usd_held = 0.0  # the sum of the holds of the requests in flight
        self.num_holding = 0


class UsageMeter:
    """Keys' usage over a sliding window of `window_s` (a minute: `limits.WINDOW_S`) and their spend."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._keys: dict[str, _KeyUsage] = {}

    def _usage(self, key_id: str) -> _KeyUsage:
        usage = self._keys.get(key_id)
        if usage is None:
            usage = self._keys[key_id] = _KeyUsage()
        return usage

    def snapshot(self, key_id: str, now_s: float) -> UsageSnapshot:
        """The key's usage at `now_s`. Its `window` is the meter's own (not a copy): read it before the next
        `reserve` or `settle`."""
        usage = self._keys.get(key_id)
        if usage is None:
            return UsageSnapshot()
        window = usage.window
        while window and window[0].at_s <= now_s - self.window_s:
            gone = window.popleft()
            gone.in_window = False
            usage.num_tokens -= gone.num_tokens
        return UsageSnapshot(len(window), usage.num_tokens, usage.usd_day if usage.day == day_of(now_s) else 0.0,
                             usage.usd_month if usage.month == month_of(now_s) else 0.0, window, usage.usd_held)

    def reserve(self, key_id: str, now_s: float, num_tokens_estimate: int, usd_estimate: float = 0.0) -> Reservation:
        """Counts an admitted request (and its estimated tokens) in its key's window, and holds its estimated
        cost against the key's budgets until `settle` (or `release`)."""
        reservation = Reservation(key_id, now_s, num_tokens_estimate)
        usage = self._usage(key_id)
        usage.window.append(reservation)
        usage.num_tokens += num_tokens_estimate
        self.hold(reservation, usd_estimate)
        return reservation

    def hold(self, reservation: Reservation, usd_estimate: float) -> None:
        """Sets the cost `reservation` holds (a better estimate once its expert is known)."""
        usage = self._usage(reservation.key_id)
        if reservation.usd_held > 0:
            usage.usd_held -= reservation.usd_held
            usage.num_holding -= 1
        reservation.usd_held = max(usd_estimate, 0.0)
        if reservation.usd_held > 0:
            usage.usd_held += reservation.usd_held
            usage.num_holding += 1
        if usage.num_holding == 0:
            usage.usd_held = 0.0  # no float residue once nothing is held

    def retoken(self, reservation: Reservation, num_tokens_delta: int) -> None:
        """Adds `num_tokens_delta` (may be negative) to the tokens `reservation` counts (a cluster quota lease's
        tokens as its requests settle, `switchboard.cluster.ray_limits`)."""
        if reservation.in_window:
            self._usage(reservation.key_id).num_tokens += num_tokens_delta
        reservation.num_tokens += num_tokens_delta

    def unreserve(self, reservations: list[Reservation]) -> None:
        """Takes `reservations` (of one key) out of its window and drops their holds, as if never admitted (the
        unused slots of a quota lease, given back). One pass over the window, however many."""
        gone = {id(r) for r in reservations if r.in_window}
        if gone:
            usage = self._usage(reservations[0].key_id)
            usage.window = deque(entry for entry in usage.window if id(entry) not in gone)
        for reservation in reservations:
            if reservation.in_window:
                self._usage(reservation.key_id).num_tokens -= reservation.num_tokens
                reservation.in_window = False
            self.release(reservation)

    def release(self, reservation: Reservation) -> None:
        """Drops the request's hold without spending (it never ran, or settles elsewhere); idempotent."""
        self.hold(reservation, 0.0)

    def settle(self, reservation: Reservation, num_tokens: int | None, usd: float, now_s: float) -> None:
        """The request finished: its real token count replaces the estimate (None keeps the estimate: a failed
        request's size is unknown), its hold is dropped and its cost is added to today's and this month's spend."""
        if num_tokens is not None:
            if reservation.in_window:
                self._usage(reservation.key_id).num_tokens += num_tokens - reservation.num_tokens
            reservation.num_tokens = num_tokens
        self.release(reservation)
        self.add_spend(reservation.key_id, usd, now_s)

    def add_spend(self, key_id: str, usd: float, now_s: float) -> None:
        usage = self._usage(key_id)
        day, month = day_of(now_s), month_of(now_s)
        if usage.day != day:
            usage.day, usage.usd_day = day, 0.0
        if usage.month != month:
            usage.month, usage.usd_month = month, 0.0
        usage.usd_day += usd
        usage.usd_month += usd

    def seed(self, key_id: str, usd_today: float, usd_this_month: float, now_s: float) -> None:
        """Sets a key's spend so far (from the request log at start). A meter that already counted more (a
        shared meter seeded by several gateways, each from its own log) keeps its own count."""
        usage = self._usage(key_id)
        day, month = day_of(now_s), month_of(now_s)
        usage.usd_day = max(usd_today, usage.usd_day if usage.day == day else 0.0)
        usage.usd_month = max(usd_this_month, usage.usd_month if usage.month == month else 0.0)
        usage.day, usage.month = day, month

    # ---- plain-data copies (the Ray control actor's checkpoint, `switchboard.cluster.ray_limits`)

    def dump(self, now_s: float) -> MeterDump:
        """Every key's usage at `now_s` as plain data (lists of numbers, made now: later changes to this meter do
        not touch them), with a way to name its reservations (`MeterDump.ref`, `run`). About 0.1 µs per window
        entry: no object per entry (pickling the meter's own objects costs ~2.7 µs per entry)."""
        keys = {}
        windows = {}
        for key_id, usage in self._keys.items():
            self.snapshot(key_id, now_s)  # drops what left the window
            entries = list(usage.window)
            windows[key_id] = entries
            keys[key_id] = ((usage.num_tokens, usage.day, usage.usd_day, usage.month, usage.usd_month, usage.usd_held,
                             usage.num_holding), [e.at_s for e in entries], [e.num_tokens for e in entries],
                            [e.usd_held for e in entries])
        return MeterDump(self.window_s, keys, windows)

    @classmethod
    def load(cls, state: tuple) -> tuple[UsageMeter, Callable[[EntryRef], WindowEntry | list[WindowEntry]]]:
        """A meter counting what `MeterDump.state` holds, and a function giving back the reservation an
        `EntryRef` (or a `run`) names in it."""
        window_s, keys = state
        meter = cls(window_s)
        windows: dict[str, list[WindowEntry]] = {}
        for key_id, (scalars, at_s, tokens, usd_held) in keys.items():
            usage = meter._usage(key_id)
            (usage.num_tokens, usage.day, usage.usd_day, usage.month, usage.usd_month, usage.usd_held,
             usage.num_holding) = scalars
            entries = windows[key_id] = [WindowEntry(key_id, a, t, u) for a, t, u in zip(at_s, tokens, usd_held)]
            usage.window = deque(entries)

        def resolve(ref: EntryRef) -> WindowEntry | list[WindowEntry]:
            if ref[0] == "w":
                return windows[ref[1]][ref[2]]
            if ref[0] == "r":
                return windows[ref[1]][ref[2]:ref[2] + ref[3]]
            entry = WindowEntry(ref[1], ref[2], ref[3], ref[4])
            entry.in_window = False
            return entry

        return meter, resolve


class MeterDump:
    """`UsageMeter.dump`'s answer: `state` (plain data for `UsageMeter.load`) and names for the meter's
    reservations, valid until the meter changes."""

    def __init__(self, window_s: float, keys: dict[str, tuple], windows: dict[str, list[WindowEntry]]) -> None:
        self.state = (window_s, keys)
        self._windows = windows
        self._positions: dict[str, dict[int, int]] = {}

    def _position(self, entry: WindowEntry) -> int:
        """The entry's position in its key's window: by bisection on the window's times (they grow as entries
        are appended), an identity map of the window where they do not (a clock stepped back)."""
        entries = self._windows[entry.key_id]
        times = self.state[1][entry.key_id][1]
        i = bisect.bisect_left(times, entry.at_s)
        while i < len(entries) and times[i] == entry.at_s:
            if entries[i] is entry:
                return i
            i += 1
        positions = self._positions.get(entry.key_id)
        if positions is None:
            positions = self._positions[entry.key_id] = {id(e): j for j, e in enumerate(entries)}
        return positions[id(entry)]

    def ref(self, entry: WindowEntry) -> EntryRef:
        if entry.in_window:
            return ("w", entry.key_id, self._position(entry))
        return ("v", entry.key_id, entry.at_s, entry.num_tokens, entry.usd_held)

    def run(self, entries: Sequence[WindowEntry]) -> EntryRef | tuple[EntryRef, ...]:
        """Names `entries` (a quota lease's: appended together, so side by side in the window while none has left
        it) as one ("r", key, start, count), or, where they are not side by side, one `ref` each."""
        first = entries[0]
        if first.in_window:
            window = self._windows[first.key_id]
            start = self._position(first)
            if window[start:start + len(entries)] == list(entries):  # identity: entries define no __eq__
                return ("r", first.key_id, start, len(entries))
        return tuple(self.ref(e) for e in entries)
