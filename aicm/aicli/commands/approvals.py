"""Tool approvals: ``approvals [--watch]``, ``approve ID`` and ``deny ID`` (the API's ApprovalRequest)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from rich.text import Text

from aicm.aicli.api import Api
from aicm.aicli.commands import Context
from aicm.aicli.commands.projects import find_project, list_projects
from aicm.aicli.errors import ApiError, CliError, Dropped, Unreachable
from aicm.aicli.follow import MAX_BACKOFF, MAX_RECONNECTS, token_expired
from aicm.aicli.render import Output, short_time, status_text
from aicm.aicli.socket import Socket

FIELDS = """id toolName input status requestedAt decidedAt reason decidedBy { email }
  task { id prompt project { id name } }"""
# The status is written into the document (checked to be an enum name) and the decision's input inline: the
# client names no GraphQL type of the server's, only fields.
LIST = """query($p: ID!, $after: String) {{
  approvalRequests(projectId: $p{status}, first: 100, after: $after) {{
    pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {fields} }} }} }} }}"""
MAX_PAGES = 100
WATCH = f"subscription($p: ID!) {{ approvalRequests(projectId: $p) {{ {FIELDS} }} }}"
DECIDE = f"""mutation($id: ID!, $allow: Boolean!, $reason: String, $remember: Boolean!) {{
  decideApproval(id: $id, input: {{allow: $allow, reason: $reason, remember: $remember}}) {{ {FIELDS} }} }}"""
MAX_WATCHED = 18  # subscriptions per connection are capped at 20 by the server
INPUT_WIDTH = 80


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser("approvals", parents=[common], help="tool calls waiting for a decision")
    listing.add_argument("project", nargs="?", help="project ID, slug or name (default: every project)")
    listing.add_argument("--status", type=str.upper, default="PENDING", help="PENDING (default), ALLOWED, …")
    listing.add_argument("--watch", "-w", action="store_true", help="keep printing new requests")
    listing.set_defaults(handler=cmd_approvals)
    for name, handler in (("approve", cmd_approve), ("deny", cmd_deny)):
        decide = commands.add_parser(name, parents=[common], help=f"{name} a tool call")
        decide.add_argument("id", help="approval request ID")
        decide.add_argument("--reason", help="told to the agent and kept in the audit log")
        if name == "approve":
            decide.add_argument(
                "--remember", action="store_true", help="allow the same call for the rest of the task"
            )
        decide.set_defaults(handler=handler)


async def cmd_approvals(ctx: Context, args: argparse.Namespace) -> int:
    projects = [await find_project(ctx.api, args.project)] if args.project else await list_projects(ctx.api)
    project_ids = [project["id"] for project in projects]
    requests = await _list(ctx.api, project_ids, args.status)
    if not args.watch:
        rows = [_row(ctx.out, request) for request in requests]
        ctx.out.table(["ID", "STATUS", "TOOL", "INPUT", "TASK", "PROJECT", "REQUESTED"], rows, requests)
        return 0
    if len(projects) > MAX_WATCHED:
        raise CliError(
            f"you see {len(projects)} projects; watch one at a time: aicli approvals PROJECT --watch"
        )
    seen: set[tuple[str, str]] = set()
    for request in requests:
        _show(ctx.out, request, seen)
    ctx.out.note("watching for tool calls to approve; Ctrl-C to stop")
    await _watch(ctx, project_ids, seen)
    return 0


async def cmd_approve(ctx: Context, args: argparse.Namespace) -> int:
    return await _decide(ctx, args.id, allow=True, reason=args.reason, remember=args.remember)


async def cmd_deny(ctx: Context, args: argparse.Namespace) -> int:
    return await _decide(ctx, args.id, allow=False, reason=args.reason, remember=False)


async def _decide(ctx: Context, request_id: str, *, allow: bool, reason: str | None, remember: bool) -> int:
    decision = {"id": request_id, "allow": allow, "reason": reason, "remember": remember}
    try:
        request = (await ctx.api.execute(DECIDE, decision))["decideApproval"]
    except ApiError as exc:
        raise _older_server(exc, "decideApproval") from None
    ctx.out.done(
        f"{request['toolName']} for task {request['task']['id']}: {request['status']}",
        value=request["status"],
        item=request,
    )
    return 0


async def _list(api: Api, project_ids: list[str], status: str | None) -> list[dict[str, Any]]:
    """The projects' requests in that status (every status when None), project by project."""
    if status and not re.fullmatch(r"[A-Z_]+", status):
        raise CliError(f"not a status: {status!r} (PENDING, ALLOWED, DENIED, EXPIRED)")
    query = LIST.format(status=f", status: {status}" if status else "", fields=FIELDS)
    requests: list[dict[str, Any]] = []
    for project_id in project_ids:
        after = None
        for _ in range(MAX_PAGES):
            try:
                page = (await api.execute(query, {"p": project_id, "after": after}))["approvalRequests"]
            except ApiError as exc:
                raise _older_server(exc, "approvalRequests") from None
            requests += [edge["node"] for edge in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
    return requests


async def _watch(ctx: Context, project_ids: list[str], seen: set[tuple[str, str]]) -> None:
    """Until interrupted; after a dropped connection, lists what came meanwhile, then watches again."""
    failures = 0
    while True:
        began = time.monotonic()
        try:
            async with await Socket.open(ctx.api) as socket:
                for index, project_id in enumerate(project_ids):
                    await socket.subscribe(f"approvals-{index}", WATCH, {"p": project_id})
                await _catch_up(ctx, project_ids, seen)
                async for message in socket.messages():
                    if message.type == "error":
                        raise _older_server(message.error(), "approvalRequests")
                    if message.type == "next":
                        failures = 0
                        _show(ctx.out, ((message.payload or {}).get("data") or {})["approvalRequests"], seen)
        except (Dropped, Unreachable) as exc:
            if not token_expired(exc, time.monotonic() - began):
                failures += 1  # an expired token is routine; what came meanwhile is caught up on reconnect
            if failures > MAX_RECONNECTS:
                raise CliError(f"lost the connection to the server: {exc}") from exc
            await asyncio.sleep(min(0.25 * 2**failures, MAX_BACKOFF))


async def _catch_up(ctx: Context, project_ids: list[str], seen: set[tuple[str, str]]) -> None:
    """What no subscription heard (before this one started, or while the connection was down): new pending
    requests, and the decisions on those already shown."""
    shown = {request_id for request_id, _ in seen}
    for request in await _list(ctx.api, project_ids, None):
        if request["status"] == "PENDING" or request["id"] in shown:
            _show(ctx.out, request, seen)


def _show(out: Output, request: dict[str, Any], seen: set[tuple[str, str]]) -> None:
    key = (request["id"], request["status"])
    if key in seen:
        return
    seen.add(key)
    if out.json:
        out.emit_json(request)
    elif out.rich:
        out.console.print(
            Text("  ").join(
                cell if isinstance(cell, Text) else Text(str(cell)) for cell in _row(out, request)
            )
        )
    else:
        out.plain("\t".join(str(cell) for cell in _row(out, request)))


def _row(out: Output, request: dict[str, Any]) -> list[Any]:
    task = request.get("task") or {}
    tool_input = json.dumps(request.get("input"), ensure_ascii=False)
    if out.rich and len(tool_input) > INPUT_WIDTH:
        tool_input = tool_input[: INPUT_WIDTH - 1] + "…"
    return [
        request["id"],
        status_text(request["status"]) if out.rich else request["status"],
        request["toolName"],
        tool_input,
        task.get("id", ""),
        (task.get("project") or {}).get("name", ""),
        short_time(request.get("requestedAt")),
    ]


def _older_server(exc: ApiError, field: str) -> Exception:
    if exc.unknown_field(field) or "Unknown type" in exc.message:
        return CliError(f"this server has no tool approvals ({field} is not in its API); it needs upgrading")
    return exc
