"""A roofline timing model of one LLM engine replica: (model size, hardware) -> `EngineProfile`.

Notation (all per replica): P = parameters, W = P * bytes_per_param weight bytes, k = KV-cache bytes per token,
L / h / i = layers / hidden / intermediate size (`ModelShape`), n = tensor-parallel devices, and achieved rates
F = n * peak_flops * compute_efficiency, B = n * mem_bandwidth * bandwidth_efficiency, B_kv (the same with
kv_bandwidth_efficiency), F_attn (attention_efficiency), each times tp_efficiency(n), and the step's fixed cost
o = step_overhead_s + L * step_overhead_s_per_layer. One engine step carries
d decoding sequences with C context tokens in all, plus p prompt tokens (whole prompts or chunks):

    gpu_s(d, C, p, U) = o + max(2P (d + p + g) / F,  W / B)        matmuls: compute- or weight-bound
                          + (d + p) * a * L * (h + i) / B          element-wise activation traffic
                          + 2 * L * h * U / F_attn                 prefill attention, U = sum c * (2q + c)
                          + C * k / B_kv + d * L * s               decode attention: KV reads, per-sequence cost
    step_time_s           = gpu_s                                  with CUDA graphs (o: the graph's own overhead)
                          = (gpu_s^8 + (L * e)^8)^(1/8)            eager: kernel launches (e per layer) overlap
    prefill_time_s(N)     = step_time_s(0, 0, N, N^2)
    decode_step_time_s(b, C) = step_time_s(b, C, 0, 0)
    kv_capacity_tokens    = floor((n * memory * memory_utilization - W - n * activation_reserve) / k)
    max_batch_size        = min(hardware.max_num_seqs, kv_capacity_tokens)
    cold_start_s          = process_start_s + W / load_bandwidth
    usd_per_hour          = n * hardware.usd_per_hour

A chunk of c prompt tokens after q already computed ones does c * (2q + c) units of causal attention work (N^2
for a whole N-token prompt). g (gemm_min_tokens), a (activation_bytes_per_element), s and e are per-hardware fits
(`switchboard.perf.gpu_calibration`; all 0 on the CPU worker, where the model is the plain roofline
o + max(2PN/F, W/B) + Ck/B). tp_efficiency(n) = 1 for n = 1 and 0.9 otherwise (all-reduce cost over NVLink in
Megatron-style tensor parallelism). n is the smallest power of two (<= 8) whose memory holds the weights plus
`min_kv_tokens` of KV cache; the CPU worker is always one device.
"""

from __future__ import annotations

import dataclasses
import math

from switchboard.perf.hardware import GB, Hardware, get_hardware
from switchboard.perf.shape import ModelShape, llama_shape

TP_EFFICIENCY_MULTI_DEVICE = 0.9
MAX_TENSOR_PARALLEL = 8
ACTIVATION_RESERVE_BYTES_PER_DEVICE = 1 * GB
"""Memory vLLM's profiling run sets aside for activations and CUDA graphs, per device."""

_EAGER_OVERLAP_EXPONENT = 8.0
"""Sharpness of the smooth maximum of launch time and GPU time in an eager step (chosen on the H200 table: its
launch-bound and compute-bound prefills are then all within 2%)."""

# Llama-3-8B keeps 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB per token; Llama-3-70B
# 320 KiB; SmolLM2-135M 22.5 KiB. k = 128 KiB * (params_b / 8) ** 0.42 fits all three within 5%.
_KV_BYTES_PER_TOKEN_8B = 131072.0
_KV_SIZE_EXPONENT = 0.42


def default_kv_bytes_per_token(params_b: float, kv_bytes_per_element: float = 2.0) -> float:
    """KV-cache bytes per token of a Llama-style GQA model of `params_b` billion parameters (see module doc)."""
    return _KV_BYTES_PER_TOKEN_8B * (params_b / 8.0) ** _KV_SIZE_EXPONENT * (kv_bytes_per_element / 2.0)


