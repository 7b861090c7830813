"""The /admin/fleet view is JSON-serialisable and names states, decisions and reasons."""

from __future__ import annotations

import json

from fake_executor import FakeExecutor
from policy_builders import fleet, request
from switchboard.policies.control import ControlPlane, ControlSettings
from switchboard.policies.describe import describe_fleet


def test_describe_fleet_round_trips_through_json():
    ex = FakeExecutor(fleet(experts=("a", "b"), external=("b",)), ControlPlane(ControlSettings()))
    result = ex.arrive(request(1))
    view = json.loads(json.dumps(describe_fleet(ex.snapshot, result)))
    assert view["num_cold_starts"] == 1
    assert view["replicas"][0]["state"] == "starting" and view["replicas"][0]["num_queued"] == 1
    assert [a["action"] for a in view["last_actions"]] == ["StartReplica", "AssignRequest"]
    assert view["last_actions"][1]["request_id"] == "q1" and view["last_actions"][1]["is_cold_start"]
    a, b = view["experts"]
    assert a["keepalive"]["reason"]["code"] == "busy" and b["is_external"] and b["is_warm"]
    assert view["transition_counts"] == {"cold->starting": 1}
