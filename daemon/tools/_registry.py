"""The built-in function tools and their named arguments: the one place that defines them.

The policy file's schema (which handlers exist, which placeholders a prompt may use), the
policy's checks of a call (which arguments, which values) and the JSON Schema a model is given
in ``ListAgents`` all read this table, so they cannot disagree.

Arguments travel as strings (``map<string, string>`` on the wire); ``kind`` says what the
string must hold, and the schema shows a model the natural JSON type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

MAX_OFFSET = 2**63 - 1
"""The largest file offset (or length) the kernel takes: a signed 64-bit loff_t."""
FLAG_VALUES = ("true", "false")
"""How a boolean argument is written on the wire."""


@dataclass(frozen=True)
class Argument:
    """One named argument of a function tool."""

    name: str
    kind: Literal["string", "path", "bytes", "flag", "choice"]
    """``path``: relative to the tool's working directory; ``bytes``: a whole number from 0
    to MAX_OFFSET; ``flag``: true or false; ``choice``: one of ``choices``."""
    description: str
    required: bool = False
    choices: tuple[str, ...] = ()
    default: str | None = None

    def schema(self) -> dict[str, Any]:
        """This argument's JSON Schema."""
        schema: dict[str, Any] = {"description": self.description}
        if self.kind == "bytes":
            schema.update(type="integer", minimum=0, maximum=MAX_OFFSET)
        elif self.kind == "flag":
            schema["type"] = "boolean"
        elif self.kind == "choice":
            schema.update(type="string", enum=list(self.choices))
        else:
            schema["type"] = "string"
        if self.default is not None:
            schema["default"] = (self.default == "true" if self.kind == "flag"
                                 else int(self.default) if self.kind == "bytes" else self.default)
        return schema


@dataclass(frozen=True)
class FunctionTool:
    """A built-in function tool: what it does and the arguments it takes."""

    handler: str
    description: str
    arguments: tuple[Argument, ...]

    @property
    def required(self) -> frozenset[str]:
        """Names of the arguments a call must give."""
        return frozenset(a.name for a in self.arguments if a.required)

    @property
    def optional(self) -> frozenset[str]:
        """Names of the arguments a call may leave out."""
        return frozenset(a.name for a in self.arguments if not a.required)

    @property
    def prompt_fields(self) -> frozenset[str]:
        """Placeholders an approval prompt of this tool may use (``file`` is ``path``)."""
        return frozenset({*(a.name for a in self.arguments), "file"})

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of a call's arguments."""
        return {"type": "object",
                "properties": {a.name: a.schema() for a in self.arguments},
                "required": sorted(self.required),
                "additionalProperties": False}


_PATH = "Path relative to the tool's working directory; it may not lead outside it."
FUNCTION_TOOLS: Mapping[str, FunctionTool] = MappingProxyType({t.handler: t for t in (
    FunctionTool("read_file", "Read a file inside the tool's working directory (a window of it "
                 "with offset and limit; at most the tool's max_file_bytes at once).", (
        Argument("path", "path", _PATH, required=True),
        Argument("offset", "bytes", "First byte to read.", default="0"),
        Argument("limit", "bytes", "Most bytes to read (default: to the end of the file)."),
    )),
    FunctionTool("write_file", "Write UTF-8 text to a file inside the tool's working directory "
                 "(at most the tool's max_file_bytes).", (
        Argument("path", "path", _PATH, required=True),
        Argument("content", "string", "The text to write.", required=True),
        Argument("mode", "choice", "overwrite the file, append to it, or create it (fails "
                 "if it exists).", choices=("overwrite", "append", "create"),
                 default="overwrite"),
    )),
    FunctionTool("list_directory", "List a directory inside the tool's working directory: one "
                 "entry a line, directories end in /, symlinks in @.", (
        Argument("path", "path", _PATH, default="."),
    )),
    FunctionTool("grep_search", "Search files inside the tool's working directory with GNU "
                 "grep (extended regular expressions); prints file:line:text.", (
        Argument("pattern", "string", "The regular expression (or text, with "
                 "fixed_strings) to find.", required=True),
        Argument("path", "path", "File or directory to search. " + _PATH, default="."),
        Argument("ignore_case", "flag", "Match regardless of case.", default="false"),
        Argument("fixed_strings", "flag", "Take pattern as plain text.", default="false"),
    )),
)})
"""Every built-in function tool, by handler name."""
