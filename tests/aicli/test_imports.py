"""``aicm.aicli`` is a client of the public API: it imports no other ``aicm`` module, so it could ship alone
(and a change inside the server can never change what the client does without the API changing)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import aicm.aicli

PACKAGE = Path(aicm.aicli.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; write aicm.aicli.… in full")
    return names


def test_the_client_imports_nothing_of_the_server() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        server_side = {
            name
            for name in imported_modules(path)
            if name.split(".")[0] == "aicm" and not name.startswith("aicm.aicli")
        }
        assert not server_side, f"{path.relative_to(PACKAGE.parent)} imports {server_side}"


def test_running_the_client_loads_no_server_module() -> None:
    code = (
        "import sys; from aicm.aicli import main; main.parser();"
        "print(sorted(m for m in sys.modules if m.startswith('aicm') and not m.startswith('aicm.aicli')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "['aicm']"