@dataclasses.dataclass(frozen=True, slots=True)
class EngineProfile:
    """What one replica of a model does on `num_devices` devices of `hardware`. Build with `engine_profile`.

    All times are in seconds; the formulas are in the module docstring.
    """

    params_b: float
    hardware: Hardware
    bytes_per_param: float
    kv_bytes_per_token: float
    num_devices: int
    weights_bytes: float
    kv_capacity_tokens: int
    max_batch_size: int
    achieved_flops: float
    achieved_bandwidth_bytes_per_s: float
    shape: ModelShape
    achieved_kv_bandwidth_bytes_per_s: float
    achieved_attention_flops: float | None
    """None: attention FLOPs are not modelled apart (`Hardware.attention_efficiency` is None)."""

    @property
    def usd_per_hour(self) -> float:
        """Price of all devices of the replica."""
        return self.num_devices * self.hardware.usd_per_hour

    @property
    def cold_start_s(self) -> float:
        """From 'start a replica' to 'ready to serve': fixed process start plus loading the weights."""
        return self.hardware.process_start_s + self.weights_bytes / self.hardware.load_bandwidth_bytes_per_s

    @property
    def step_overhead_s(self) -> float:
        return self.hardware.step_overhead_s

    @property
    def chunked_prefill(self) -> bool:
        return self.hardware.chunked_prefill

    @property
    def max_num_batched_tokens(self) -> int:
        """Token budget of one step (decode tokens plus prompt tokens)."""
        return self.hardware.max_num_batched_tokens

    def step_time_s(self, num_decode_seqs: int, decode_context_tokens: int, num_prompt_tokens: int = 0,
                    prompt_attention_units: int = 0, *, cuda_graphs: bool | None = None) -> float:
        """One engine step: `num_decode_seqs` sequences (`decode_context_tokens` of KV cache in all) gain a token
        while `num_prompt_tokens` prompt tokens are computed, with `prompt_attention_units` = sum over the prompt
        chunks of c * (2q + c) (see the module doc). `cuda_graphs` defaults to the hardware's engine setting.

        Non-decreasing in every count. Raises ValueError for a negative count.
        """
        if min(num_decode_seqs, decode_context_tokens, num_prompt_tokens, prompt_attention_units) < 0:
            raise ValueError(f"step counts must be >= 0, got {num_decode_seqs}, {decode_context_tokens}, "
                             f"{num_prompt_tokens}, {prompt_attention_units}")
        hw = self.hardware
        gpu_s = self._fixed_step_s(num_decode_seqs, num_prompt_tokens) + self._context_step_s(decode_context_tokens)
        if prompt_attention_units and self.achieved_attention_flops is not None:
            gpu_s += 2.0 * self.shape.num_layers * self.shape.hidden_size * prompt_attention_units / (
                self.achieved_attention_flops)
        if hw.cuda_graphs if cuda_graphs is None else cuda_graphs:
            return gpu_s
        return self._eager_s(gpu_s)

    def _fixed_step_s(self, num_decode_seqs: int, num_prompt_tokens: int) -> float:
        """The part of a step's GPU time that depends on its token counts but not on context lengths."""
        hw, shape = self.hardware, self.shape
        num_tokens = num_decode_seqs + num_prompt_tokens
        compute_s = 2.0 * self.params_b * 1e9 * (num_tokens + hw.gemm_min_tokens) / self.achieved_flops
        weights_s = self.weights_bytes / self.achieved_bandwidth_bytes_per_s
        activation_s = num_tokens * hw.activation_bytes_per_element * shape.num_layers * (
            shape.hidden_size + shape.intermediate_size) / self.achieved_bandwidth_bytes_per_s
        per_seq_s = num_decode_seqs * shape.num_layers * hw.decode_attention_s_per_seq_layer
        overhead_s = hw.step_overhead_s + shape.num_layers * hw.step_overhead_s_per_layer
        return overhead_s + max(compute_s, weights_s) + activation_s + per_seq_s

    def _context_step_s(self, decode_context_tokens: int) -> float:
        return decode_context_tokens * self.kv_bytes_per_token / self.achieved_kv_bandwidth_bytes_per_s

    def _eager_s(self, gpu_s: float) -> float:
        launch_s = self.shape.num_layers * self.hardware.eager_launch_s_per_layer
        if launch_s <= 0:
            return gpu_s
        p = _EAGER_OVERLAP_EXPONENT
        return (gpu_s**p + launch_s**p) ** (1.0 / p)

    def prefill_time_s(self, num_tokens: int) -> float:
        """Time to prefill `num_tokens` prompt tokens in one step. Non-decreasing in `num_tokens`.

        Raises ValueError for a negative count; 0 tokens costs one (weight-streaming) step.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        return self.step_time_s(0, 0, num_tokens, num_tokens * num_tokens)

    def decode_step_time_s(self, batch_size: int, context_tokens_total: int) -> float:
        """One continuous-batching iteration: each of `batch_size` sequences gains one token.

        `context_tokens_total` is the sum of the sequences' current lengths (their KV cache is read once).
        Non-decreasing in both arguments. Raises ValueError if batch_size < 1 or context_tokens_total < 0.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if context_tokens_total < 0:
            raise ValueError(f"context_tokens_total must be >= 0, got {context_tokens_total}")
        return self.step_time_s(batch_size, context_tokens_total)

    def decode_steps_time_s(self, batch_size: int, context_tokens_total: int, num_steps: int) -> float:
        """Exact total time of `num_steps` consecutive decode steps of a fixed batch, each step growing the
        context by `batch_size` tokens: sum over i < num_steps of decode_step_time_s(b, C + i*b).

        O(1) when steps run from CUDA graphs or launch for free (the time is then affine in the context);
        a loop over the steps for an eager engine with launch cost. Raises ValueError like
        `decode_step_time_s`, or for num_steps < 0.
        """
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if num_steps == 0:
            return 0.0
        if batch_size < 1 or context_tokens_total < 0:
            self.decode_step_time_s(batch_size, context_tokens_total)  # raises with the right message
        hw = self.hardware
        if not hw.cuda_graphs and hw.eager_launch_s_per_layer > 0:
            return sum(self.decode_step_time_s(batch_size, context_tokens_total + i * batch_size)
                       for i in range(num_steps))
        contexts_sum = num_steps * context_tokens_total + batch_size * (num_steps - 1) * num_steps // 2
        return num_steps * self._fixed_step_s(batch_size, 0) + self._context_step_s(contexts_sum)

    def decode_tokens_per_s(self, batch_size: int = 1, context_tokens_per_seq: int = 0) -> float:
        """Aggregate output tokens/s of a steady batch of `batch_size` sequences."""
        return batch_size / self.decode_step_time_s(batch_size, batch_size * context_tokens_per_seq)


