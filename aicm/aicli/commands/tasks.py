"""Tasks: ``tasks``, ``run``, ``logs``, ``diff``, ``cancel``, ``push``, ``merge`` and ``follow-up``."""

from __future__ import annotations

import argparse
from typing import Any

from aicm.aicli.attach import attach
from aicm.aicli.commands import Context
from aicm.aicli.commands.projects import find_project
from aicm.aicli.diffs import show_diff
from aicm.aicli.follow import LogFollower
from aicm.aicli.render import short_time, status_text

SUMMARY = "id status prompt branch costUsd createdAt finishedAt project { id name }"
LIST = f"""query($p: ID, $s: TaskStatus, $after: String) {{
  tasks(projectId: $p, status: $s, first: 100, after: $after) {{
    pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {SUMMARY} }} }} }} }}"""
CREATE = f"mutation($i: CreateTaskInput!) {{ createTask(input: $i) {{ {SUMMARY} }} }}"
FOLLOW_UP = f"mutation($id: ID!, $p: String!) {{ followUpTask(id: $id, prompt: $p) {{ {SUMMARY} }} }}"
CANCEL = f"mutation($id: ID!) {{ cancelTask(id: $id) {{ {SUMMARY} }} }}"
PUSH = f"mutation($id: ID!) {{ pushTask(id: $id) {{ {SUMMARY} pushedAt }} }}"
MERGE = f"""mutation($id: ID!, $s: MergeStrategy!) {{
  mergeTask(id: $id, input: {{strategy: $s}}) {{ {SUMMARY} mergedAt }} }}"""
CHANGES = """query($id: ID!) { task(id: $id) { id changes { filesChanged additions deletions truncated
  files { path oldPath status additions deletions binary patch } } } }"""
PROMPT_WIDTH = 60


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    tasks = commands.add_parser("tasks", parents=[common], help="list tasks, newest first")
    tasks.add_argument("project", nargs="?", help="project ID, slug or name (default: every project)")
    tasks.add_argument("--status", type=str.upper, help="only tasks in this status (RUNNING, FAILED, …)")
    tasks.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    tasks.set_defaults(handler=cmd_tasks)

    run = commands.add_parser("run", parents=[common], help="start a task")
    run.add_argument("project", help="project ID, slug or name")
    run.add_argument("prompt")
    run.add_argument("--base", help="branch, tag or commit to start from (default: the default branch)")
    _follow_flag(run)
    run.set_defaults(handler=cmd_run)

    follow_up = commands.add_parser("follow-up", parents=[common], help="continue a task's conversation")
    follow_up.add_argument("task", help="task ID")
    follow_up.add_argument("prompt")
    _follow_flag(follow_up)
    follow_up.set_defaults(handler=cmd_follow_up)

    logs = commands.add_parser("logs", parents=[common], help="print a task's log")
    logs.add_argument("task", help="task ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the task ends")
    logs.add_argument("--after", type=int, default=0, metavar="SEQ", help="only lines after this seq")
    logs.set_defaults(handler=cmd_logs)

    diff = commands.add_parser("diff", parents=[common], help="what a task changed, as a unified diff")
    diff.add_argument("task", help="task ID")
    diff.add_argument("--stat", action="store_true", help="only files and line counts")
    diff.set_defaults(handler=cmd_diff)

    for name, handler, text in (
        ("cancel", cmd_cancel, "cancel a task"),
        ("push", cmd_push, "push its branch"),
    ):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("task", help="task ID")
        command.set_defaults(handler=handler)
    merge = commands.add_parser("merge", parents=[common], help="merge a task's branch into its base")
    merge.add_argument("task", help="task ID")
    merge.add_argument("--strategy", type=str.upper, choices=["MERGE", "SQUASH", "REBASE"], default="MERGE")
    merge.set_defaults(handler=cmd_merge)


def _follow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="follow its log until it ends; exit 0 SUCCEEDED, 1 FAILED/TIMED_OUT, 130 CANCELLED/interrupted",
    )


async def cmd_tasks(ctx: Context, args: argparse.Namespace) -> int:
    project_id = (await find_project(ctx.api, args.project))["id"] if args.project else None
    tasks: list[dict[str, Any]] = []
    after = None
    while len(tasks) < args.limit:
        page = (await ctx.api.execute(LIST, {"p": project_id, "s": args.status, "after": after}))["tasks"]
        tasks += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    tasks = tasks[: max(args.limit, 0)]
    rows = [
        [
            t["id"],
            status_text(t["status"]) if ctx.out.rich else t["status"],
            (t["project"] or {}).get("name", ""),
            short_time(t["createdAt"]),
            "" if t["costUsd"] is None else f"${t['costUsd']:.4f}",
            _shorten(t["prompt"]) if ctx.out.rich else t["prompt"],
        ]
        for t in tasks
    ]
    ctx.out.table(["ID", "STATUS", "PROJECT", "CREATED", "COST", "PROMPT"], rows, tasks)
    return 0


async def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    project = await find_project(ctx.api, args.project)
    data: dict[str, Any] = {"projectId": project["id"], "prompt": args.prompt}
    if args.base:
        data["baseRef"] = args.base
    task = (await ctx.api.execute(CREATE, {"i": data}))["createTask"]
    return await _started(ctx, args, task, f"started task {task['id']} in {project['name']}")


async def cmd_follow_up(ctx: Context, args: argparse.Namespace) -> int:
    task = (await ctx.api.execute(FOLLOW_UP, {"id": args.task, "p": args.prompt}))["followUpTask"]
    return await _started(ctx, args, task, f"started follow-up task {task['id']} of {args.task}")


async def _started(ctx: Context, args: argparse.Namespace, task: dict[str, Any], message: str) -> int:
    if not args.follow:
        ctx.out.done(f"{message}; follow it: aicli logs {task['id']} --follow", value=task["id"], item=task)
        return 0
    if ctx.out.rich:
        ctx.out.note(f"{message} on branch {task['branch']}" if task.get("branch") else message)
    else:
        ctx.out.note(task["id"])  # on stderr: stdout carries only the task's lines
    return await attach(ctx.api, ctx.out, task["id"])


async def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    if args.follow:
        return await attach(ctx.api, ctx.out, args.task, after_seq=args.after)
    follower = LogFollower(ctx.api, args.task, after_seq=args.after, on_line=ctx.out.log_line)
    await follower.fill()
    return 0


async def cmd_diff(ctx: Context, args: argparse.Namespace) -> int:
    task = (await ctx.api.execute(CHANGES, {"id": args.task}))["task"]
    show_diff(ctx.out, task["changes"], stat=args.stat)
    return 0


async def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    task = (await ctx.api.execute(CANCEL, {"id": args.task}))["cancelTask"]
    ctx.out.done(f"task {task['id']} is {task['status']}", value=task["status"], item=task)
    return 0


async def cmd_push(ctx: Context, args: argparse.Namespace) -> int:
    task = (await ctx.api.execute(PUSH, {"id": args.task}))["pushTask"]
    ctx.out.done(f"pushed {task['branch']}", value=task["branch"] or "", item=task)
    return 0


async def cmd_merge(ctx: Context, args: argparse.Namespace) -> int:
    task = (await ctx.api.execute(MERGE, {"id": args.task, "s": args.strategy}))["mergeTask"]
    ctx.out.done(f"merged {task['branch']} ({args.strategy.lower()})", value=task["branch"] or "", item=task)
    return 0


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PROMPT_WIDTH else text[: PROMPT_WIDTH - 1] + "…"
