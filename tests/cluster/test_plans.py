"""Plans cross hosts as JSON and come back as the very plan (and digest) they were."""

from __future__ import annotations

import json
from pathlib import Path

from execgate.daemon.approvals import plan_digest
from execgate.daemon.cluster._plans import plan_from_json, plan_to_json
from execgate.daemon.model import CommandPlan, Confinement, FunctionPlan, Limits

LIMITS = Limits(timeout=20.0, output_limit_bytes=1024, kill_grace=1.0, idle_timeout=None)
COMMAND = CommandPlan(
    agent="dev", tool="shell", executable="/usr/bin/sh", argv=("sh", "-c", "echo é"),
    cwd=Path("/srv/jail/sub"), cwd_identity=(64769, 1234), env={"LANG": "C.UTF-8"},
    limits=LIMITS, stdin=True, jail=Path("/srv/jail"),
    confinement=Confinement(
        filesystem="required", namespaces="required", cgroup="optional", view="required",
        unix_sockets=("/run/pg.sock",), network=False, uid=65534, gid=65534, user="nobody",
        read_paths=("/usr", "/etc"), write_paths=(), cpu_time=600.0, file_size=None,
        open_files=1024, address_space=None, processes=256, memory=2**31, tmp_size=2**28))
FUNCTION = FunctionPlan(agent="dev", tool="writer", handler="write_file",
                        arguments={"path": "a.txt", "content": "x"}, jail=Path("/srv/jail"),
                        limits=LIMITS, max_file_bytes=2**20)


def test_a_command_plan_survives_the_trip() -> None:
    back = plan_from_json(json.loads(json.dumps(plan_to_json(COMMAND))))
    assert back == COMMAND
    assert plan_digest(back) == plan_digest(COMMAND)


def test_a_function_plan_survives_the_trip() -> None:
    back = plan_from_json(json.loads(json.dumps(plan_to_json(FUNCTION))))
    assert back == FUNCTION
    assert plan_digest(back) == plan_digest(FUNCTION)
