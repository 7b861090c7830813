"""Fleets whose workers declare devices, for the device view's tests (`/admin/fleet` and the dashboard)."""

from __future__ import annotations

# `resident` (8B on H100: one device) stays warm; `wide` (49B on H100: tensor-parallel 2) starts on demand (its
# modelled cold start scaled to ~5.7 s, long enough to be seen starting) and stops 2 s after its last request.
# The L4 box has devices too; the CPU worker declares none.
SIMULATED = """
workers:
  - {id: h100-box, hardware: h100, memory_gb: 320, usd_per_hour: 16.0, devices: [0, 1, 2, 3]}
  - {id: l4-box, hardware: l4, memory_gb: 24, usd_per_hour: 0.8, devices: [7]}
  - {id: cpu, hardware: cpu, memory_gb: 16}
experts:
  - {id: resident, backend: {kind: simulated, hardware: h100, time_scale: 0}, params_b: 8}
  - {id: wide, backend: {kind: simulated, hardware: h100, time_scale: 0.25}, params_b: 49, warm_at_start: false, ttft_slo_s: 60}
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 2}
    autoscale: {min_replicas: 0, max_replicas: 1, downscale_delay_s: 0, min_replicas_by_expert: {resident: 1}}
    prewarm: {kind: none}
storage: {enabled: false}
"""

# The fake vLLM server implements vLLM's /sleep and /wake_up; idle 3 s, the replica sleeps (keeping its server).
# The worker is of the CPU kind, whose wake time is measured live rather than modelled, so `sleep_after_s` alone
# decides when it sleeps (on a GPU kind keep-alive also weighs the modelled wake against the expected idle time).
SLEEPING = """
workers: [{{id: box, hardware: cpu, memory_gb: 160, devices: [0, 1]}}]
experts:
  - id: vllm
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              model: fake-8b, sleep: [POST, "/sleep?level=1"], wake: [POST, /wake_up], cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 0.135
    warm_at_start: false
    ttft_slo_s: 30
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {{kind: fixed, idle_timeout_s: 600, sleep_after_s: 3, asleep_keepalive_s: 30}}
    autoscale: {{min_replicas: 0, max_replicas: 1, downscale_delay_s: 0}}
    prewarm: {{kind: none}}
storage: {{enabled: false}}
"""
