"""The discrete-event simulator: the control plane's own policies, on real traces, in simulated time.

`workload` builds request streams (Azure traces, synthetic bursts, scheduled jobs, prompts from the routing data);
`events` is the ordered event queue; `engine` the per-replica continuous-batching model driven by
`switchboard.perf`; `cluster` the cluster specs; `plane`/`planes` what the simulator asks of a control plane and
the static and serverless planes; `runner` replays a workload; `report` summarises a run; `scenario` names the
policy sets; `planner` and `plots` serve `switchboard sim plan / compare`. See docs/simulator.md.
"""
