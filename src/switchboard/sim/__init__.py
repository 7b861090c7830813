"""The discrete-event simulator: the same policies as the live server, on real traces, in simulated time.

`workload` builds request streams (Azure traces, synthetic bursts, prompts from the routing data); `events` is
the ordered event queue; `engine` the per-replica continuous-batching model driven by `switchboard.perf`;
`runner` replays a workload through the fleet and its policies; `report` summarises a run.
"""
