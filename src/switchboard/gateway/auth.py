"""API keys at the gateway (docs/tenants.md): `AuthMiddleware` checks `Authorization: Bearer` on /v1/* and
the admin key on /admin/*; `TenantGate` applies a key's rate limits, budgets, quality floor and cost ceiling
where the handlers choose an expert; `MeteringLog` feeds each finished request's real usage back.

The caller travels with the request in a context variable (like the request id in logs), so the handlers
need one call each: `gate.resolve(...)` in place of choosing directly. Policies live in switchboard.tenants;
this module is their adapter to HTTP. A secret is never logged, stored or echoed: errors name the key by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from switchboard.config.schema import ExpertConfig, SwitchboardConfig
from switchboard.gateway.choosing import ChoiceError, ExpertChoice
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.schemas import RoutingParams
from switchboard.engines.base import Usage
from switchboard.observability.logs import key_id_var
from switchboard.storage import database
from switchboard.storage.writer import expert_prices, usd_of
from switchboard.tenants import compliance as cp
from switchboard.tenants import limits as lim
from switchboard.tenants.keys import ApiKey, OnViolation, digest_of
from switchboard.tenants.ledger import KeyLedger, LocalLedger
from switchboard.tenants.meter import UsageMeter
from switchboard.tenants.registry import KeyRegistry
from switchboard.types import AUTO_MODEL

POLICY_HEADER = "x-switchboard-key-policy"
Resolve = Callable[[str, Any, str], Awaitable[tuple[ExpertConfig, ExpertChoice | None]]]


@dataclasses.dataclass(slots=True)
class Caller:
    """The key a request came with, its window entry once admitted, and what to tell the client about policy."""

    key: ApiKey
    reservation: Any = None
    """The request's hold in the key ledger once admitted (settled or released when it ends)."""
    policy_note: str | None = None
    rate_headers: dict[str, str] | None = None
    """OpenAI's `x-ratelimit-*` headers for the key's rpm and tpm, once admitted or refused (embedded ledger only)."""


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("switchboard_caller", default=None)


class OpenGate:
    """The gate when auth is off: no caller, no limits."""

    async def resolve(self, model: str, routing: RoutingParams | None, num_prompt_tokens: int, asked_max_tokens: int | None,
                      route_text: str, resolve: Resolve) -> tuple[ExpertConfig, ExpertChoice | None]:
        return await resolve(model, routing, route_text if model == AUTO_MODEL else "")

    async def admit(self, num_tokens: int, usd_estimate: Callable[[], float] = lambda: 0.0) -> None:
        return None


class AuthConfigError(RuntimeError):
    """Auth is enabled but cannot work (no admin key in the environment)."""


