"""Built-in function tools (grep_search runs GNU grep through the command path instead)."""

from execgate.daemon.tools._files import ToolError, open_beneath, run_function
from execgate.daemon.tools._registry import FUNCTION_TOOLS, Argument, FunctionTool

__all__ = ["FUNCTION_TOOLS", "Argument", "FunctionTool", "ToolError", "open_beneath",
           "run_function"]
