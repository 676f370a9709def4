"""Persisted queries (``graphql.persisted_queries``): Apollo's automatic persisted queries, or a safelist.

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

import abc
import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from strawberry.extensions import SchemaExtension

from aicm.config import ConfigError
from aicm.errors import BadUserInput
from aicm.schema.extensions._reject import reject, rejected

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import Settings

__all__ = [
    "Manifest",
    "MemoryQueryStore",
    "PersistedQueries",
    "PersistedQueryError",
    "QueryStore",
    "RedisQueryStore",
    "Safelist",
    "load_manifest",
    "sha256",
]

log = logging.getLogger("aicm.graphql")
_HASH = re.compile(r"[0-9a-fA-F]{64}")
NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
NOT_SUPPORTED = "PERSISTED_QUERY_NOT_SUPPORTED"


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
            by_id[op_id.lower() if _HASH.fullmatch(op_id) else op_id] = body
    return Manifest(by_id, frozenset(sha256(body) for body in by_id.values()))


# --------------------------------------------------------------------------- the APQ store


class QueryStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, digest: str) -> str | None: ...

    @abc.abstractmethod
    async def put(self, digest: str, query: str) -> None: ...


class MemoryQueryStore(QueryStore):
    def __init__(self, maxsize: int = 1000) -> None:
        self.maxsize = maxsize
        self._queries: OrderedDict[str, str] = OrderedDict()

    async def get(self, digest: str) -> str | None:
        query = self._queries.get(digest)
        if query is not None:
            self._queries.move_to_end(digest)
        return query

    async def put(self, digest: str, query: str) -> None:
        self._queries[digest] = query
        self._queries.move_to_end(digest)
        while len(self._queries) > self.maxsize:
            self._queries.popitem(last=False)


class RedisQueryStore(QueryStore):
    """``{prefix}apq:{sha256}`` with a TTL. Unreachable Redis reads as a miss (the client sends the text)."""

    def __init__(self, redis: Redis, *, ttl: float, prefix: str = "aicm:") -> None:
        self._redis = redis
        self._ttl = max(1, int(ttl))
        self._prefix = prefix

    async def get(self, digest: str) -> str | None:
        try:
            value = await self._redis.get(f"{self._prefix}apq:{digest}")
        except (RedisError, OSError):
            log.warning("persisted query store unreachable", extra={"event": "dependency_unavailable"})
            return None
        return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value

    async def put(self, digest: str, query: str) -> None:
        try:
            await self._redis.set(
                f"{self._prefix}apq:{digest}", query.encode("utf-8", "surrogatepass"), ex=self._ttl
            )
        except (RedisError, OSError):
            log.warning("persisted query store unreachable", extra={"event": "dependency_unavailable"})


# --------------------------------------------------------------------------- the HTTP side


class PersistedQueryError(Exception):
    """Answered as a GraphQL error (HTTP 200, as Apollo clients expect) with ``extensions.code``."""

    def __init__(self, message: str, code: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message, self.code, self.extensions = message, code, extensions

    def as_result(self) -> dict[str, Any]:
        return {"errors": [{"message": self.message, "extensions": {"code": self.code, **self.extensions}}]}


class PersistedQueries:
    """Turns a request's ``(query, extensions)`` into the query to run, for one app.

    >>> persisted = PersistedQueries.from_settings(settings)  # doctest: +SKIP
    >>> query, to_store = await persisted.resolve(redis, None, {"persistedQuery": ...})  # doctest: +SKIP
    """

    def __init__(
        self, mode: str, *, manifest: Manifest | None = None, cache_size: int = 1000, ttl: float = 86_400.0
    ) -> None:
        self.mode = mode
        self.manifest = manifest or Manifest()
        self.memory = MemoryQueryStore(cache_size)
        self.ttl = ttl
        self._redis_store: tuple[Any, RedisQueryStore] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PersistedQueries:
        graphql = settings.graphql
        manifest = (
            load_manifest(graphql.persisted_queries_manifest)
            if graphql.persisted_queries == "safelist"
            else None
        )
        return cls(
            graphql.persisted_queries,
            manifest=manifest,
            cache_size=graphql.persisted_queries_cache_size,
            ttl=graphql.persisted_queries_ttl,
        )

    def store(self, redis: Redis | None) -> QueryStore:
        if redis is None:
            return self.memory
        if self._redis_store is None or self._redis_store[0] is not redis:
            self._redis_store = (redis, RedisQueryStore(redis, ttl=self.ttl))
        return self._redis_store[1]

    async def resolve(
        self, redis: Redis | None, query: str | None, extensions: dict[str, Any] | None
    ) -> tuple[str | None, str | None]:
        """``(query to run, hash to store once it ran)``; PersistedQueryError when it cannot run."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            return query, None
        if self.mode == "off":
            raise PersistedQueryError("PersistedQueryNotSupported", NOT_SUPPORTED)
        digest = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(persisted, dict) or persisted.get("version") != 1 or not isinstance(digest, str):
            raise PersistedQueryError(
                "extensions.persistedQuery needs version 1 and a sha256Hash",
                "BAD_USER_INPUT",
                field="extensions",
            )
        if self.mode == "safelist":
            known = self.manifest.by_id.get(digest.lower() if _HASH.fullmatch(digest) else digest)
            if query is None:
                if known is None:
                    raise PersistedQueryError("PersistedQueryNotFound", NOT_FOUND)
                return known, None
            return query, None  # the Safelist extension decides on the text itself
        if not _HASH.fullmatch(digest):
            raise PersistedQueryError(
                "sha256Hash is not a SHA-256 hex digest", "BAD_USER_INPUT", field="extensions"
            )
        digest = digest.lower()
        if query is None:
            stored = await self.store(redis).get(digest)
            if stored is None:
                raise PersistedQueryError("PersistedQueryNotFound", NOT_FOUND)
            return stored, None
        if sha256(query) != digest:
            raise PersistedQueryError(
                "provided sha does not match query", "BAD_USER_INPUT", field="extensions"
            )
        return query, digest

    async def remember(self, redis: Redis | None, digest: str, query: str) -> None:
        await self.store(redis).put(digest, query)


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
