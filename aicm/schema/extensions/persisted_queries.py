"""Persisted queries (``graphql.persisted_queries``): the safelist manifest and its check on every transport.

The request side (resolving a hash to its query, the APQ store) is ``aicm.http.persisted_queries``.

``apq`` speaks Apollo's protocol. A request may carry ``extensions.persistedQuery = {"version": 1,
"sha256Hash": "<hex>"}`` instead of the query text (also over GET, so a CDN can cache it). A known hash runs
its stored query; an unknown one answers ``PERSISTED_QUERY_NOT_FOUND`` and the client retries with the text
and the hash, which is checked, run and stored (in Redis for ``persisted_queries_ttl`` when configured, else
in an in-process LRU of ``persisted_queries_cache_size`` entries).

``safelist`` runs only the operations of ``persisted_queries_manifest``: by hash (or the manifest's id) as
above, or by sending exactly the text of one of them. Anything else is refused before parsing finishes
(``BAD_USER_INPUT``, ``extensions.reason: "QUERY_NOT_IN_SAFELIST"``), over HTTP and WebSocket alike. The
manifest is Apollo's persisted query manifest (``{"format": "apollo-persisted-query-manifest", "version": 1,
"operations": [{"id", "name", "type", "body"}]}``) or a plain ``{"<id or sha256>": "<query>"}`` map.

``off`` answers ``PERSISTED_QUERY_NOT_SUPPORTED`` to a hash, so Apollo clients stop sending them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strawberry.extensions import SchemaExtension

from aicm.config import ConfigError
from aicm.errors import BadUserInput
from aicm.schema.extensions._reject import reject, rejected

__all__ = ["HASH", "Manifest", "Safelist", "load_manifest", "sha256"]

HASH = re.compile(r"[0-9a-fA-F]{64}")


def sha256(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- the safelist manifest


@dataclass(frozen=True)
class Manifest:
    by_id: dict[str, str] = field(default_factory=dict)  # id or sha256 -> query text
    hashes: frozenset[str] = frozenset()  # sha256 of every allowed text

    def __contains__(self, query: str) -> bool:
        return sha256(query) in self.hashes


def load_manifest(path: str | Path) -> Manifest:
    """Read an Apollo persisted query manifest or an ``{id: query}`` map; ConfigError when unusable."""
    key = "graphql.persisted_queries_manifest"
    try:
        raw = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc}"]) from exc
    pairs: list[tuple[str, Any]]
    if isinstance(raw, dict) and isinstance(raw.get("operations"), list):
        pairs = [(op.get("id"), op.get("body")) for op in raw["operations"] if isinstance(op, dict)]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise ConfigError([f"{key}: expected a JSON object, got {type(raw).__name__}"])
    by_id: dict[str, str] = {}
    for i, (op_id, body) in enumerate(pairs):
        if not isinstance(body, str) or not body.strip():
            raise ConfigError([f"{key}: operation {i} has no query text"])
        digest = sha256(body)
        by_id[digest] = body
        if isinstance(op_id, str) and op_id:
            by_id[op_id.lower() if HASH.fullmatch(op_id) else op_id] = body
    return Manifest(by_id, frozenset(sha256(body) for body in by_id.values()))


# --------------------------------------------------------------------------- the safelist, every transport


class Safelist(SchemaExtension):
    """Refuses every operation whose exact text is not in the manifest (HTTP and WebSocket alike)."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.manifest = manifest

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if not rejected(context) and (context.query is None or context.query not in self.manifest):
            message = "Only the operations of the persisted query manifest may run"
            reject(context, BadUserInput(message, reason="QUERY_NOT_IN_SAFELIST"))
        yield
