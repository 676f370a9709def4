"""Agent credentials (CONTRACT §9): the model API key an agent run uses, per user and per project.

A key is stored encrypted with the one ``SecretBox`` of the process (``Workspaces.box``, under
``security.encryption_key``), bound to its row (``user:7:agent:anthropic``), and leaves the server only as
the run's environment variable ``ANTHROPIC_API_KEY`` (never an argument: ``ps`` shows arguments). A run gets
its task creator's key, else its project's, else whatever ``runner.env`` gives (``run_key``). Nothing reads a
key back: GraphQL only says whether one is set::

    sealed = seal(box, "user", user.id, provider="anthropic", api_key=key)   # store on the user
    key = await run_key(box, task)                                          # at run start: env or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aicm import models
from aicm.crypto import DecryptionError, SecretBox
from aicm.errors import BadUserInput

__all__ = ["ENV_NAMES", "PROVIDERS", "RunKey", "UndecryptableCredential", "check_provider", "run_key", "seal"]

# The providers an agent credential may be for, and the variable that carries the key to the agent.
ENV_NAMES = {"anthropic": "ANTHROPIC_API_KEY"}
PROVIDERS = tuple(ENV_NAMES)
MAX_KEY_BYTES = 4096

Owner = Literal["user", "project"]


class UndecryptableCredential(ValueError):
    """A stored key no longer decrypts (``security.encryption_key`` changed): the run must not go on."""


@dataclass(frozen=True, repr=False)
class RunKey:
    """The key a run gets and where it came from (``user`` or ``project``); ``repr`` never shows it."""

    env_name: str
    value: str
    source: Owner

    def __repr__(self) -> str:
        return f"RunKey({self.env_name} from the {self.source}, hidden)"


def check_provider(provider: str) -> str:
    """The provider name, or ``BadUserInput`` (field ``provider``) for one this server does not know."""
    if provider not in ENV_NAMES:
        raise BadUserInput(
            f"Unknown agent credential provider; expected one of: {', '.join(PROVIDERS)}", field="provider"
        )
    return provider


def _check_key(api_key: str) -> str:
    key = api_key.strip()
    if not key:
        raise BadUserInput("The API key is empty", field="apiKey")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BadUserInput("The API key is too long", field="apiKey")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise BadUserInput("The API key contains characters it cannot contain", field="apiKey")
    return key


def _associated_data(owner: Owner, owner_id: int, provider: str) -> str:
    return f"{owner}:{owner_id}:agent:{provider}"


def seal(box: SecretBox, owner: Owner, owner_id: int, *, provider: str, api_key: str) -> str:
    """The encrypted form of ``api_key`` to store on that user or project (input checked first)."""
    provider = check_provider(provider)
    return box.encrypt(_check_key(api_key), associated_data=_associated_data(owner, owner_id, provider))


def _open(box: SecretBox, owner: Owner, owner_id: int, sealed: str, provider: str) -> str:
    try:
        return box.decrypt(sealed, associated_data=_associated_data(owner, owner_id, provider))
    except DecryptionError:
        whose = "task creator's" if owner == "user" else "project's"
        raise UndecryptableCredential(
            f"the {whose} agent credential cannot be decrypted (was security.encryption_key changed?); "
            "set it again"
        ) from None


async def run_key(box: SecretBox, task: models.Task, provider: str = "anthropic") -> RunKey | None:
    """The key for ``task``'s run: its creator's, else its project's (``task.project`` loaded); None when
    neither is set (``runner.env`` then decides). Raises ``UndecryptableCredential``."""
    env_name = ENV_NAMES[provider]
    creator_id = task.created_by_id  # type: ignore[attr-defined]
    if creator_id is not None:
        sealed = await models.User.filter(id=creator_id).values_list("agent_credential_secret", flat=True)
        if sealed and sealed[0]:
            return RunKey(env_name, _open(box, "user", creator_id, sealed[0], provider), "user")
    project: models.Project = task.project
    if project.agent_credential_secret:
        value = _open(box, "project", project.id, project.agent_credential_secret, provider)
        return RunKey(env_name, value, "project")
    return None