def _num_devices(weights_bytes: float, kv_bytes_per_token: float, hw: Hardware, min_kv_tokens: int) -> int:
    needed = weights_bytes + min_kv_tokens * kv_bytes_per_token
    candidates = [1] if hw.kind == "cpu" else [2**i for i in range(int(math.log2(MAX_TENSOR_PARALLEL)) + 1)]
    for n in candidates:
        usable = n * (hw.memory_bytes * hw.memory_utilization - _activation_reserve(hw))
        if usable >= needed:
            return n
    raise ValueError(
        f"a {weights_bytes / GB:.1f} GB model plus {min_kv_tokens} tokens of KV cache does not fit on "
        f"{candidates[-1]} x {hw.kind} ({hw.memory_bytes / GB:.0f} GB each)"
    )


def _activation_reserve(hw: Hardware) -> float:
    # llama.cpp on the CPU has no CUDA-graph/profiling reserve; its compute buffers are tens of MB.
    return 0.0 if hw.kind == "cpu" else ACTIVATION_RESERVE_BYTES_PER_DEVICE


def engine_profile(
    params_b: float,
    hardware: Hardware | str,
    *,
    bytes_per_param: float = 2.0,
    kv_bytes_per_token: float | None = None,
    num_devices: int | None = None,
    min_kv_tokens: int = 16384,
    shape: ModelShape | None = None,
) -> EngineProfile:
    """The timing profile of a `params_b`-billion-parameter model served on `hardware`.

    `hardware` is a `Hardware` (e.g. a calibrated one) or a catalog kind. `bytes_per_param` is 2 for FP16/BF16,
    1 for FP8/INT8, 0.625 for llama.cpp Q4_1. `kv_bytes_per_token` defaults to `default_kv_bytes_per_token`.
    `num_devices` forces the tensor-parallel degree; by default it is the smallest power of two that holds the
    weights plus `min_kv_tokens` of KV cache. `shape` defaults to `llama_shape(params_b)`.

    Raises KeyError for an unknown hardware kind and ValueError for non-positive sizes or a model that does not
    fit (on 8 devices, or on the single CPU worker).
    """
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    if params_b <= 0 or bytes_per_param <= 0:
        raise ValueError(f"params_b and bytes_per_param must be > 0, got {params_b}, {bytes_per_param}")
    kv = default_kv_bytes_per_token(params_b) if kv_bytes_per_token is None else kv_bytes_per_token
    if kv <= 0:
        raise ValueError(f"kv_bytes_per_token must be > 0, got {kv}")
    weights = params_b * 1e9 * bytes_per_param
    n = _num_devices(weights, kv, hw, min_kv_tokens) if num_devices is None else num_devices
    if n < 1:
        raise ValueError(f"num_devices must be >= 1, got {n}")
    free = n * (hw.memory_bytes * hw.memory_utilization - _activation_reserve(hw)) - weights
    if free <= 0:
        raise ValueError(f"{params_b}B model ({weights / GB:.1f} GB) does not fit on {n} x {hw.kind}")
    kv_capacity = int(free // kv)
    tp = 1.0 if n == 1 else TP_EFFICIENCY_MULTI_DEVICE
    return EngineProfile(
        params_b=params_b,
        hardware=hw,
        bytes_per_param=bytes_per_param,
        kv_bytes_per_token=kv,
        num_devices=n,
        weights_bytes=weights,
        kv_capacity_tokens=kv_capacity,
        max_batch_size=max(1, min(hw.max_num_seqs, kv_capacity)),
        achieved_flops=n * hw.peak_flops * hw.compute_efficiency * tp,
        achieved_bandwidth_bytes_per_s=n * hw.mem_bandwidth_bytes_per_s * hw.bandwidth_efficiency * tp,
        shape=llama_shape(params_b) if shape is None else shape,
        achieved_kv_bandwidth_bytes_per_s=n * hw.mem_bandwidth_bytes_per_s * hw.kv_bandwidth_efficiency * tp,
        achieved_attention_flops=None if hw.attention_efficiency is None
        else n * hw.peak_flops * hw.attention_efficiency * tp,
    )
