"""The quality-floor / cost-ceiling decision: every policy in every situation (docs/tenants.md's table)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switchboard.tenants.compliance import COST_CEILING, QUALITY_FLOOR, ExpertOption, Verdict, decide, least_violating, violations
from switchboard.tenants.keys import KeyLimits, OnViolation

GOOD = ExpertOption("good", 0.8, 1.0, True)
GOOD_COLD = ExpertOption("good", 0.8, 1.0, False)
WEAK = ExpertOption("weak", 0.4, 0.1, True)
WEAKER = ExpertOption("weaker", 0.2, 0.1, True)
UNKNOWN = ExpertOption("unknown", None, 0.0, True)


def limits(policy: OnViolation, **kw) -> KeyLimits:
    return KeyLimits(quality_floor=kw.get("floor", 0.5), usd_per_mtok_ceiling=kw.get("ceiling"), on_violation=policy)


def test_a_ready_compliant_expert_is_served_whatever_the_policy():
    for policy in OnViolation:
        assert decide(limits(policy), GOOD, [GOOD, WEAK]).verdict is Verdict.SERVE


def test_compliant_but_cold():
    assert decide(limits(OnViolation.QUEUE), GOOD_COLD, [GOOD_COLD, WEAK]).expert_id == "good"  # waits for it
    degraded = decide(limits(OnViolation.DEGRADE), GOOD_COLD, [GOOD_COLD, WEAK, WEAKER])
    assert (degraded.verdict, degraded.expert_id, degraded.violated) == (Verdict.DEGRADE, "weak", (QUALITY_FLOOR,))
    assert decide(limits(OnViolation.DEGRADE), GOOD_COLD, [GOOD_COLD]).verdict is Verdict.SERVE  # nothing ready: wait
    also_good = ExpertOption("also-good", 0.7, 1.0, True)  # routing preferred the cold one; a warm one complies too
    for policy in (OnViolation.DEGRADE, OnViolation.REJECT):
        assert decide(limits(policy), GOOD_COLD, [GOOD_COLD, WEAK, also_good]) == decide(limits(policy), also_good, [])
    rejected = decide(limits(OnViolation.REJECT), GOOD_COLD, [GOOD_COLD, WEAK])
    assert (rejected.verdict, rejected.status, rejected.wake_expert_id) == (Verdict.REJECT, 503, "good") and rejected.retry_after_s


def test_nothing_compliant():
    degraded = decide(limits(OnViolation.DEGRADE), None, [WEAKER, WEAK])
    assert (degraded.verdict, degraded.expert_id) == (Verdict.DEGRADE, "weak")
    for policy in (OnViolation.QUEUE, OnViolation.REJECT):
        rejected = decide(limits(policy), None, [WEAKER, WEAK])
        assert (rejected.verdict, rejected.status, rejected.violated) == (Verdict.REJECT, 403, (QUALITY_FLOOR,))
        assert "'weak'" in rejected.message and "quality floor 0.5" in rejected.message
    assert decide(limits(OnViolation.DEGRADE), None, []).status == 403


def test_unknown_quality_meets_the_floor_but_not_a_ceiling():
    assert violations(UNKNOWN, limits(OnViolation.REJECT, floor=0.99)) == ()
    pricey = ExpertOption("pricey", None, 2.0, True)
    assert violations(pricey, limits(OnViolation.REJECT, ceiling=1.0)) == (COST_CEILING,)


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 10), st.booleans()), min_size=1, max_size=8), st.floats(0, 1), st.floats(0, 10))
def test_degrade_never_picks_a_worse_violator_among_ready_experts(raw, floor, ceiling):
    options = [ExpertOption(f"e{i}", q, p, r) for i, (q, p, r) in enumerate(raw)]
    key = KeyLimits(quality_floor=floor, usd_per_mtok_ceiling=ceiling, on_violation=OnViolation.DEGRADE)
    best = least_violating(options, key)
    decision = decide(key, None, options)
    assert decision.verdict is not Verdict.REJECT and decision.expert_id == best.expert_id
    if any(o.is_ready for o in options):
        assert best.is_ready
