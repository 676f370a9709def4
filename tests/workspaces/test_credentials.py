from __future__ import annotations

import asyncio
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from aicm.errors import BadUserInput
from aicm.workspaces.credentials import Credential, git_auth_env
from aicm.workspaces.git import RemoteError
from aicm.workspaces.repositories import RepositoryStore
from tests.workspaces.helpers import processes_showing

TOKEN = "glpat-credential-test-0123456789"


def _ssh_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return pem.decode()


def test_a_token_reaches_git_through_an_askpass_script_reading_a_private_file(tmp_path: Path) -> None:
    # given
    with git_auth_env(Credential(token=TOKEN, username="oauth2"), temp_root=tmp_path / "auth") as env:
        script = Path(env["GIT_ASKPASS"])

        # then: nothing secret in the environment; the helper answers like a person would
        assert TOKEN not in repr(env)
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700
        assert [stat.S_IMODE(p.stat().st_mode) for p in script.parent.iterdir() if p != script] == [0o600]
        ask = [str(script), "Username for 'https://example.com': "]
        assert subprocess.run(ask, capture_output=True, text=True, check=True).stdout == "oauth2\n"
        ask[1] = "Password for 'https://oauth2@example.com': "
        assert subprocess.run(ask, capture_output=True, text=True, check=True).stdout == TOKEN + "\n"

    # then: gone afterwards
    assert not script.parent.exists()


def test_an_ssh_key_is_a_0600_file_named_in_git_ssh_command_and_removed_after(tmp_path: Path) -> None:
    key = _ssh_key()
    known_hosts = tmp_path / "known_hosts"
    with git_auth_env(Credential(ssh_private_key=key), known_hosts=known_hosts) as env:
        command = shlex.split(env["GIT_SSH_COMMAND"])
        key_file = Path(command[command.index("-i") + 1])
        assert key_file.read_text() == key.strip() + "\n"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "IdentitiesOnly=yes" in command and f"UserKnownHostsFile={known_hosts}" in command
        assert "StrictHostKeyChecking=accept-new" in command and "BatchMode=yes" in command
        assert key.splitlines()[1] not in env["GIT_SSH_COMMAND"]
    assert not key_file.exists() and not key_file.parent.exists()


async def test_an_ssh_remote_that_is_down_is_an_error_without_the_key(tmp_path: Path, git) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    credential = Credential(ssh_private_key=_ssh_key())
    store = RepositoryStore(tmp_path / "ws", git, auth_dir=tmp_path / "auth")
    with pytest.raises(RemoteError) as error:
        await store.ensure(1, f"ssh://git@127.0.0.1:{port}/repo.git", credential)
    assert "Connection refused" in error.value.message
    assert not any(line in error.value.message for line in credential.secrets())
    assert list((tmp_path / "auth").iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({}, "token"),
        ({"token": "a", "ssh_private_key": "b"}, "token"),
        ({"token": "  "}, "token"),
        ({"token": "two\nlines"}, "token"),
        ({"ssh_private_key": "not a key"}, "sshPrivateKey"),
        ({"token": "t", "username": "bad user"}, "username"),
    ],
)
def test_malformed_credentials_are_bad_user_input(arguments: dict[str, str], field: str) -> None:
    with pytest.raises(BadUserInput) as error:
        Credential(**arguments)
    assert error.value.field == field


def test_a_credential_never_prints_its_secret() -> None:
    credential = Credential(token=TOKEN)
    assert TOKEN not in repr(credential) and TOKEN not in str(credential)


async def test_the_process_watcher_used_by_the_https_test_does_see_a_leak() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(5)", TOKEN)
    try:
        assert processes_showing(TOKEN)
    finally:
        process.kill()
        await process.wait()
