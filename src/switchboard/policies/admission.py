"""Admission: admit a request, queue it while a replica starts, or reject it early — never let it time out.

Variants (`AdmissionSettings.kind`):

- `always`: admit everything that has (or can get) a replica; 503 only when no replica can ever come up.
- `slo`: per-request TTFT SLO with early rejection (Mooncake, Qin et al., FAST'25: under overload, reject at
  arrival what would miss its SLO rather than waste prefill on it). The predicted TTFT on the best replica —
  queueing + prefill, plus the rest of its cold start if it is still starting — is compared with what is left
  of the request's SLO. A request that has to *wake* an expert (no warm replica) may take
  `cold_start_allowance_s` longer: the operator's price for scale-to-zero. A live request's prediction counts
  the live requests queued ahead only: a batch's queued requests start after it (`policies/ordering.py`); and
  it is not refused for the wait a batch's *running* requests cause (they are not preempted: it waits for them,
  but a refusal would give the replica back to the batch, and every live request would be refused while a batch
  ran on a one-sequence replica).

Verdicts and HTTP mapping: `admit` / `queue-for-start` → served; `reject-overloaded` → 429 (warm replicas exist
but are too busy; Retry-After ≈ how late it would be); `reject-unavailable` → 503 (no replica can be serving in
time; Retry-After ≈ the cold start, which `wake_expert` asks the control step to begin anyway).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math

from pydantic import Field

from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ReplicaId, Seconds
from switchboard.frozen import fast_init


class AdmissionKind(str, enum.Enum):
    ALWAYS = "always"
    SLO = "slo"


class AdmissionSettings(PolicySettings):
    kind: AdmissionKind = AdmissionKind.SLO
    cold_start_allowance_s: float = Field(
        120.0, ge=0, description="Extra TTFT a request that wakes a cold expert may take beyond its SLO."
    )
    retry_after_unavailable_s: float = Field(30.0, gt=0, description="Retry-After when no replica can be placed.")


class Verdict(str, enum.Enum):
    ADMIT = "admit"
    QUEUE_FOR_START = "queue-for-start"
    REJECT_OVERLOADED = "reject-overloaded"
    REJECT_UNAVAILABLE = "reject-unavailable"

    @property
    def status_code(self) -> int:
        return {Verdict.REJECT_OVERLOADED: 429, Verdict.REJECT_UNAVAILABLE: 503}.get(self, 200)

    @property
    def is_admitted(self) -> bool:
        return self in (Verdict.ADMIT, Verdict.QUEUE_FOR_START)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionInputs:
    """What admission looks at for one request (built by `gather`)."""

    request: QueuedRequest
    budget_s: Seconds
    """What is left of the request's TTFT SLO now."""
    is_external: bool
    has_warm_replica: bool
    best_replica_id: ReplicaId
    """'' when the expert has no accepting replica."""
    best_ttft_s: Seconds
    """Predicted TTFT on the best accepting replica; meaningless without one."""
    best_is_warm: bool
    own_ttft_s: Seconds
    """The request's own prefill on the best accepting replica, nothing ahead of it: the TTFT no schedule can
    beat there (0 without a replica)."""
    batch_delay_s: Seconds
    """Of `best_ttft_s`, the wait for a batch's requests running on that replica (a live request only; 0 else):
    the operator's own background work, which `slo` does not refuse a live request for."""
    wake: predict.WakeOption
    new_replica_ttft_s: Seconds

    @property
    def has_replica(self) -> bool:
        return bool(self.best_replica_id)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionDecision:
    verdict: Verdict
    expected_ttft_s: Seconds
    retry_after_s: int
    """Whole seconds for the Retry-After header; 0 when admitted."""
    wake_expert: bool
    """Start a new replica for this expert (queue-for-start with no starting replica, or a 503 worth retrying)."""
    reason: Reason

    @property
    def status_code(self) -> int:
        return self.verdict.status_code


