"""Plans and principals as JSON, so that another host can show a request its approvers
decide. Decoding names every field: nothing in Redis becomes an object it did not spell."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from execgate.daemon.model import CommandPlan, Confinement, FunctionPlan, Limits, Plan, Principal

_TUPLES = ("unix_sockets", "read_paths", "write_paths")


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """``plan`` as JSON-ready data (paths as strings)."""
    body = dataclasses.asdict(plan)
    body["kind"] = "command" if isinstance(plan, CommandPlan) else "function"
    body["jail"] = str(plan.jail)
    if isinstance(plan, CommandPlan):
        body["cwd"] = str(plan.cwd)
    return body


def plan_from_json(body: dict[str, Any]) -> Plan:
    """The plan ``plan_to_json`` wrote; raises KeyError or TypeError on anything else."""
    limits = Limits(**body["limits"])
    if body["kind"] == "function":
        return FunctionPlan(agent=body["agent"], tool=body["tool"], handler=body["handler"],
                            arguments=dict(body["arguments"]), jail=Path(body["jail"]),
                            limits=limits, max_file_bytes=int(body["max_file_bytes"]))
    confinement = dict(body["confinement"])
    for name in _TUPLES:
        confinement[name] = tuple(confinement[name])
    return CommandPlan(agent=body["agent"], tool=body["tool"], executable=body["executable"],
                       argv=tuple(body["argv"]), cwd=Path(body["cwd"]),
                       cwd_identity=(int(body["cwd_identity"][0]),
                                     int(body["cwd_identity"][1])),
                       env=dict(body["env"]), limits=limits, stdin=bool(body["stdin"]),
                       jail=Path(body["jail"]), confinement=Confinement(**confinement))


def principal_to_json(principal: Principal) -> dict[str, str]:
    """Who, as far as approvals need it: subject and method (claims stay home)."""
    return {"subject": principal.subject, "method": principal.method}


def principal_from_json(body: dict[str, Any]) -> Principal:
    """The principal ``principal_to_json`` wrote."""
    return Principal(subject=str(body["subject"]), method=str(body["method"]))
