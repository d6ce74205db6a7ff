"""Built-in function tools (grep_search runs GNU grep through the command path instead)."""

from execgate.daemon.tools._files import ToolError, open_beneath, run_function

__all__ = ["ToolError", "open_beneath", "run_function"]
