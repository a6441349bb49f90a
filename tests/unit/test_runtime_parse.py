from __future__ import annotations

import json
from datetime import UTC, datetime

from orchestrator.runtime import parse_inspect, ps_ids

DOCKER = [{"Id": "abc", "Name": "/orch-x-h0-1", "RestartCount": 2,
           "State": {"Status": "running", "Running": True, "ExitCode": 0,
                     "StartedAt": "2026-11-24T16:58:12.123456789Z"},
           "Config": {"Labels": {"orch.spec": "h1"}, "Image": "img"}}]
PODMAN = [{"Id": "def", "Name": "orch-x-h1-1",
           "State": {"Status": "exited", "Running": False, "ExitCode": 137,
                     "StartedAt": "2026-11-24T16:58:12.123456789+00:00"},
           "Config": {"Labels": {"orch.spec": "h2"}}, "ImageName": "localhost/img:1"}]


def test_docker_inspect():
    (c,) = parse_inspect(json.dumps(DOCKER))
    assert (c.name, c.running, c.restarts, c.spec_hash) == ("orch-x-h0-1", True, 2, "h1")
    assert c.started_at == datetime(2026, 11, 24, 16, 58, 12, 123456, tzinfo=UTC)


def test_podman_inspect():
    (c,) = parse_inspect(json.dumps(PODMAN))
    assert (c.status, c.exit_code, c.running, c.image) == ("exited", 137, False, "localhost/img:1")
    assert c.started_at is not None and c.started_at.minute == 58


def test_ps_filters_by_deployment_and_node():
    argv = ps_ids("podman", "dep", "h0")
    assert argv[:2] == ["podman", "ps"]
    assert "label=orch.deployment=dep" in argv and "label=orch.node=h0" in argv
