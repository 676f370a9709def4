"""A project's repository credential, handed to git only for the commands that talk to the remote.

The secret never reaches an argument list (``ps``), an environment variable or a message:

- HTTPS token: git asks ``GIT_ASKPASS`` for the user name and password. The helper is a small script
  (mode 0700) in a private temporary directory; it prints the user name, or the token read from a file of mode
  0600 next to it. Only the script's path is in git's environment.
- SSH private key: written to a file of mode 0600 in the same kind of directory and named in
  ``GIT_SSH_COMMAND`` (``ssh -i <file> -o IdentitiesOnly=yes …``).

The directory is removed as soon as the command ends::

    with git_auth_env(credential) as env:
        await git.run([...,"fetch", "origin"], op="fetch", env=env, secrets=credential.secrets(), remote=True)
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aicm.errors import BadUserInput

__all__ = ["Credential", "git_auth_env"]

DEFAULT_USERNAME = "x-access-token"  # GitHub's name for token auth; GitLab and Gitea accept any user name
MAX_SECRET_BYTES = 16 * 1024


@dataclass(frozen=True, repr=False)
class Credential:
    """Exactly one of ``token`` (HTTPS) or ``ssh_private_key`` (SSH)."""

    token: str | None = None
    ssh_private_key: str | None = None
    username: str = DEFAULT_USERNAME

    def __post_init__(self) -> None:
        if (self.token is None) == (self.ssh_private_key is None):
            raise BadUserInput("Give either a token or an SSH private key", field="token")
        if self.token is not None:
            _check_text(self.token, "token", single_line=True)
        if self.ssh_private_key is not None:
            _check_text(self.ssh_private_key, "sshPrivateKey", single_line=False)
            key = self.ssh_private_key.strip()
            if not (key.startswith("-----BEGIN ") and "PRIVATE KEY-----" in key and key.endswith("-----")):
                raise BadUserInput("The SSH private key is not in PEM/OpenSSH form", field="sshPrivateKey")
        if not self.username or any(not (c.isalnum() or c in "._-@") for c in self.username):
            raise BadUserInput("Invalid user name for the token", field="username")

    def __repr__(self) -> str:
        return f"Credential({'token' if self.token is not None else 'ssh key'}, hidden)"

    def secrets(self) -> tuple[str, ...]:
        """What error messages must never contain."""
        if self.token is not None:
            return (self.token,)
        assert self.ssh_private_key is not None
        return tuple(line for line in self.ssh_private_key.splitlines() if len(line) >= 16)


def _check_text(value: str, field: str, *, single_line: bool) -> None:
    if not value.strip():
        raise BadUserInput("The credential is empty", field=field)
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise BadUserInput("The credential is too long", field=field)
    if "\x00" in value or (single_line and ("\n" in value or "\r" in value)):
        raise BadUserInput("The credential contains characters it cannot contain", field=field)


def _write_private(path: Path, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as file:
        file.write(content)


@contextmanager
def git_auth_env(
    credential: Credential | None, *, known_hosts: Path | None = None, temp_root: Path | None = None
) -> Iterator[dict[str, str]]:
    """Environment variables that let git authenticate with ``credential`` (empty for ``None``).

    ``known_hosts`` keeps SSH host keys between commands (first use accepts a new host, a changed key then
    fails); without it each command starts from an empty list in the temporary directory.
    """
    if credential is None:
        yield {}
        return
    if temp_root is not None:
        temp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="aicm-git-auth-", dir=temp_root))  # mode 0700
    try:
        if credential.token is not None:
            yield _askpass_env(directory, credential.token, credential.username)
        else:
            assert credential.ssh_private_key is not None
            yield _ssh_env(directory, credential.ssh_private_key, known_hosts or directory / "known_hosts")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _askpass_env(directory: Path, token: str, username: str) -> dict[str, str]:
    secret_file = directory / "token"
    _write_private(secret_file, token + "\n", 0o600)
    script = directory / "askpass"
    _write_private(
        script,
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  [Uu]sername*) printf '%s\\n' {shlex.quote(username)} ;;\n"
        f"  *) cat {shlex.quote(str(secret_file))} ;;\n"
        "esac\n",
        0o700,
    )
    return {"GIT_ASKPASS": str(script)}


def _ssh_env(directory: Path, key: str, known_hosts: Path) -> dict[str, str]:
    key_file = directory / "id"
    _write_private(key_file, key.strip() + "\n", 0o600)
    command = [
        "ssh",
        "-i",
        str(key_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
    ]
    return {"GIT_SSH_COMMAND": shlex.join(command)}
