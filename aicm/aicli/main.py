"""``aicli``: argument parsing, then one command; errors become a message on stderr and exit code 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib import metadata

from aicm.aicli.api import Api
from aicm.aicli.commands import Context, approvals, projects, session, tasks
from aicm.aicli.errors import CliError
from aicm.aicli.render import Output
from aicm.aicli.store import CredentialStore, StoreError, config_dir

INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    # --json is accepted before or after the command; SUPPRESS keeps a subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    top = argparse.ArgumentParser(
        prog="aicli",
        description="Run and follow AI coding tasks on an AICode Manager server from the terminal.",
        epilog="Output is rich at a terminal, plain lines (tab-separated, no header) when piped, "
        "JSON with --json.",
    )
    top.add_argument("--json", action="store_true", default=False, help="print JSON")
    top.add_argument("--version", action="version", version=f"aicli {_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (session, projects, tasks, approvals):
        module.register(commands, common)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Output(json_mode=args.json)
    store = CredentialStore(config_dir())
    try:
        return asyncio.run(_run(store, out, args))
    except KeyboardInterrupt:
        out.note("interrupted")
        return INTERRUPTED
    except CliError as exc:
        out.error(str(exc))
        return 1


async def _run(store: CredentialStore, out: Output, args: argparse.Namespace) -> int:
    try:
        credentials = store.load()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    async with Api(store, credentials) as api:
        return await args.handler(Context(store=store, api=api, out=out), args)


def _version() -> str:
    try:
        return metadata.version("aicode-manager")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
