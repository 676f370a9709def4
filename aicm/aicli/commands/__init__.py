"""The ``aicli`` commands, one module per group; each module's ``register`` adds its subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aicm.aicli.api import Api
from aicm.aicli.render import Output
from aicm.aicli.store import CredentialStore


@dataclass
class Context:
    store: CredentialStore
    api: Api
    out: Output


Handler = Callable[[Context, argparse.Namespace], Awaitable[int]]