class TenantGate:
    """Keys, usage and key policies for one gateway. `start`/`stop` with the app's lifespan."""

    def __init__(self, config: SwitchboardConfig, environ: Mapping[str, str], fleet: Any, chooser: Any,
                 clock: Callable[[], float] = time.time) -> None:
        auth = config.auth
        admin_key = environ.get(auth.admin_key_env, "")
        if not admin_key:
            raise AuthConfigError(f"auth.enabled is true but the admin key variable ${auth.admin_key_env} is empty or unset")
        self.admin_digest = digest_of(admin_key)
        self.config = config
        self.fleet = fleet
        self.chooser = chooser
        self.clock = clock
        # A Ray fleet counts every gateway's requests in its control actor; embedded, this process counts its own.
        cluster_ledger = getattr(fleet, "key_ledger", None)
        self.ledger: KeyLedger = cluster_ledger() if cluster_ledger is not None else LocalLedger(UsageMeter(auth.rate_window_s), clock)
        self.prices = expert_prices(config)
        self.registry = KeyRegistry(config.storage.url or database.default_url(environ), auth.refresh_interval_s, self.ledger, clock)

    async def start(self) -> None:
        await self.registry.start()

    async def stop(self) -> None:
        await self.registry.stop()

    # ---- who is calling

    def authenticate(self, authorization: str | None, *, admin: bool) -> Caller | None:
        """The caller for an /v1/* request (admin=False) or None for an admin request. Raises ApiError 401
        (no, unknown or revoked key) or 403 (a valid key on the wrong side)."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        digest = digest_of(authorization[7:].strip())
        is_admin = hmac.compare_digest(digest, self.admin_digest)
        if admin:
            if is_admin:
                return None
            if self._valid(digest) is not None:
                raise ApiError(403, "this endpoint needs the admin key; an API key is not enough", code="admin_key_required")
            raise ApiError(401, "invalid admin key", code="invalid_api_key")
        if is_admin:
            raise ApiError(403, "the admin key is for /admin/* only; create an API key with `switchboard keys create`", code="admin_key_not_allowed")
        key = self._valid(digest)
        if key is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return Caller(key)

    def caller_for(self, key_id: str) -> Caller:
        """The caller for a request made on behalf of the key `key_id` (a request of its batch); ApiError 401 if the
        key is gone or revoked since."""
        key = _not_revoked(self.registry.by_id(key_id))
        if key is None:
            raise ApiError(401, f"API key {key_id} no longer exists", code="invalid_api_key")
        return Caller(key)

    def _valid(self, digest: str) -> ApiKey | None:
        return _not_revoked(self.registry.lookup(digest))

    # ---- admission: limits, then quality floor and cost ceiling

    async def resolve(self, model: str, routing: RoutingParams | None, num_prompt_tokens: int, asked_max_tokens: int | None,
                      route_text: str, resolve: Resolve) -> tuple[ExpertConfig, ExpertChoice | None]:
        """`resolve(model, routing, route_text)` as the key allows: raises ApiError 429/402 over a limit or
        budget, 403/503 when the key's quality floor or cost ceiling cannot be met and its policy rejects."""
        num_output_tokens = asked_max_tokens or self.config.defaults.max_tokens
        caller = await self.admit(num_prompt_tokens + num_output_tokens,
                            lambda: self.usd_estimate(model, num_prompt_tokens, num_output_tokens))
        if caller is None:
            return await resolve(model, routing, route_text if model == AUTO_MODEL else "")
        key = caller.key
        if not key.limits.has_answer_policy:
            return await resolve(model, routing, route_text if model == AUTO_MODEL else "")
        if model == AUTO_MODEL:
            return await self._resolve_auto(caller, routing, route_text, resolve)
        return await self._resolve_named(caller, model, routing, route_text, resolve)

    async def admit(self, num_tokens: int, usd_estimate: Callable[[], float] = lambda: 0.0) -> Caller | None:
        """The caller's rate limits and budgets for a request of about `num_tokens` tokens: raises ApiError
        429/402 over one, else reserves the tokens in the key's window and holds `usd_estimate()` against its
        budgets (both settled with the real usage when the request is logged; counted cluster-wide by the
        key ledger in Ray mode). None when the request came without a key."""
        caller = current_caller.get()
        if caller is None:
            return None
        key = caller.key
        usd = usd_estimate() if key.limits.has_budget else 0.0
        # Checked and reserved in one step: concurrent requests each see the others' counts and holds.
        verdict = await self.ledger.admit(key.key_id, key.limits, num_tokens, usd)
        rate_headers = getattr(self.ledger, "rate_headers", None)
        if rate_headers is not None and (key.limits.rpm is not None or key.limits.tpm is not None):
            caller.rate_headers = rate_headers(key.key_id, key.limits)
        if isinstance(verdict, lim.OverLimit):
            retry_after = str(max(1, round(verdict.retry_after_s)))
            raise ApiError(verdict.status, f"key {key.key_id} ('{key.name}'): {verdict.message}; retry after {retry_after} s",
                           code=f"{verdict.limit.value}_exceeded", headers={"retry-after": retry_after, "x-switchboard-limit": verdict.limit.value})
        caller.reservation = verdict
        return caller

    async def _resolve_auto(self, caller: Caller, routing: RoutingParams | None, text: str, resolve: Resolve) -> tuple[ExpertConfig, ExpertChoice | None]:
        limits = caller.key.limits
        try:
            expert, choice = await resolve(AUTO_MODEL, merge_routing(routing, limits.quality_floor, limits.usd_per_mtok_ceiling), text)
        except ApiError as exc:
            if exc.code != "no_expert_satisfies_routing":
                raise
            compliant = None
        else:
            compliant = self._option(expert, choice)
            if compliant.is_ready or limits.on_violation is OnViolation.QUEUE:
                if compliant.predicted_quality is None and limits.quality_floor is not None:
                    caller.policy_note = "quality-unknown"  # no router, or it does not know the expert
                return expert, choice
        # Not served as routed: what the request's own constraints allow (raises the usual 400 if nothing).
        expert_any, choice_any = await resolve(AUTO_MODEL, routing, text)
        allowed = [cp.ExpertOption(e, q, p, self.fleet.is_ready(e)) for e, q, p in (choice_any.candidates if choice_any else ())]
        if not allowed:  # no router: qualities unknown, prices known
            allowed = [self._option(e, None) for e in self.config.experts if _allows(routing, e)]
        decision = cp.decide(limits, compliant, allowed)
        if decision.verdict is cp.Verdict.REJECT:
            raise self._rejection(caller, decision)
        if compliant is not None and decision.expert_id == compliant.expert_id:
            return expert, choice
        chosen = self.fleet.expert(decision.expert_id)
        info = {**((choice_any.route_info or {}) if choice_any else {}), "router_choice": choice_any.expert_id if choice_any else expert_any.id}
        reason = choice_any.reason if choice_any else "key policy"
        if decision.verdict is cp.Verdict.DEGRADE:
            caller.policy_note = _note(decision)
            info["key_policy"] = caller.policy_note
            reason = decision.message
        return chosen, ExpertChoice(chosen.id, reason, route_info=info)

    async def _resolve_named(self, caller: Caller, model: str, routing: RoutingParams | None, text: str, resolve: Resolve) -> tuple[ExpertConfig, ExpertChoice | None]:
        expert, choice = await resolve(model, routing, "")
        limits = caller.key.limits
        quality = await self._predicted_quality(text, expert) if limits.quality_floor is not None else None
        option = cp.ExpertOption(expert.id, quality, expert.usd_per_mtok_blended, self.fleet.is_ready(expert.id))
        decision = cp.decide(limits, None if cp.violations(option, limits) else option, [option])
        if decision.verdict is cp.Verdict.REJECT:
            raise self._rejection(caller, decision)
        if decision.verdict is cp.Verdict.DEGRADE:
            caller.policy_note = _note(decision)
        elif quality is None and limits.quality_floor is not None:
            caller.policy_note = "quality-unknown"
        return expert, choice

    async def _predicted_quality(self, text: str, expert: ExpertConfig) -> float | None:
        """The router's predicted quality of `expert` for this prompt; None if no router knows the expert."""
        only = RoutingParams(experts=[expert.id])
        try:
            if self.chooser.blocking:
                choice = await asyncio.to_thread(self.chooser.choose, text, only, self.config.experts)
            else:
                choice = self.chooser.choose(text, only, self.config.experts)
        except ChoiceError:  # the router refusing to predict is "unknown", not a failed request
            return None
        for e, q, _ in choice.candidates:
            if e == expert.id:
                return q
        return None

    def _option(self, expert: ExpertConfig, choice: ExpertChoice | None) -> cp.ExpertOption:
        quality = next((q for e, q, _ in choice.candidates if e == expert.id), None) if choice is not None else None
        return cp.ExpertOption(expert.id, quality, expert.usd_per_mtok_blended, self.fleet.is_ready(expert.id))

    def _rejection(self, caller: Caller, decision: cp.Decision) -> ApiError:
        headers = {"x-switchboard-limit": ",".join(decision.violated)}
        if decision.wake_expert_id is not None:
            self.fleet.wake(decision.wake_expert_id, f"a request of key {caller.key.key_id} needs it ready")
        if decision.retry_after_s is not None:
            headers["retry-after"] = str(max(1, round(decision.retry_after_s)))
        code = "key_quality_floor" if decision.violated == (cp.QUALITY_FLOOR,) else "key_cost_ceiling" if decision.violated == (cp.COST_CEILING,) else "key_answer_policy"
        return ApiError(decision.status, f"key {caller.key.key_id} ('{caller.key.name}'): {decision.message}", code=code, headers=headers)

    def usd_estimate(self, model: str, num_prompt_tokens: int, num_output_tokens: int) -> float:
        """What a request may cost at most (its prompt estimate and all of `max_tokens`): at the named expert's
        prices, or for `auto` at the dearest expert's (routing and failover may pick any)."""
        usage = Usage(num_prompt_tokens, num_output_tokens)
        if model in self.prices:
            return usd_of(self.prices, model, usage)
        return max((usd_of(self.prices, expert_id, usage) for expert_id in self.prices), default=0.0)

    # ---- after the answer

    def settle(self, caller: Caller, expert_id: str, usage: Usage | None) -> None:
        if caller.reservation is None:
            return
        tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else None
        self.ledger.settle(caller.reservation, tokens, usd_of(self.prices, expert_id, usage))
        caller.reservation = None

    def release(self, caller: Caller) -> None:
        """The request is over: a hold it still has (it was refused or failed before its answer was logged) is
        dropped; its window entry stays (it counts as a request)."""
        if caller.reservation is not None:
            self.ledger.release(caller.reservation)


