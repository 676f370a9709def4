"""The embedded default broker: subscribers in this process only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aicm.subscriptions.broker import Broker, Encoded, encode

__all__ = ["InProcessBroker"]


class InProcessBroker(Broker):
    """The embedded default: subscribers in this process only, delivery during ``publish``.

    Payloads go through a JSON round trip so subscribers see exactly what the Redis broker would give them;
    an ``Encoded`` payload is that already (its JSON decodes to it), so it is handed over as it is.
    Nothing is lost silently: a subscriber too slow to keep up ends with ``FellBehind``.
    """

    mode = "embedded"

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        self._check_running()
        if isinstance(payload, Encoded):
            if channel in self._subs:
                self._fan_out(channel, payload, len(payload.json))
            return
        data = encode(payload)
        if channel in self._subs:
            self._fan_out(channel, json.loads(data), len(data))
