"""Hand execgate's tools to a model: OpenAI-shaped definitions and ``dispatch``, LangChain
tools (the ``execgate[langchain]`` extra), and the ToolOutcome every call comes back as.

    with Client() as client:
        tools = openai_tools(client, "dev")          # give these to the model
        message = dispatch(client, tool_call)        # answer each tool call it makes
"""

from execgate.client.tools._calls import ToolOutcome, run_tool, run_tool_async
from execgate.client.tools._langchain import langchain_tools
from execgate.client.tools._openai import dispatch, openai_tools

__all__ = ["ToolOutcome", "dispatch", "langchain_tools", "openai_tools", "run_tool",
           "run_tool_async"]
