"""What a task runs: its argv, its environment and its working directory (CONTRACT §5).

Nothing here touches a shell. ``build_argv`` returns a list for ``exec``; the prompt is one element of it
whatever characters it holds.

>>> build_argv(["claude", "-p", "{prompt}", "--verbose"], "fix $(this) {0}", resume_session_id="abc-1")
['claude', '-p', 'fix $(this) {0}', '--verbose', '--resume', 'abc-1']

Flags for what a task asks of the Claude CLI come from ``AgentFlags`` (with ``runner.agent_cli: claude``)::

>>> build_argv(["claude", "-p", "{prompt}"], "go", options=AgentFlags(max_budget_usd=0.5).argv())
['claude', '-p', 'go', '--max-budget-usd', '0.5']
>>> AgentFlags(permission_mode="acceptEdits").argv()
['--permission-mode', 'acceptEdits']
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "APPROVAL_PROMPT_TOOL",
    "ENV_ALLOWED_NAMES",
    "ENV_ALLOWED_PREFIXES",
    "PROMPT_PLACEHOLDER",
    "PYTHON_PLACEHOLDER",
    "SESSION_ID_PATTERN",
    "AgentFlags",
    "build_argv",
    "scrubbed_env",
]

PROMPT_PLACEHOLDER = "{prompt}"
PYTHON_PLACEHOLDER = "{python}"  # an element that is exactly this runs the server's own interpreter

# The only variables of the server's own environment an agent inherits (CONTRACT §7, Runner).
ENV_ALLOWED_NAMES = frozenset({"PATH", "HOME", "LANG", "TERM", "TZ"})
ENV_ALLOWED_PREFIXES = ("LC_",)

# Claude session ids are UUIDs; allow any plain token, but nothing an argument parser could read as an option.
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The tool of this system's MCP server (named "aicm" in the run's --mcp-config) that the CLI asks.
APPROVAL_PROMPT_TOOL = "mcp__aicm__approval_prompt"


@dataclass(frozen=True)
class AgentFlags:
    """What a run asks of the Claude CLI, as its flags (``argv``); a field left ``None`` adds nothing.

    ``permission_mode`` is the CLI's value (``default``, ``acceptEdits``, ``plan``, ``bypassPermissions``);
    ``mcp_config`` the path of the run's MCP config; ``permission_prompt_tool`` the tool the CLI asks before a
    tool that needs approval (``APPROVAL_PROMPT_TOOL``).

    >>> AgentFlags(max_budget_usd=2.0).argv()
    ['--max-budget-usd', '2.0']
    """

    max_budget_usd: float | None = None
    permission_mode: str | None = None
    mcp_config: str | None = None
    permission_prompt_tool: str | None = None

    def argv(self) -> list[str]:
        flags: list[str] = []
        if self.max_budget_usd is not None:
            if not (math.isfinite(self.max_budget_usd) and self.max_budget_usd > 0):
                raise ValueError(f"max_budget_usd must be a positive number: {self.max_budget_usd!r}")
            # Plain decimal notation: 1e-05 would not parse as a dollar amount everywhere.
            flags += ["--max-budget-usd", format(Decimal(repr(self.max_budget_usd)), "f")]
        if self.permission_mode is not None:
            flags += ["--permission-mode", self.permission_mode]
        if self.mcp_config is not None:
            flags += ["--mcp-config", self.mcp_config]
        if self.permission_prompt_tool is not None:
            flags += ["--permission-prompt-tool", self.permission_prompt_tool]
        return flags


def build_argv(
    template: Sequence[str],
    prompt: str,
    *,
    resume_session_id: str | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """``template`` with every ``{prompt}`` replaced by ``prompt``, plus ``--resume <id>`` when given, then
    ``options`` (e.g. ``AgentFlags(...).argv()``) as they are.

    An element that is exactly ``{python}`` becomes the server's own interpreter (``sys.executable``).

    The replacement is a literal ``str.replace`` in one pass (never ``str.format``), so braces in the prompt,
    or a prompt that itself contains ``{prompt}``, stay as they are.

    A prompt starting with ``-`` that lands at the start of an element (``-p {prompt}``) gets one leading
    space: otherwise the CLI's option parser would take ``--dangerously-skip-permissions`` typed as a prompt
    for an option. Every other character reaches the program unchanged.

    Raises ValueError for an empty template, a NUL character (``exec`` cannot pass one) or a session id that
    is not a plain token.
    """
    if not template or not template[0]:
        raise ValueError("runner command must be a non-empty list whose first element names the program")
    if "\x00" in prompt:
        raise ValueError("prompt must not contain NUL characters")
    argv: list[str] = []
    for element in template:
        if "\x00" in element:
            raise ValueError("runner command elements must not contain NUL characters")
        if element == PYTHON_PLACEHOLDER:  # e.g. the bundled demo agent, wherever the server is installed
            argv.append(sys.executable)
            continue
        value = element.replace(PROMPT_PLACEHOLDER, prompt)
        if element.startswith(PROMPT_PLACEHOLDER) and prompt.startswith("-"):
            value = " " + value
        argv.append(value)
    if resume_session_id is not None:
        if not SESSION_ID_PATTERN.fullmatch(resume_session_id):
            raise ValueError(f"not a valid session id: {resume_session_id!r}")
        argv += ["--resume", resume_session_id]
    for option in options:
        if "\x00" in option:
            raise ValueError("agent options must not contain NUL characters")
        argv.append(option)
    return argv


def scrubbed_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: the allow-listed part of ``environ``, plus ``extra`` (``runner.env``) on top.

    Everything else (``JWT_SECRET``, ``DATABASE_URL``, cloud credentials, ``ANTHROPIC_API_KEY``...) is
    dropped; an agent that needs a key gets it through ``runner.env``. Raises ValueError for an ``extra`` name
    that is not a valid variable name or a value holding a NUL character.
    """
    env = {
        name: value
        for name, value in environ.items()
        if (name in ENV_ALLOWED_NAMES or name.startswith(ENV_ALLOWED_PREFIXES)) and "\x00" not in value
    }
    for name, value in extra.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"runner.env: not a valid environment variable name: {name!r}")
        if "\x00" in str(value):
            raise ValueError(f"runner.env.{name}: must not contain NUL characters")
        env[name] = str(value)
    return env
