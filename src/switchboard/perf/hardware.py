"""The hardware catalog: what one device of each kind can do and what it costs.

Every number carries its public source. Peak FLOP/s are *dense* FP16/BF16 tensor-core numbers (vendor
datasheets quote 2x that "with sparsity"; LLM serving does not use structured sparsity). Prices are on-demand
cloud list prices per device-hour; for multi-GPU instances the instance price is divided by its GPU count.
Prices move; the date and instance type are named so they can be re-checked.

The efficiency and overhead fields are not vendor numbers: for GPUs they are fitted to kernel-level timings of
one H200 (`switchboard.perf.gpu_calibration`) and shared by every GPU kind; for the CPU worker,
`calibrate_hardware` (in `switchboard.perf.calibration`) fits them to the local llama.cpp engine.
"""

from __future__ import annotations

import dataclasses

GB = 1e9
GIB = 1024**3
TFLOPS = 1e12


@dataclasses.dataclass(frozen=True, slots=True)
class Hardware:
    """One device of a hardware kind (one GPU, or one CPU worker).

    Guarantees: every number is positive except `usd_per_hour` (>= 0) and `step_overhead_s` (>= 0);
    efficiencies are in (0, 1]. Violations raise ValueError at construction.
    """

    kind: str
    peak_flops: float
    """Dense FP16/BF16 FLOP/s of one device (for the CPU: FP32 FMA peak of the worker's cores)."""
    mem_bandwidth_bytes_per_s: float
    memory_bytes: int
    usd_per_hour: float
    compute_efficiency: float = 0.5
    """Achieved fraction of `peak_flops` in compute-bound phases (model FLOPs utilisation, MFU)."""
    bandwidth_efficiency: float = 0.8
    """Achieved fraction of `mem_bandwidth_bytes_per_s` when streaming weights and KV cache."""
    step_overhead_s: float = 0.0
    """Fixed cost of one engine iteration, whatever the model's depth: on the CPU worker llama.cpp's scheduling,
    sampling and thread sync. 0 on GPUs, whose fixed cost is per layer."""
    step_overhead_s_per_layer: float = 0.0
    """Fixed cost of one engine iteration per model layer: a GPU step replayed from a CUDA graph still runs a few
    dozen small kernels per layer (norms, projections, rotary, attention, activations), each taking a few
    microseconds however little it reads."""
    kv_bandwidth_efficiency: float = 0.8
    """Achieved fraction of `mem_bandwidth_bytes_per_s` when decode attention reads the KV cache (below the weights'
    rate on GPUs: many short, scattered reads)."""
    attention_efficiency: float | None = None
    """Achieved fraction of `peak_flops` in prefill attention (FlashAttention), whose FLOPs, 2 × layers × hidden ×
    N² for an N-token prompt, are then modelled beside the matmuls'. None: folded into `compute_efficiency`."""
    decode_attention_s_per_seq_layer: float = 0.0
    """Fixed cost per decoded sequence per layer of a decode step's attention (one KV walk per sequence)."""
    gemm_min_tokens: float = 0.0
    """A step's matmuls cost as much as (tokens + this) tokens' worth at the achieved FLOP/s: a short step's GEMMs
    leave most of the device idle (tile and wave quantisation), so compute time is affine, not linear, in tokens."""
    activation_bytes_per_element: float = 0.0
    """Memory traffic of the unfused element-wise kernels (norms, rotary, SwiGLU, residuals) per token, per layer
    and per hidden + intermediate element, at the achieved bandwidth."""
    eager_launch_s_per_layer: float = 0.0
    """Host time to launch one layer's kernels when a step is not captured in a CUDA graph (eager PyTorch): an
    eager step takes about the larger of that launch time and the GPU time (they overlap)."""
    cuda_graphs: bool = False
    """The engine replays its steps from CUDA graphs (vLLM's default; piecewise for mixed prefill/decode steps)."""
    chunked_prefill: bool = False
    """Every step carries all running decodes plus prompt chunks up to `max_num_batched_tokens` (vLLM V1, SGLang;
    Sarathi-Serve). Without it, a prefill step stalls the decodes (llama.cpp's one sequence needs none)."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step (vLLM's `max_num_batched_tokens`): decode tokens plus prompt tokens."""
    memory_utilization: float = 0.9
    """Fraction of `memory_bytes` the engine may use (vLLM's `gpu_memory_utilization` default is 0.9)."""
    load_bandwidth_bytes_per_s: float = 2.0 * GB
    """Weights from local disk / host memory to the device, for cold starts."""
    process_start_s: float = 10.0
    """Fixed part of a cold start: container or process start, runtime and engine initialisation."""
    max_num_seqs: int = 256
    """Most sequences one engine batches together (vLLM's `max_num_seqs` default is 256)."""
    warmup_caches_prefix: bool = False
    """The engine's warm-up leaves the shared chat-template prefix in its KV cache, so a new engine's first
    request finds it cached (the llama.cpp worker: `engines/llamacpp/kv.py`). False: a new engine starts with an
    empty prefix cache (vLLM's automatic prefix caching fills on the first request)."""
    is_accelerator: bool = True
    """A worker of this kind declares its devices (a GPU). False for the CPU: the live CPU worker declares none
    (`WorkerConfig.devices` empty, so `Worker.num_devices` 0) and its replicas take memory only; a simulated pool
    of it declares none either (`sim.cluster.PoolSpec.devices_per_worker`), one `Hardware`'s memory per worker."""
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("peak_flops", "mem_bandwidth_bytes_per_s", "memory_bytes", "load_bandwidth_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("usd_per_hour", "step_overhead_s", "step_overhead_s_per_layer", "process_start_s",
                     "decode_attention_s_per_seq_layer",
                     "gemm_min_tokens", "activation_bytes_per_element", "eager_launch_s_per_layer"):
            if getattr(self, name) < 0:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("compute_efficiency", "bandwidth_efficiency", "kv_bandwidth_efficiency", "memory_utilization",
                     "attention_efficiency"):
            if getattr(self, name) is None and name == "attention_efficiency":
                continue
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be in (0, 1], got {getattr(self, name)!r}")

    @property
    def usd_per_second(self) -> float:
        return self.usd_per_hour / 3600.0


