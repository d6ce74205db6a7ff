"""LangChain tools (the ``execgate[langchain]`` extra): one StructuredTool per execgate tool,
with its description and input schema, that runs sync or async."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from execgate.client._client import AsyncClient, AsyncOnApproval, Client, OnApproval
from execgate.client.tools._calls import run_tool, run_tool_async
from execgate.client.tools._openai import agent_tools

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool


def langchain_tools(client: Client, agent: str = "", *,
                    async_client: AsyncClient | None = None,
                    on_approval: OnApproval | None = None,
                    async_on_approval: AsyncOnApproval | None = None) -> list[BaseTool]:
    """The agent's tools as LangChain tools. ``invoke`` runs through ``client``;
    ``ainvoke`` through ``async_client`` (else ``client``, in a worker thread). Each returns
    the ToolOutcome's JSON, a refusal included."""
    try:
        from langchain_core.tools import StructuredTool
    except ImportError:
        raise ImportError("LangChain tools need langchain-core: "
                          "pip install 'execgate[langchain]'") from None

    def make(name: str) -> tuple[Any, Any]:
        def run(**arguments: Any) -> str:
            return run_tool(client, name, arguments, agent=agent,
                            on_approval=on_approval).to_json()

        async def arun(**arguments: Any) -> str:
            if async_client is None:
                return await asyncio.to_thread(run, **arguments)
            return (await run_tool_async(async_client, name, arguments, agent=agent,
                                         on_approval=async_on_approval)).to_json()

        return run, arun

    tools: list[BaseTool] = []
    for tool in agent_tools(client, agent):
        run, arun = make(tool.name)
        tools.append(StructuredTool.from_function(
            func=run, coroutine=arun, name=tool.name, description=tool.description,
            args_schema=dict(tool.input_schema)))
    return tools
