"""A pseudo-terminal around one command: what a person would type and see."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import termios
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]")


def visible(raw: str) -> str:
    """The text without colours and cursor movement."""
    return ANSI.sub("", raw).replace("\r", "")


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], *, columns: int = 120, rows: int = 40) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal (getpass, Ctrl-C)
            os.execve(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.raw = ""
        self._status: int | None = None

    @property
    def screen(self) -> str:
        return visible(self.raw)

    def expect(self, text: str, timeout: float = 30.0) -> None:
        """Read until ``text`` is on screen."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen within {timeout} s; screen:\n{self.screen}"
            if not self._read(min(left, 0.5)):
                assert self._status is None, f"{text!r} not seen before exit; screen:\n{self.screen}"

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code, once the program ended (reading what it still prints)."""
        deadline = time.monotonic() + timeout
        while self._status is None:
            assert time.monotonic() < deadline, f"still running; screen:\n{self.screen}"
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
        while self._read(0.1):
            pass
        os.close(self.fd)
        return self._status

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.raw += chunk.decode("utf-8", "replace")
        return bool(chunk)