# Every GPU kind shares the efficiencies and overheads fitted to one H200 (switchboard.perf.gpu_calibration, on
# switchboard/data/perf/h200_llama_forward.json: prefill and CUDA-graph decode of Llama-shaped 1B and 8B models,
# PyTorch 2.11, FlashAttention SDPA; in sample the median / max error is 0.9% / 1.8% on prefill and 0.7% / 1.8%
# on graph decode; docs/simulator.md has the leave-one-size-out numbers). Only the datasheet numbers (peak
# FLOP/s, bandwidth, memory) differ between kinds: a kernel reaching 74% of the tensor-core peak on an H200 is
# assumed to reach 74% of an L4's. Rounded from the fit; tests/perf/test_gpu_calibration.py refits and checks.
# - weights stream at 0.884 of HBM bandwidth: measured, not fitted (the table's 4 GiB device-to-device copy
#   moves 4.24 TB/s); with it fixed, each size's fixed step cost is identifiable and comes out per layer;
# - compute 0.739 of dense BF16 peak in matmuls (the table's own 8192^3 GEMM reaches 0.80), attention 0.319
#   (FlashAttention-2 through SDPA, head dim 64 and 128);
# - the KV cache is read at 0.578 of HBM bandwidth, plus 0.27 us per decoded sequence per layer;
# - 67.8 us per layer per step replayed from a CUDA graph, 0.52 ms per layer of host launch time when eager;
#   matmuls cost as if 49 more tokens were in the step (a short step cannot fill the 132 SMs); 27.2 bytes of
#   element-wise traffic per token, layer and hidden + intermediate element.
# No scheduler or sampling time is added: the table times GPU work only, and vLLM V1 overlaps its scheduler
# with the GPU.
# Steps run from CUDA graphs with chunked prefill and a 2,048-token budget per step (vLLM V1's
# `max_num_batched_tokens` default below 70 GiB devices; Sarathi-Serve sizes the budget from the TPOT target:
# on the H200 an 8B step of 32 decodes and a 2,048-token chunk measured 63 ms, well under a 200 ms TPOT).
# Cold start, from the same H200's measured parts: 4.4 s for a fresh Python process with torch imported and a
# CUDA context (median of 3), plus the weights at 5.3 GB/s (safetensors load_file to the GPU from the page
# cache, best of 2; 4.95 GB/s page-cache read). Not included, so a lower bound: engine initialisation, CUDA
# graph capture (~0.05-0.2 s per captured shape), and reading the weights from a cold disk or the network.
_GPU_DEFAULTS = dict(
    compute_efficiency=0.739,
    bandwidth_efficiency=0.884,
    kv_bandwidth_efficiency=0.578,
    attention_efficiency=0.319,
    step_overhead_s=0.0,
    step_overhead_s_per_layer=67.8e-6,
    eager_launch_s_per_layer=0.00052,
    decode_attention_s_per_seq_layer=0.27e-6,
    gemm_min_tokens=49.0,
    activation_bytes_per_element=27.2,
    cuda_graphs=True,
    chunked_prefill=True,
    max_num_batched_tokens=2048,
    memory_utilization=0.9,
    load_bandwidth_bytes_per_s=5.3 * GB,
    process_start_s=4.4,
)