def gather(snapshot: FleetSnapshot, request: QueuedRequest, *, reclaim_idle_memory: bool = False) -> AdmissionInputs:
    expert_id = request.expert_id
    spec = snapshot.experts[expert_id]
    options = [(predict.ttft_s(snapshot, r, request.num_prompt_tokens, is_background=request.is_background),
                r.replica_id) for r in snapshot.accepting_replicas_of(expert_id)]
    wake = predict.wake_option(snapshot, expert_id, reclaim_idle_memory=reclaim_idle_memory)
    best_ttft_s, best_id = min(options) if options else (0.0, ReplicaId(""))
    own_ttft_s = request.num_prompt_tokens / predict.prefill_tokens_per_s(snapshot, snapshot.replicas[best_id]) if options else 0.0
    batch_delay_s = 0.0
    if options and not request.is_background and snapshot.replicas[best_id].load.num_running_background:
        batch_delay_s = best_ttft_s - predict.ttft_s(snapshot, snapshot.replicas[best_id], request.num_prompt_tokens,
                                                     without_running_background=True)
    return AdmissionInputs(
        request=request,
        budget_s=request.deadline_at - snapshot.now_s,
        is_external=spec.is_external,
        has_warm_replica=bool(snapshot.warm_replicas_of(expert_id)),
        best_replica_id=best_id,
        best_ttft_s=best_ttft_s,
        best_is_warm=bool(options) and snapshot.replicas[best_id].is_warm,
        own_ttft_s=own_ttft_s,
        batch_delay_s=batch_delay_s,
        wake=wake,
        new_replica_ttft_s=wake.cold_start_s + request.num_prompt_tokens / _fastest_prefill(snapshot, expert_id),
    )


def _fastest_prefill(snapshot: FleetSnapshot, expert_id) -> float:
    """Prefill tokens/s of the expert on the fastest hardware kind in the fleet (1.0 if it has no estimate)."""
    memo = snapshot.catalog_memo()  # a function of the workers' kinds and the estimates only
    fastest = memo.get((_FASTEST_PREFILL_KEY, expert_id))
    if fastest is None:
        estimates = (snapshot.estimate(expert_id, hw) for hw in snapshot.max_free_gb_by_hardware())
        fastest = max((e.prefill_tokens_per_s for e in estimates if e is not None), default=1.0)
        memo[(_FASTEST_PREFILL_KEY, expert_id)] = fastest
    return fastest


_FASTEST_PREFILL_KEY = "admission.fastest_prefill"


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class AdmissionPolicy(abc.ABC):
    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def judge(self, inputs: AdmissionInputs) -> AdmissionDecision:
        """The decision for a non-external request."""

    def admit(
        self, snapshot: FleetSnapshot, request: QueuedRequest, *, reclaim_idle_memory: bool = False
    ) -> AdmissionDecision:
        """Guarantee: a request for an expert with no accepting replica is either queued with `wake_expert`
        or rejected with a Retry-After; never admitted to nothing.

        `reclaim_idle_memory`: count memory held by idle warm replicas of other experts as free (the caller
        evicts one to start this expert).
        """
        inputs = gather(snapshot, request, reclaim_idle_memory=reclaim_idle_memory)
        if inputs.is_external:
            return AdmissionDecision(Verdict.ADMIT, 0.0, 0, False, Reason(Verdict.ADMIT, "external upstream"))
        return self.judge(inputs)

    # Shared outcomes, so variants differ only in *when* they apply.

    def _on_replica(self, inputs: AdmissionInputs) -> AdmissionDecision:
        verdict = Verdict.ADMIT if inputs.best_is_warm else Verdict.QUEUE_FOR_START
        return AdmissionDecision(verdict, inputs.best_ttft_s, 0, False, Reason(
            verdict, f"predicted TTFT {inputs.best_ttft_s:.2f}s on {inputs.best_replica_id}, budget {inputs.budget_s:.2f}s"))

    def _wake(self, inputs: AdmissionInputs) -> AdmissionDecision:
        return AdmissionDecision(Verdict.QUEUE_FOR_START, inputs.new_replica_ttft_s, 0, True, Reason(
            Verdict.QUEUE_FOR_START,
            f"cold: a new replica serves in ~{inputs.new_replica_ttft_s:.1f}s, budget {inputs.budget_s:.2f}s"))

    def _unavailable(self, inputs: AdmissionInputs) -> AdmissionDecision:
        if inputs.wake.is_placeable:
            detail = (f"a new replica needs ~{inputs.new_replica_ttft_s:.1f}s, over the budget "
                      f"{inputs.budget_s:.2f}s + {self.settings.cold_start_allowance_s:.0f}s allowance; waking it")
            return AdmissionDecision(Verdict.REJECT_UNAVAILABLE, inputs.new_replica_ttft_s,
                                     _retry_after(inputs.wake.cold_start_s), True,
                                     Reason(Verdict.REJECT_UNAVAILABLE, detail))
        return AdmissionDecision(Verdict.REJECT_UNAVAILABLE, 0.0, _retry_after(self.settings.retry_after_unavailable_s),
                                 False, Reason(Verdict.REJECT_UNAVAILABLE, "no worker can host a replica now"))


