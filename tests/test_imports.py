"""Every module of ``aicm`` imports on its own, whatever was imported before it (no hidden import cycles).

An import cycle can work only because of the order in which a process happens to import modules. A fresh
interpreter preloads the third-party packages (none of them imports aicm), then forks one child per module (one per
core at a time), so that each child imports exactly one aicm module into a ``sys.modules`` with no aicm module in it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aicm

PACKAGE_DIR = Path(aicm.__file__).parent

CHILDREN = r"""
import importlib, os, sys, traceback

for name in ("strawberry", "tortoise", "starlette", "redis.asyncio", "prometheus_client", "saq", "authlib",
             "authlib.integrations.starlette_client", "jwt", "argon2", "yaml", "httpx", "uvicorn", "graphql",
             "mcp.server", "mcp.client.stdio", "orjson", "rich.console", "websockets"):
    importlib.import_module(name)
assert not [m for m in sys.modules if m == "aicm" or m.startswith("aicm.")], "a preload imported aicm"

def child(module):
    try:
        importlib.import_module(module)
    except BaseException:
        print(f"--- import {module}", file=sys.stderr)
        traceback.print_exc()
        os._exit(1)
    os._exit(0)

failed, running = [], {}  # one child per core at a time: the children only import
for module in sys.argv[1:]:
    if len(running) >= (os.cpu_count() or 1):
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(running[pid])
        del running[pid]
    pid = os.fork()
    if pid == 0:
        child(module)
    running[pid] = module
while running:
    pid, status = os.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(running[pid])
    del running[pid]
print("\n".join(failed))
"""


def aicm_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_module_list_covers_the_package() -> None:
    modules = aicm_modules()
    assert {"aicm", "aicm.app", "aicm.runner.logs", "aicm.resolvers.unit_of_work"} <= set(modules)
    assert len(modules) > 80


def test_every_module_imports_on_its_own() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILDREN, *aicm_modules()],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    failed = result.stdout.split()
    assert failed == [], f"modules that fail to import on their own: {failed}\n{result.stderr[-6000:]}"