def _build_catalog() -> dict[str, Hardware]:
    return {
        # The local CPU worker: a 2-core AMD EPYC (Zen 3, AVX2, 2x 256-bit FMA pipes per core) VM slice.
        # Peak: 2 cores x 32 FP32 FLOP/cycle x 2.45 GHz (lscpu BogoMIPS/2) = 157 GFLOP/s.
        # Bandwidth: ~20 GB/s, a typical per-VM share of an EPYC socket's DDR4 (AMD EPYC 7003 datasheet: 204.8
        # GB/s per socket over 8 channels; a 2-vCPU slice sees a small fraction).
        # Memory: the worker's 24 GiB.
        # Price: AWS m7a.large (2 vCPU AMD EPYC Genoa, 8 GiB) on-demand us-east-1, $0.11592/h (aws.amazon.com/ec2/
        # pricing/on-demand, 2025); the closest 2-core AMD instance type.
        # PLACEHOLDER efficiencies: these are fitted to the local llama.cpp engine by
        # switchboard.perf.calibration.calibrate_hardware; the defaults below reproduce the reported
        # ~65 tokens/s decode of SmolLM2-135M Q4_1 (0.625 bytes/param) at batch 1.
        "cpu": Hardware(
            kind="cpu",
            peak_flops=157e9,
            mem_bandwidth_bytes_per_s=20 * GB,
            memory_bytes=24 * GIB,
            usd_per_hour=0.11592,
            compute_efficiency=0.3,
            bandwidth_efficiency=0.5,
            kv_bandwidth_efficiency=0.5,  # llama.cpp reads its KV cache like its weights
            step_overhead_s=0.0070,
            memory_utilization=0.8,
            load_bandwidth_bytes_per_s=1.0 * GB,  # page-cache / local-disk read of a GGUF by llama.cpp (mmap)
            process_start_s=0.5,  # Python worker process spawn + llama-cpp-python import, before the load
            max_num_seqs=1,  # one llama-cpp-python process decodes one sequence at a time
            warmup_caches_prefix=True,  # the worker's warm-up restores the template prefix (engines/llamacpp/kv.py)
            is_accelerator=False,
            description="Local CPU worker (2-core AMD EPYC, llama.cpp); calibrate with calibrate_hardware.",
        ),
        # NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4/): FP16/BF16 tensor 242 TFLOPS with sparsity ->
        # 121 dense; 24 GB GDDR6; 300 GB/s.
        # Price: AWS g6.xlarge (1x L4) on-demand us-east-1, $0.8048/h (aws.amazon.com/ec2/instance-types/g6).
        "l4": Hardware(
            kind="l4",
            peak_flops=121 * TFLOPS,
            mem_bandwidth_bytes_per_s=300 * GB,
            memory_bytes=24 * GB,
            usd_per_hour=0.8048,
            description="NVIDIA L4 24 GB (AWS g6.xlarge)",
            **_GPU_DEFAULTS,
        ),
        # NVIDIA A10 datasheet (nvidia.com/en-us/data-center/products/a10-gpu/): BF16 tensor 125 TFLOPS dense
        # (250 with sparsity); 24 GB GDDR6; 600 GB/s. The A10G is AWS's A10 variant with the same memory system;
        # we use the A10 datasheet numbers (AWS does not publish separate A10G tensor peaks).
        # Price: AWS g5.xlarge (1x A10G) on-demand us-east-1, $1.006/h (aws.amazon.com/ec2/instance-types/g5).
        "a10g": Hardware(
            kind="a10g",
            peak_flops=125 * TFLOPS,
            mem_bandwidth_bytes_per_s=600 * GB,
            memory_bytes=24 * GB,
            usd_per_hour=1.006,
            description="NVIDIA A10G 24 GB (AWS g5.xlarge)",
            **_GPU_DEFAULTS,
        ),
        # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100/): BF16 tensor 312 TFLOPS dense; A100 80GB
        # SXM: 80 GB HBM2e at 2,039 GB/s.
        # Price: AWS p4de.24xlarge (8x A100 80GB) on-demand us-east-1, $40.96/h -> $5.12 per GPU-hour
        # (aws.amazon.com/ec2/instance-types/p4).
        "a100-80gb": Hardware(
            kind="a100-80gb",
            peak_flops=312 * TFLOPS,
            mem_bandwidth_bytes_per_s=2039 * GB,
            memory_bytes=80 * GB,
            usd_per_hour=40.96 / 8,
            description="NVIDIA A100 80GB SXM (AWS p4de.24xlarge, per GPU)",
            **_GPU_DEFAULTS,
        ),
        # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100/): H100 SXM BF16 tensor 1,979 TFLOPS with
        # sparsity -> 989 dense; 80 GB HBM3 at 3.35 TB/s.
        # Price: AWS p5.48xlarge (8x H100 SXM) on-demand us-east-1 after the June 2025 price cut, $55.04/h ->
        # $6.88 per GPU-hour (aws.amazon.com/ec2/pricing/on-demand; it launched at $98.32/h).
        "h100": Hardware(
            kind="h100",
            peak_flops=989 * TFLOPS,
            mem_bandwidth_bytes_per_s=3350 * GB,
            memory_bytes=80 * GB,
            usd_per_hour=55.04 / 8,
            description="NVIDIA H100 80GB SXM (AWS p5.48xlarge, per GPU)",
            **_GPU_DEFAULTS,
        ),
        # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200/): BF16 tensor 1,979 TFLOPS with sparsity ->
        # 989 dense (same compute as H100 SXM); 141 GB HBM3e at 4.8 TB/s.
        # Price: Azure ND96isr H200 v5 (8x H200) pay-as-you-go East US, $84.80/h -> $10.60 per GPU-hour
        # (azure.microsoft.com/pricing/details/virtual-machines/linux).
        "h200": Hardware(
            kind="h200",
            peak_flops=989 * TFLOPS,
            mem_bandwidth_bytes_per_s=4800 * GB,
            memory_bytes=141 * GB,
            usd_per_hour=84.80 / 8,
            description="NVIDIA H200 141GB SXM (Azure ND96isr H200 v5, per GPU)",
            **_GPU_DEFAULTS,
        ),
    }


def hardware_catalog() -> dict[str, Hardware]:
    """All known hardware kinds, keyed by kind. A fresh dict each call; the values are immutable."""
    return _build_catalog()


def get_hardware(kind: str) -> Hardware:
    """The catalog entry for `kind` (case-insensitive).

    Raises KeyError naming the known kinds when `kind` is not in the catalog.
    """
    catalog = _build_catalog()
    try:
        return catalog[kind.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown hardware kind {kind!r}; known kinds: {', '.join(catalog)}") from None
