"""What opening a WebSocket connection or a subscription checks, remembered for at most a second.

Opening costs SQL: the viewer (user, system roles) and the session at ``connection_init``, the project and
the membership when a stream starts. Clients open many at once with one token (a page with several live
views, reconnect storms), so the same answers are read again and again. Each answer is kept here with a
*watch*: a broker subscription to the channels on which anything that could change the answer is published
(the user's, the session's, the role catalogue's, the project's; the channels a stream re-checks on). The
watch is registered before the answer is read and ends at the first event or ``Missed`` marker on any of
them, which drops the answer. So an answer is used only while nothing that could have changed it was
published since before it was read, and never longer than ``TTL``.

Why that keeps CONTRACT §7 (revocation ends or refuses a stream within 1 s): a stream registers its own
subscription first and asks here second. A revocation published after that registration reaches the stream
itself (it re-checks and ends); one published before it was dispatched, in the same synchronous fan-out, to
the watch as well, which dropped the answer before the stream asked. Keys hold the user and the session, so
an answer never serves another user or session; only allowed answers are kept (a refusal is read anew).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aicm.auth.viewer import Viewer, load_viewer
from aicm.resolvers.auth import AuthServices, session_check
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.subscription import Event, Missed, Subscription

__all__ = ["MAX_ENTRIES", "TTL", "OpenChecks"]

TTL = 1.0  # seconds an answer is kept at most (CONTRACT §7's revocation bound)
MAX_ENTRIES = 1024  # answers kept at once; the oldest is dropped first

T = TypeVar("T")


class _Watch(Subscription):
    """A subscription nobody reads: it ends at the first item on its channels (whatever it watches may have
    changed), so it never queues anything. Internal: the subscriber gauge counts the streams, not these."""

    internal = True
    __slots__ = ()

    def _push(self, item: Event | Missed) -> None:
        self._end()

    @property
    def intact(self) -> bool:
        """Open, confirmed by the broker, and nothing was published on its channels since it was opened."""
        return not self.closed and not self._late and not self._missed and self._unacked == 0

    def end(self) -> None:
        self._end()


@dataclass(slots=True)
class _Entry:
    value: Any
    watch: _Watch
    expires: float
    timer: asyncio.TimerHandle


class OpenChecks:
    """Answers of the checks made when connections and streams open, each dropped at its first possible
    change (see the module docstring)."""

    def __init__(self, broker: Broker, *, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.broker, self.ttl, self.max_entries = broker, ttl, max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        # Reads under way; each ends with (answer,) when the answer was kept, None when not.
        self._loading: dict[Hashable, asyncio.Future[tuple[Any] | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def remember(self, key: Hashable, watched: Sequence[str], load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s answer, or the one kept under ``key`` while none of ``watched`` saw an event.

        An exception from ``load`` is not kept; nor is an answer read while an event arrived on ``watched``
        (it is returned: the caller's own subscription, registered before, sees that event too).
        """
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > now and entry.watch.intact and self.broker.connected:
                return entry.value  # type: ignore[no-any-return]
            self._drop(key)
        if not self.broker.connected:
            return await load()
        loading = self._loading.get(key)
        if loading is not None:  # opens arriving together share one read (a burst, or a kept answer's end)
            kept = await asyncio.shield(loading)
            if kept is not None:
                return kept[0]  # type: ignore[no-any-return]
            return await load()  # that read was not kept (it failed, or an event came): read anew
        loading = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            value = await self._load(key, watched, load, now)
        except BaseException:
            loading.set_result(None)
            raise
        finally:
            del self._loading[key]
        if not loading.done():
            loading.set_result((value,) if key in self._entries else None)
        return value

    async def _load(
        self, key: Hashable, watched: Sequence[str], load: Callable[[], Awaitable[T]], now: float
    ) -> T:
        watch = _Watch(self.broker, watched, 1, 1)
        await watch.__aenter__()  # registered (with Redis: confirmed) before anything is read
        try:
            value = await load()
        except BaseException:
            watch.end()
            raise
        if not watch.intact:
            watch.end()
            return value
        timer = asyncio.get_running_loop().call_later(self.ttl, self._expire, key)
        self._entries[key] = _Entry(value, watch, now + self.ttl, timer)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return value

    async def viewer(self, auth: AuthServices, user_id: int, session_id: str) -> Viewer:
        """The account, system roles and live session of a verified token (``Unauthenticated`` otherwise),
        as ``session_check`` and ``load_viewer`` decide them; a new Viewer (with its own copy of the user row)
        for each caller, since connections may change theirs."""

        async def load() -> Viewer:
            await session_check(auth, session_id, user_id)
            return await load_viewer(user_id, session_id, None, None)

        watched = (channels.user(user_id), channels.session(session_id), channels.roles())
        kept = await self.remember(("viewer", user_id, session_id), watched, load)
        return Viewer(copy.copy(kept.user), session_id, kept.permissions, kept.system_role_ids)

    def _expire(self, key: Hashable) -> None:
        self._drop(key)  # a replaced or dropped entry's timer was cancelled: this one is the key's own

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.timer.cancel()
            entry.watch.end()

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
