"""Who a commit is by: the task's creator as author, AICode Manager as committer."""

from __future__ import annotations

from dataclasses import dataclass

from aicm.errors import BadUserInput

__all__ = ["DEFAULT_IDENTITY", "Identity"]


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    def __post_init__(self) -> None:
        for value in (self.name, self.email):
            if not value.strip() or any(char in value for char in "<>\n\r\x00"):
                raise BadUserInput("A commit author needs a name and an email without <, > or newlines")

    def author_env(self) -> dict[str, str]:
        return {"GIT_AUTHOR_NAME": self.name, "GIT_AUTHOR_EMAIL": self.email}

    def committer_env(self) -> dict[str, str]:
        return {"GIT_COMMITTER_NAME": self.name, "GIT_COMMITTER_EMAIL": self.email}


DEFAULT_IDENTITY = Identity("AICode Manager", "aicm@localhost")
