"""execgated: the daemon that checks AI agents' tool calls against a policy and runs them confined.

The path of one call is a straight line, one module a step:
identity (``auth``) -> access (``access``) -> policy (``policy``) -> sandbox (``sandbox``)
-> stream (``runs``) -> audit (``audit``); ``services`` is the only layer that sees gRPC types.
"""
