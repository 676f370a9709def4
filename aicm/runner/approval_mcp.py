"""The MCP server a CLI starts from its run's ``--mcp-config`` (CONTRACT §10): the ``approval_prompt`` tool.

Claude Code runs it as a stdio server (``{python} -m aicm.runner.approval_mcp``) and calls
``mcp__aicm__approval_prompt`` with ``{"tool_name", "input", "tool_use_id"}`` before a tool that needs
permission. Each call is forwarded, with the run's credential, over the unix socket of the run's
``ApprovalGate`` (``aicm/runner/approvals.py``) in the process running the agent, which waits for a project
member's decision; the tool result's text is the JSON Claude Code expects
(``{"behavior": "allow", "updatedInput": …}`` or ``{"behavior": "deny", "message": …}``).

A unix socket and not TCP: with ``runner.network: false`` the sandbox has no network at all, loopback
included, but a socket file bound into it still connects (docs/architecture.md).

Environment (from the MCP config): ``AICM_APPROVAL_SOCKET``, ``AICM_APPROVAL_TOKEN``, ``AICM_TASK_ID``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from mcp.server.mcpserver import MCPServer

ENV_SOCKET, ENV_TOKEN, ENV_TASK = "AICM_APPROVAL_SOCKET", "AICM_APPROVAL_TOKEN", "AICM_TASK_ID"
MAX_ANSWER_BYTES = 1024 * 1024

server = MCPServer("aicm", instructions="Asks the project's approvers before a tool that needs permission.")


async def ask(message: dict[str, Any], socket_path: str) -> dict[str, Any]:
    """Send one request to the gate and read its one-line answer."""
    reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_ANSWER_BYTES)
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
    if not line:
        return {"error": "the server closed the connection (the run has ended)"}
    answer = json.loads(line)
    return answer if isinstance(answer, dict) else {"error": "unexpected answer"}


@server.tool(
    description=(
        "Ask a project member with the approver role whether a tool call may run. "
        'Returns {"behavior": "allow", "updatedInput": ...} or {"behavior": "deny", "message": ...}.'
    )
)
async def approval_prompt(tool_name: str, input: dict[str, Any], tool_use_id: str | None = None) -> str:
    try:
        task_id = int(os.environ.get(ENV_TASK, ""))
        answer = await ask(
            {
                "task_id": task_id,
                "token": os.environ.get(ENV_TOKEN, ""),
                "tool_name": tool_name,
                "input": input,
                "tool_use_id": tool_use_id,
            },
            os.environ[ENV_SOCKET],
        )
    except (KeyError, ValueError, OSError) as exc:
        answer = {"error": f"the approval server could not be reached: {exc}"}
    if "error" in answer:
        answer = {"behavior": "deny", "message": f"Approval refused by AICode Manager: {answer['error']}"}
    return json.dumps(answer)


if __name__ == "__main__":
    server.run("stdio")
