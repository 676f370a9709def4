from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from aicm.workspaces.git import Git, GitError, RemoteError, scrub
from tests.workspaces.helpers import processes_showing, sh


async def test_user_and_system_config_and_the_servers_environment_do_not_reach_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: everything an operator's shell could carry
    home = tmp_path / "home"
    (home / "git").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n\tname = Leaked From Home\n")
    (home / "git" / "config").write_text("[user]\n\tname = Leaked From XDG\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'user.name'='Leaked From Env'")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))

    # when
    listing = await Git().run(["config", "--list", "--show-origin"], op="config", cwd=tmp_path)

    # then: only our own command-line settings
    assert "Leaked" not in listing.text
    assert {line.split("\t")[0] for line in listing.text.splitlines()} == {"command line:"}
    assert "core.hookspath=/dev/null" in listing.text


async def test_git_itself_refuses_transports_outside_https_ssh_and_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for url in (f"ext::sh -c touch% {marker}", "fd::0", "http://127.0.0.1:9/x.git", "git://127.0.0.1:9/x"):
        with pytest.raises(RemoteError, match=r"not allowed|unsupported"):
            await Git().run(["ls-remote", url], op="ls_remote", cwd=tmp_path, remote=True)
    assert not marker.exists()


async def test_failures_carry_gits_message_without_userinfo_or_named_secrets(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    git = Git(on_operation=lambda op, result, seconds: calls.append((op, result)))
    with pytest.raises(GitError) as error:
        await git.run(
            ["ls-remote", "file:///nonexistent/sekrit-value.git"],
            op="ls_remote",
            cwd=tmp_path,
            secrets=["sekrit"],
        )
    assert "sekrit" not in error.value.message
    assert "does not appear to be a git repository" in error.value.message
    assert calls == [("ls_remote", "error")]
    await git.run(["--version"], op="version")
    assert calls[-1] == ("version", "ok")


def test_scrub_removes_url_userinfo_and_secrets() -> None:
    text = "fatal: unable to access 'https://x-access-token:ghp_abc@github.com/a/b/': token ghp_abc refused"
    assert (
        scrub(text, ["ghp_abc"]) == "fatal: unable to access 'https://***@github.com/a/b/': token *** refused"
    )


async def test_a_hanging_remote_times_out_and_its_processes_are_killed(tmp_path: Path) -> None:
    # given: a port that accepts the TCP connection and then says nothing (the TLS handshake never ends)
    calls: list[tuple[str, str, float]] = []
    git = Git(timeout=1, on_operation=lambda *call: calls.append(call))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/hang.git"

        # when
        with pytest.raises(RemoteError, match="did not finish within 1 s"):
            await git.run(["ls-remote", url], op="ls_remote", cwd=tmp_path, remote=True)

    # then
    assert calls[0][:2] == ("ls_remote", "timeout") and 0.9 < calls[0][2] < 5
    await asyncio.sleep(0.1)
    assert not processes_showing(url)


async def test_output_over_the_limit_fails_or_is_cut_when_asked(tmp_path: Path) -> None:
    # given: a 100 KB blob
    git = Git()
    await sh(git, "init", "--quiet", str(tmp_path / "r"))
    (tmp_path / "r" / "big").write_text("x" * 100_000)
    blob = (await sh(git, "hash-object", "-w", "big", cwd=tmp_path / "r")).strip()
    show = ["cat-file", "blob", blob]

    # then
    with pytest.raises(GitError, match="more than 1000 bytes"):
        await git.run(show, op="cat_file", cwd=tmp_path / "r", max_output_bytes=1000)
    cut = await git.run(show, op="cat_file", cwd=tmp_path / "r", max_output_bytes=1000, truncate_output=True)
    assert cut.truncated and cut.stdout == b"x" * 1000
    whole = await git.run(
        show, op="cat_file", cwd=tmp_path / "r", max_output_bytes=100_000, truncate_output=True
    )
    assert not whole.truncated and len(whole.stdout) == 100_000
