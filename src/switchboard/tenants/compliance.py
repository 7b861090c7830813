"""A key's quality floor and cost ceiling at admission, as a pure function: given the expert routing chose
under the key's limits (or None: no expert meets them for this prompt) and the experts the request's own
constraints allow, `decide` says serve, degrade or reject (docs/tenants.md, "Quality floor and cost ceiling").

- A compliant expert that is ready (a warm replica, or an external backend) is served.
- A compliant expert that is *not* ready (scaled to zero, starting), and no other compliant expert is ready
  (then that one is served): `queue` serves the cold one anyway, the request
  waiting for its replica like any other (bounded by `control_plane.start_timeout_s` and the request timeout);
  `degrade` serves the ready expert that violates the limits least, if there is one; `reject` answers 503 at
  once, with Retry-After, naming the limit.
- No compliant expert at all: `degrade` serves the expert that violates least (ready ones first); `queue` and
  `reject` answer 403 naming the limit (waiting cannot make an expert cheaper or better).

Predicted quality may be unknown (a named model the router was not trained on, or no router loaded): an
unknown quality does not violate the floor, and the decision says it is unknown.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from switchboard.tenants.keys import KeyLimits, OnViolation

QUALITY_FLOOR = "quality_floor"
COST_CEILING = "usd_per_mtok_ceiling"
REJECT_RETRY_AFTER_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class ExpertOption:
    expert_id: str
    predicted_quality: float | None  # None: unknown
    usd_per_mtok: float
    is_ready: bool


class Verdict(str, enum.Enum):
    SERVE = "serve"
    DEGRADE = "degrade"
    REJECT = "reject"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    expert_id: str | None = None
    violated: tuple[str, ...] = ()
    status: int = 0  # for REJECT: 403 (no expert can comply) or 503 (a compliant one is not ready)
    retry_after_s: float | None = None
    wake_expert_id: str | None = None  # for a 503: the compliant expert to start so a retry finds it ready
    message: str = ""


def tighter_floor(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def tighter_ceiling(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def violations(option: ExpertOption, limits: KeyLimits) -> tuple[str, ...]:
    out = []
    if limits.quality_floor is not None and option.predicted_quality is not None and option.predicted_quality < limits.quality_floor:
        out.append(QUALITY_FLOOR)
    if limits.usd_per_mtok_ceiling is not None and option.usd_per_mtok > limits.usd_per_mtok_ceiling:
        out.append(COST_CEILING)
    return tuple(out)


def violation_size(option: ExpertOption, limits: KeyLimits) -> float:
    """How far outside the limits, each as a fraction of its limit, summed (0 = compliant)."""
    size = 0.0
    if QUALITY_FLOOR in violations(option, limits):
        assert limits.quality_floor is not None and option.predicted_quality is not None
        size += (limits.quality_floor - option.predicted_quality) / max(limits.quality_floor, 1e-9)
    if COST_CEILING in violations(option, limits):
        assert limits.usd_per_mtok_ceiling is not None
        size += (option.usd_per_mtok - limits.usd_per_mtok_ceiling) / max(limits.usd_per_mtok_ceiling, 1e-9)
    return size


def least_violating(options: Sequence[ExpertOption], limits: KeyLimits) -> ExpertOption | None:
    """Ready experts first, then the smallest violation, then the best predicted quality, then the order given."""
    ranked = sorted(enumerate(options), key=lambda io: (not io[1].is_ready, violation_size(io[1], limits),
                                                         -(io[1].predicted_quality or 0.0), io[0]))
    return ranked[0][1] if ranked else None


def describe_limits(limits: KeyLimits, names: Sequence[str]) -> str:
    parts = []
    if QUALITY_FLOOR in names:
        parts.append(f"quality floor {limits.quality_floor:g}")
    if COST_CEILING in names:
        parts.append(f"cost ceiling {limits.usd_per_mtok_ceiling:g} USD/Mtok")
    return " and ".join(parts) or "limits"


def _describe_option(option: ExpertOption) -> str:
    quality = "unknown" if option.predicted_quality is None else f"{option.predicted_quality:.2f}"
    return f"'{option.expert_id}' (predicted quality {quality}, {option.usd_per_mtok:g} USD/Mtok)"


def decide(limits: KeyLimits, compliant: ExpertOption | None, allowed: Sequence[ExpertOption]) -> Decision:
    """`compliant`: the expert routing chose under the key's limits, or None if none meets them. `allowed`:
    the experts the request's own constraints allow (may include `compliant`)."""
    policy = limits.on_violation
    if compliant is not None:
        if compliant.is_ready or policy is OnViolation.QUEUE:
            return Decision(Verdict.SERVE, compliant.expert_id)
        # Routing preferred a cold compliant expert over a warm one that also complies: take the warm one.
        ready_compliant = next((o for o in allowed if o.is_ready and not violations(o, limits)), None)
        if ready_compliant is not None:
            return Decision(Verdict.SERVE, ready_compliant.expert_id)
        if policy is OnViolation.DEGRADE:
            ready = [o for o in allowed if o.is_ready]
            best = least_violating(ready, limits)
            if best is None:
                return Decision(Verdict.SERVE, compliant.expert_id)
            return _degrade(limits, best, f"the experts meeting the key's limits are not ready; serving {_describe_option(best)}")
        names = tuple(n for n in (QUALITY_FLOOR, COST_CEILING) if getattr(limits, n) is not None)
        return Decision(Verdict.REJECT, None, names, 503, REJECT_RETRY_AFTER_S, compliant.expert_id,
                        f"the expert meeting this key's {describe_limits(limits, names)}, '{compliant.expert_id}', is starting "
                        f"and the key's policy is to reject rather than wait or degrade; retry after {REJECT_RETRY_AFTER_S:.0f} s")
    best = least_violating(allowed, limits)
    if best is None:
        names = tuple(n for n in (QUALITY_FLOOR, COST_CEILING) if getattr(limits, n) is not None)
        return Decision(Verdict.REJECT, None, names, 403, None, None, f"no expert meets this key's {describe_limits(limits, names)}")
    names = violations(best, limits)
    if policy is OnViolation.DEGRADE:
        return _degrade(limits, best, f"no expert meets the key's {describe_limits(limits, names)}; serving the closest, {_describe_option(best)}")
    why = "; waiting cannot help, so the key's queue policy rejects it too" if policy is OnViolation.QUEUE else ""
    return Decision(Verdict.REJECT, None, names, 403, None, None,
                    f"no expert meets this key's {describe_limits(limits, names)}: the closest is {_describe_option(best)}{why}")


def _degrade(limits: KeyLimits, option: ExpertOption, message: str) -> Decision:
    violated = violations(option, limits)
    if not violated:  # a compliant expert the router ranked lower, but ready: no degradation at all
        return Decision(Verdict.SERVE, option.expert_id)
    return Decision(Verdict.DEGRADE, option.expert_id, violated, message=message)
