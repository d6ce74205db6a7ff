"""An agent loop with execgate as its sandbox, driven by a scripted model.

The model is a stand-in for an LLM: it answers each turn with the next tool call of its
script, the way a Chat Completions response carries tool calls, and ends with a summary. So
the loop runs anywhere, without network or API key, and shows what execgate does with each
kind of call: one that runs, one the policy denies, one a human approves, one that times out.

    execgated serve --config examples/policy.yaml &
    python examples/agent_loop.py        # finds the daemon as ``execgate`` does

Replace ``ScriptedModel.complete`` with your LLM's client call: the tools and messages are in
OpenAI's Chat Completions shape.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from execgate.client import ApprovalRequested, Client
from execgate.client.tools import dispatch, openai_tools

SCRIPT = [
    ("shell", {"argv": ["echo", "hello from the sandbox"]}),
    ("shell", {"argv": ["rm", "-rf", "."]}),  # the policy denies rm
    ("shell", {"argv": ["touch", "notes.txt"]}),  # the policy asks a human first
    ("shell", {"argv": ["sleep", "30"], "timeout": 1}),  # stopped at its deadline
]


class ScriptedModel:
    """A fake LLM: each turn, the next tool call of its script; then a summary."""

    def __init__(self, script: list[tuple[str, dict[str, Any]]]) -> None:
        self._turns: Iterator[tuple[str, dict[str, Any]]] = iter(script)
        self._count = 0

    def complete(self, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]]) -> dict[str, Any]:
        """The assistant's next message, given the conversation and the tool definitions."""
        offered = {t["function"]["name"] for t in tools}
        for name, arguments in self._turns:
            if name not in offered:
                continue
            self._count += 1
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{self._count}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}]}
        outcomes = [json.loads(m["content"])["reason"] for m in messages if m["role"] == "tool"]
        return {"role": "assistant", "content": f"done: {', '.join(outcomes)}"}


def approve_at_the_console(request: ApprovalRequested) -> bool:
    """The human in the loop (scripted too: it approves, and says what it approved)."""
    print(f"human approves: {request.prompt}")
    return True


def main() -> int:
    """Run the loop until the model stops calling tools."""
    model = ScriptedModel(SCRIPT)
    with Client() as client:
        tools = openai_tools(client, "dev")
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": "Say hello, clean up, take notes, then wait."}]
        while True:
            reply = model.complete(messages, tools)
            messages.append(reply)
            if not reply.get("tool_calls"):
                print(f"model: {reply['content']}")
                return 0
            for call in reply["tool_calls"]:
                answer = dispatch(client, call, agent="dev",
                                  on_approval=approve_at_the_console)
                messages.append(answer)
                outcome = json.loads(answer["content"])
                print(f"{call['function']['arguments']} -> {outcome['reason']}"
                      f" {outcome['rule'] or outcome['stdout'].strip()}".rstrip())


if __name__ == "__main__":
    sys.exit(main())
