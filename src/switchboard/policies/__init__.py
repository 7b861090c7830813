"""Control-plane policies: pure functions of a clocked `FleetSnapshot` (see docs/control-plane.md).

One module per concern, each with an enum-keyed registry of small strategy classes and a pydantic settings
model: `keepalive`, `autoscale`, `placement`, `balance`, `admission`, `ordering`, `migration`, `routing`
(fleet-aware scoring and route-aware pre-warming). `control` composes them into one step that returns
`actions`; `actions.apply_action` applies an action to the fleet model.
"""
