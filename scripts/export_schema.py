#!/usr/bin/env python3
"""Write the GraphQL schema (SDL) to schema.graphql; tests/schema/test_schema_export.py keeps it in sync.

.venv/bin/python scripts/export_schema.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aicm.config import Settings  # noqa: E402
from aicm.schema import build_schema  # noqa: E402


def sdl() -> str:
    return build_schema(Settings()).as_str() + "\n"


if __name__ == "__main__":
    (ROOT / "schema.graphql").write_text(sdl())
    print("wrote schema.graphql")
