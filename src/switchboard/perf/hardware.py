"""The hardware catalog: what one device of each kind can do and what it costs.

Every number carries its public source. Peak FLOP/s are *dense* FP16/BF16 tensor-core numbers (vendor
datasheets quote 2x that "with sparsity"; LLM serving does not use structured sparsity). Prices are on-demand
cloud list prices per device-hour; for multi-GPU instances the instance price is divided by its GPU count.
Prices move; the date and instance type are named so they can be re-checked.

The efficiency fields are not vendor numbers: they are what a serving engine achieves against the peak, set
from published measurements and documented beside each value, and they are what `calibrate_hardware`
(in `switchboard.perf.calibration`) fits to local measurements.
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
    """Fixed cost of one engine iteration (scheduling, kernel launches, sampling)."""
    memory_utilization: float = 0.9
    """Fraction of `memory_bytes` the engine may use (vLLM's `gpu_memory_utilization` default is 0.9)."""
    load_bandwidth_bytes_per_s: float = 2.0 * GB
    """Weights from local disk / host memory to the device, for cold starts."""
    process_start_s: float = 10.0
    """Fixed part of a cold start: container or process start, runtime and engine initialisation."""
    max_num_seqs: int = 256
    """Most sequences one engine batches together (vLLM's `max_num_seqs` default is 256)."""
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("peak_flops", "mem_bandwidth_bytes_per_s", "memory_bytes", "load_bandwidth_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("usd_per_hour", "step_overhead_s", "process_start_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_num_seqs < 1:
            raise ValueError(f"Hardware {self.kind!r}: max_num_seqs must be >= 1, got {self.max_num_seqs!r}")
        for name in ("compute_efficiency", "bandwidth_efficiency", "memory_utilization"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"Hardware {self.kind!r}: {name} must be in (0, 1], got {getattr(self, name)!r}")

    @property
    def usd_per_second(self) -> float:
        return self.usd_per_hour / 3600.0


# Efficiency defaults for GPUs, shared by every GPU kind unless noted:
# - compute 0.5: vLLM/SGLang prefill reaches roughly 40-60% MFU on A100/H100 for 7B-70B models (e.g. the
#   Sarathi-Serve and DistServe evaluations); 0.5 is the middle.
# - bandwidth 0.8: decode kernels stream weights at 70-90% of peak HBM bandwidth (FlashDecoding, vLLM's
#   paged-attention benchmarks).
# - step overhead 3 ms: per-iteration scheduler + sampling + launch cost of vLLM without CUDA graphs is a few ms.
# - cold start: 10 s fixed (container start, CUDA context, engine init and CUDA-graph capture in vLLM take
#   5-20 s, see "Serverless Cold Starts and Where to Find Them" and ServerlessLLM, OSDI'24) plus weights at
#   2 GB/s (local NVMe gen4 read of safetensors; ServerlessLLM measures 1-6 GB/s depending on the loader).
_GPU_DEFAULTS = dict(
    compute_efficiency=0.5,
    bandwidth_efficiency=0.8,
    step_overhead_s=0.003,
    memory_utilization=0.9,
    load_bandwidth_bytes_per_s=2.0 * GB,
    process_start_s=10.0,
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
            step_overhead_s=0.0070,
            memory_utilization=0.8,
            load_bandwidth_bytes_per_s=1.0 * GB,  # page-cache / local-disk read of a GGUF by llama.cpp (mmap)
            process_start_s=0.5,  # Python worker process spawn + llama-cpp-python import, before the load
            max_num_seqs=1,  # one llama-cpp-python process decodes one sequence at a time
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
