"""``aicli projects`` and ``aicli project create``; finding a project by ID, slug or name."""

from __future__ import annotations

import argparse
from typing import Any

from aicm.aicli.api import Api
from aicm.aicli.commands import Context
from aicm.aicli.errors import ApiError, CliError

FIELDS = "id name slug description repositoryUrl defaultBranch status viewerRole { name } createdAt"
LIST = f"""query($after: String, $search: String, $archived: Boolean!) {{
  projects(first: 100, after: $after, search: $search, includeArchived: $archived) {{
    pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {FIELDS} }} }} }} }}"""
BY_ID = f"query($id: ID!) {{ project(id: $id) {{ {FIELDS} }} }}"
CREATE = f"mutation($i: CreateProjectInput!) {{ createProject(input: $i) {{ {FIELDS} }} }}"
MAX_PAGES = 100  # 10,000 projects


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser("projects", parents=[common], help="list the projects you can see")
    listing.add_argument("--search", help="only names or descriptions containing this")
    listing.add_argument("--archived", action="store_true", help="include archived projects")
    listing.set_defaults(handler=cmd_projects)

    project = commands.add_parser("project", help="manage a project")
    actions = project.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a project")
    create.add_argument("name")
    create.add_argument(
        "--repo", default="", help="repository URL to clone (default: a new empty repository)"
    )
    create.add_argument("--description", default="")
    create.set_defaults(handler=cmd_project_create)


async def cmd_projects(ctx: Context, args: argparse.Namespace) -> int:
    projects = await list_projects(ctx.api, search=args.search, archived=args.archived)
    rows = [
        [
            p["id"],
            p["name"],
            p["slug"],
            (p["viewerRole"] or {}).get("name", ""),
            p["defaultBranch"] or "",
            p["status"],
        ]
        for p in projects
    ]
    ctx.out.table(["ID", "NAME", "SLUG", "ROLE", "BRANCH", "STATUS"], rows, projects)
    return 0


async def cmd_project_create(ctx: Context, args: argparse.Namespace) -> int:
    data = {"name": args.name, "description": args.description, "repositoryUrl": args.repo}
    project = (await ctx.api.execute(CREATE, {"i": data}))["createProject"]
    ctx.out.done(
        f"created project {project['name']} (slug {project['slug']}, id {project['id']})",
        value=project["id"],
        item=project,
    )
    return 0


async def list_projects(
    api: Api, *, search: str | None = None, archived: bool = False
) -> list[dict[str, Any]]:
    projects: list[dict[str, Any]] = []
    after = None
    for _ in range(MAX_PAGES):
        page = (await api.execute(LIST, {"after": after, "search": search, "archived": archived}))["projects"]
        projects += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    return projects


async def find_project(api: Api, ref: str) -> dict[str, Any]:
    """The project whose ID, slug or name is ``ref`` (an ID wins, then a slug, then a name)."""
    try:
        return (await api.execute(BY_ID, {"id": ref}))["project"]
    except ApiError as exc:
        if exc.code not in ("NOT_FOUND", "BAD_USER_INPUT"):
            raise
    # search matches names (and descriptions); a slug needs the whole list
    for candidates in (await list_projects(api, search=ref, archived=True), None):
        found = _matching(
            candidates if candidates is not None else await list_projects(api, archived=True), ref
        )
        if found is not None:
            return found
    raise CliError(f"no project {ref!r} that you can see (aicli projects lists them)")


def _matching(candidates: list[dict[str, Any]], ref: str) -> dict[str, Any] | None:
    for key in ("slug", "name"):
        found = [p for p in candidates if p[key] == ref] or [
            p for p in candidates if p[key].casefold() == ref.casefold()
        ]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(p["id"] for p in found)
            raise CliError(f"several projects are named {ref!r} ({ids}); give the ID")
    return None