def _not_revoked(key: ApiKey | None) -> ApiKey | None:
    """`key` (None stays None); ApiError 401 if it was revoked."""
    if key is not None and key.is_revoked:
        raise ApiError(401, f"API key {key.key_id} ({key.prefix}…) was revoked", code="revoked_api_key")
    return key


def merge_routing(routing: RoutingParams | None, quality_floor: float | None, usd_per_mtok_ceiling: float | None) -> RoutingParams:
    """The request's routing constraints with the key's: the tighter of each wins."""
    base = routing or RoutingParams()
    # model_construct: both sides were validated already (the request by the parser, the key by KeyLimits), and
    # this runs on every request of a key with a policy.
    return RoutingParams.model_construct(
        cost_weight=base.cost_weight, objective=base.objective, experts=base.experts,
        min_quality=cp.tighter_floor(base.min_quality, quality_floor),
        max_usd_per_mtok=cp.tighter_ceiling(base.max_usd_per_mtok, usd_per_mtok_ceiling),
    )


def _allows(routing: RoutingParams | None, expert: ExpertConfig) -> bool:
    if routing is None:
        return True
    if routing.experts is not None and expert.id not in routing.experts:
        return False
    return routing.max_usd_per_mtok is None or expert.usd_per_mtok_blended <= routing.max_usd_per_mtok


