"""Persisted queries over HTTP: turning ``extensions.persistedQuery`` into the query to run.

``apq`` speaks Apollo's protocol. A request may carry ``extensions.persistedQuery = {"version": 1,
"sha256Hash": "<hex>"}`` instead of the query text (also over GET, so a CDN can cache it). A known hash runs
its stored query; an unknown one answers ``PERSISTED_QUERY_NOT_FOUND`` and the client retries with the text
and the hash, which is checked, run and stored (in Redis for ``persisted_queries_ttl`` when configured, else
in an in-process LRU of ``persisted_queries_cache_size`` entries).

``safelist`` resolves a hash (or the manifest's id) to the manifest's text; the ``Safelist`` extension
(``aicm.schema.extensions.persisted_queries``) refuses any other text on every transport.

``off`` answers ``PERSISTED_QUERY_NOT_SUPPORTED`` to a hash, so Apollo clients stop sending them.
"""

from __future__ import annotations

import abc
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from aicm.errors import BadUserInput, PersistedQueryNotFound, PersistedQueryNotSupported
from aicm.schema.extensions.persisted_queries import HASH, Manifest, load_manifest, sha256

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import Settings

__all__ = ["MemoryQueryStore", "PersistedQueries", "QueryStore", "RedisQueryStore"]

log = logging.getLogger("aicm.graphql")


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
        """``(query to run, hash to store once it ran)``; an AppError when it cannot run."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            return query, None
        if self.mode == "off":
            raise PersistedQueryNotSupported()
        digest = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(persisted, dict) or persisted.get("version") != 1 or not isinstance(digest, str):
            raise BadUserInput(
                "extensions.persistedQuery needs version 1 and a sha256Hash", field="extensions"
            )
        if self.mode == "safelist":
            known = self.manifest.by_id.get(digest.lower() if HASH.fullmatch(digest) else digest)
            if query is None:
                if known is None:
                    raise PersistedQueryNotFound()
                return known, None
            return query, None  # the Safelist extension decides on the text itself
        if not HASH.fullmatch(digest):
            raise BadUserInput("sha256Hash is not a SHA-256 hex digest", field="extensions")
        digest = digest.lower()
        if query is None:
            stored = await self.store(redis).get(digest)
            if stored is None:
                raise PersistedQueryNotFound()
            return stored, None
        if sha256(query) != digest:
            raise BadUserInput("provided sha does not match query", field="extensions")
        return query, digest

    async def remember(self, redis: Redis | None, digest: str, query: str) -> None:
        await self.store(redis).put(digest, query)