ADMISSION_POLICIES: Registry[AdmissionKind, AdmissionPolicy] = Registry("admission")


@ADMISSION_POLICIES.register(AdmissionKind.ALWAYS)
class AlwaysAdmit(AdmissionPolicy):
    def judge(self, inputs: AdmissionInputs) -> AdmissionDecision:
        if inputs.has_replica:
            return self._on_replica(inputs)
        return self._wake(inputs) if inputs.wake.is_placeable else self._unavailable(inputs)


@ADMISSION_POLICIES.register(AdmissionKind.SLO)
class SloAdmission(AdmissionPolicy):
    """Rejects what load would make late. A request whose own prefill alone outlasts its SLO (a long prompt on a
    slow replica) could never meet it: its target is that floor instead, so it is served once nothing is ahead of
    it, rather than told to retry forever (Mooncake's early rejection sheds load; it does not refuse work the
    hardware can only do slower than the SLO)."""

    def judge(self, inputs: AdmissionInputs) -> AdmissionDecision:
        allowance_s = 0.0 if inputs.has_warm_replica else self.settings.cold_start_allowance_s
        # A batch's running requests delay a live one past its budget by their rest (no preemption), but
        # refusing it would hand the replica back to the batch: the wait they cause is added to its target.
        target_s = max(inputs.budget_s, inputs.own_ttft_s) + inputs.batch_delay_s
        if inputs.has_replica and inputs.best_ttft_s <= target_s + allowance_s:
            return self._on_replica(inputs)
        if inputs.has_warm_replica:
            late_s = inputs.best_ttft_s - target_s
            floor = f" (its own prefill {inputs.own_ttft_s:.2f}s)" if inputs.own_ttft_s > inputs.budget_s else ""
            if inputs.batch_delay_s > 0:
                floor += f" (+{inputs.batch_delay_s:.2f}s for a batch's requests running)"
            return AdmissionDecision(Verdict.REJECT_OVERLOADED, inputs.best_ttft_s, _retry_after(late_s), False, Reason(
                Verdict.REJECT_OVERLOADED,
                f"predicted TTFT {inputs.best_ttft_s:.2f}s on {inputs.best_replica_id} misses the budget "
                f"{target_s:.2f}s{floor} by {late_s:.2f}s"))
        if inputs.wake.is_placeable and inputs.new_replica_ttft_s <= inputs.budget_s + allowance_s:
            return self._wake(inputs)
        return self._unavailable(inputs)


def make_admission(settings: AdmissionSettings) -> AdmissionPolicy:
    return ADMISSION_POLICIES.create(settings)