def _note(decision: cp.Decision) -> str:
    return f"degraded; violated={','.join(decision.violated)}; expert={decision.expert_id}"


class MeteringLog:
    """The request log the handlers write to when keys are on: the row gets the key's id, and the finished
    request's real usage and cost go to the key's meter. Everything else is the wrapped log's."""

    def __init__(self, inner: Any, gate: TenantGate) -> None:
        self.inner = inner
        self.gate = gate

    def begin(self, request_id: str, kind: str, expert_id: str, routing_reason: str | None, prompt_text: str | None) -> Any:
        caller = current_caller.get()
        entry = self.inner.begin(request_id, kind, expert_id, routing_reason, prompt_text, key_id=caller.key.key_id if caller else None)
        return _MeteredEntry(entry, caller, expert_id)

    def finish(self, entry: "_MeteredEntry", outcome: Any, status: int, started_at: float, **kwargs: Any) -> None:
        self.inner.finish(entry.inner, outcome, status, started_at, **kwargs)
        if entry.caller is not None:
            self.gate.settle(entry.caller, entry.expert_id, kwargs.get("usage"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _MeteredEntry:
    """A request-log entry with the caller attached. What the handlers set on an entry after failover (the
    expert that answered, the routing reason with the failed attempts) goes to the log's own entry, so the
    row and the key's charge both name the expert that answered."""

    __slots__ = ("inner", "caller", "_expert_id", "_routing_reason")

    def __init__(self, inner: Any, caller: Caller | None, expert_id: str) -> None:
        self.inner = inner  # None when the request log is disabled
        self.caller = caller
        self._expert_id = expert_id
        self._routing_reason: str | None = getattr(inner, "routing_reason", None)

    @property
    def expert_id(self) -> str:
        return self._expert_id

    @expert_id.setter
    def expert_id(self, value: str) -> None:
        self._expert_id = value
        if self.inner is not None:
            self.inner.expert_id = value

    @property
    def routing_reason(self) -> str | None:
        return self._routing_reason

    @routing_reason.setter
    def routing_reason(self, value: str | None) -> None:
        self._routing_reason = value
        if self.inner is not None:
            self.inner.routing_reason = value


class AuthMiddleware:
    """Outermost ASGI layer when auth is on: /v1/* needs an API key, /admin/* the admin key; everything else
    (health, metrics, the dashboard page itself, the OpenAPI document) is open."""

    def __init__(self, app: Any, gate: TenantGate) -> None:
        self.app = app
        self.state = app.state
        self.gate = gate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] in ("http", "websocket") else ""
        is_v1, is_admin = path.startswith("/v1/"), path.startswith("/admin/")
        if not (is_v1 or is_admin):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = self.gate.authenticate(authorization, admin=is_admin)
        except ApiError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if caller is None:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Any) -> None:
            if message["type"] == "http.response.start" and (caller.policy_note or caller.rate_headers):
                headers = message.get("headers", [])
                extra = [(k.encode(), v.encode()) for k, v in (caller.rate_headers or {}).items()]
                if extra:  # the key's limits are the caller's, not those an `openai` upstream set on the gateway's account
                    headers = [(k, v) for k, v in headers if not k.lower().startswith(b"x-ratelimit-")]
                if caller.policy_note:
                    extra.append((POLICY_HEADER.encode(), caller.policy_note.encode("latin-1", "replace")))
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        with serving(self.gate, caller):
            await self.app(scope, receive, send_with_policy)


@contextlib.contextmanager
def serving(gate: TenantGate, caller: Caller) -> Iterator[None]:
    """The handlers run within it serve `caller` (its limits, its usage; every log line names its key); its hold in
    the key ledger is released after (an HTTP request of the key's, or a request of the key's batch)."""
    token = current_caller.set(caller)
    key_token = key_id_var.set(caller.key.key_id)
    try:
        yield
    finally:
        gate.release(caller)
        key_id_var.reset(key_token)
        current_caller.reset(token)

