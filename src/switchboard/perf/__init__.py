"""The performance model: a hardware catalog and a roofline timing model of an LLM engine on it.

`hardware` holds the catalog (peak FLOP/s, memory bandwidth, memory, USD/hour per hardware kind, each with its
public source); `roofline` turns (model size, hardware) into an `EngineProfile` with prefill, decode-step,
KV-capacity, tensor-parallel and cold-start numbers; `gpu_calibration` fits the GPU entries to measured H200
steps. Both the `simulated` engine and the simulator use it.
"""

from switchboard.perf.calibration import calibrate_hardware
from switchboard.perf.hardware import Hardware, get_hardware, hardware_catalog
from switchboard.perf.roofline import EngineProfile, engine_profile

__all__ = [
    "EngineProfile",
    "Hardware",
    "ModelShape",
    "ModelShape",
    "calibrate_hardware",
    "engine_profile",
    "get_hardware",
    "hardware_catalog",
    "llama_shape",
]
