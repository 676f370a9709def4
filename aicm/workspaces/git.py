"""Run the ``git`` binary in a controlled environment, with bounded time and output.

Every command starts from an empty environment: no system or global git config (so an operator's
``~/.gitconfig`` or a planted ``$XDG_CONFIG_HOME/git/attributes`` cannot change what we do), no terminal
prompts, the C locale (git's messages stay parseable), and only the ``https``, ``ssh`` and ``file``
transports (``ext::``, ``fd::``, ``git://`` and plain ``http`` are refused by git itself). Hooks and fsmonitor
are off, so nothing in a repository runs code on our behalf. Each command runs in its own process group,
which is killed as a whole on timeout; output beyond a limit either fails the command or, when asked, is cut.

Errors carry git's message with credentials stripped (URL userinfo and any secret the caller names)::

    git = Git(on_operation=lambda op, result, seconds: ...)
    result = await git.run(["--git-dir", str(repo), "rev-parse", "HEAD"], op="rev_parse")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aicm.errors import AppError

__all__ = ["Git", "GitError", "GitResult", "OperationHook", "RemoteError", "scrub", "summarize"]

OperationHook = Callable[[str, str, float], None]
"""``on_operation(op, result, seconds)`` with ``result`` one of ``ok``, ``error``, ``timeout``."""

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
STDERR_LIMIT = 64 * 1024
MESSAGE_LIMIT = 1000
ALLOWED_PROTOCOLS = "https:ssh:file"
DEFAULT_SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"

# Options given to every command; they win over any repository config.
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.attributesFile=/dev/null",
    "core.excludesFile=/dev/null",
    "core.quotePath=false",
    "credential.helper=",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "gc.autoDetach=false",
    "advice.detachedHead=false",
    "init.defaultBranch=main",
    "submodule.recurse=false",
)

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")


class GitError(AppError):
    """A git command failed; ``message`` is git's own explanation with credentials stripped."""

    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, op: str, returncode: int | None = None, **extensions: object) -> None:
        super().__init__(message, **extensions)
        self.op = op
        self.returncode = returncode


class RemoteError(GitError):
    """Talking to the project's remote failed (unreachable, refused credentials, no such repository)."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, *, op: str, returncode: int | None = None) -> None:
        super().__init__(message, op=op, returncode=returncode, field="repositoryUrl")
        self.field = "repositoryUrl"


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without URL userinfo (``https://user:token@`` becomes ``https://***@``) or ``secrets``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", text)


def summarize(stderr: str, secrets: Sequence[str]) -> str:
    lines = [line.strip() for line in scrub(stderr, secrets).splitlines()]
    useful = [line for line in lines if line and not line.startswith("hint:")]
    message = "; ".join(useful) or "no message"
    return message if len(message) <= MESSAGE_LIMIT else "…" + message[-MESSAGE_LIMIT:]


async def _drain(stream: asyncio.StreamReader, limit: int, stop_at_limit: bool) -> tuple[bytes, bool]:
    """Read ``stream`` to its end keeping at most ``limit`` bytes; True when more came (or was on its way)."""
    chunks: list[bytes] = []
    kept = 0
    over = False
    while chunk := await stream.read(65536):
        keep = chunk[: max(0, limit - kept)]
        chunks.append(keep)
        kept += len(keep)
        if len(keep) < len(chunk):
            over = True
            if stop_at_limit:
                break
    return b"".join(chunks), over


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Git:
    """Runs git commands; one instance is shared by everything that touches repositories.

    ``home`` is what git sees as ``$HOME`` and ``$XDG_CONFIG_HOME`` (nothing is read from it; by default a
    path that does not exist). ``extra_env`` adds operator settings such as ``GIT_SSL_CAINFO`` or
    ``HTTPS_PROXY``. ``on_operation`` is called once per command (metrics).
    """

    def __init__(
        self,
        *,
        home: str | Path = "/nonexistent",
        search_path: str = DEFAULT_SEARCH_PATH,
        timeout: float = DEFAULT_TIMEOUT,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
        extra_env: Mapping[str, str] | None = None,
        on_operation: OperationHook | None = None,
        binary: str = "git",
    ) -> None:
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self.on_operation = on_operation
        self.binary = binary
        self._env = {
            "PATH": search_path,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
            "LC_ALL": "C",
            "LANG": "C",
            **(extra_env or {}),
        }

    async def run(
        self,
        args: Sequence[str],
        *,
        op: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        ok_codes: Sequence[int] = (0,),
        secrets: Sequence[str] = (),
        remote: bool = False,
        time_limit: float | None = None,
        max_output_bytes: int | None = None,
        truncate_output: bool = False,
    ) -> GitResult:
        """Run ``git <args>``; a return code outside ``ok_codes`` raises ``GitError`` (``RemoteError`` when
        ``remote``). With ``truncate_output`` the output is cut at ``max_output_bytes`` (git is stopped there
        and the result says ``truncated``) instead of failing the command."""
        argv = [self.binary, *(item for option in SAFE_CONFIG for item in ("-c", option)), *args]
        started = time.monotonic()
        outcome = "error"
        try:
            result = await self._execute(
                argv,
                op=op,
                cwd=cwd,
                env={**self._env, **(env or {})},
                remote=remote,
                time_limit=time_limit or self.timeout,
                limit=max_output_bytes or self.max_output_bytes,
                truncate_output=truncate_output,
            )
            failed = result.returncode not in ok_codes and not result.truncated
            if failed:
                error = RemoteError if remote else GitError
                raise error(
                    f"git {op} failed: {summarize(result.stderr, secrets)}",
                    op=op,
                    returncode=result.returncode,
                )
            outcome = "ok"
            return result
        except TimeoutError:
            outcome = "timeout"
            raise (RemoteError if remote else GitError)(
                f"git {op} did not finish within {time_limit or self.timeout:g} s", op=op
            ) from None
        finally:
            if self.on_operation is not None:
                self.on_operation(op, outcome, time.monotonic() - started)

    async def _execute(
        self,
        argv: list[str],
        *,
        op: str,
        cwd: Path | None,
        env: dict[str, str],
        remote: bool,
        time_limit: float,
        limit: int,
        truncate_output: bool,
    ) -> GitResult:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}", op=op) from None
        assert process.stdout is not None and process.stderr is not None
        err_task = asyncio.ensure_future(_drain(process.stderr, STDERR_LIMIT, stop_at_limit=False))
        try:
            async with asyncio.timeout(time_limit):
                stdout, over = await _drain(process.stdout, limit, stop_at_limit=truncate_output)
                if over and truncate_output:
                    _kill_group(process)
                stderr, _ = await err_task
                returncode = await process.wait()
        finally:
            if process.returncode is None:
                _kill_group(process)
                await process.wait()
            err_task.cancel()
        if over and not truncate_output:
            raise (RemoteError if remote else GitError)(
                f"git {op} produced more than {limit} bytes of output", op=op
            )
        return GitResult(returncode, stdout, stderr.decode("utf-8", "replace"), truncated=over)
