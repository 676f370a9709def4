"""argv, environment and workspace of an agent run (CONTRACT §5)."""

from __future__ import annotations

import os

import pytest

from aicm.config import DEFAULT_RUNNER_COMMAND
from aicm.runner.command import AgentFlags, build_argv, scrubbed_env

NASTY_PROMPT = "$(touch /tmp/x); rm -rf ~ && echo \"q\" 'x' `id` | ; > {prompt} {}"


# --------------------------------------------------------------------------- build_argv


def test_prompt_replaces_the_placeholder_as_one_element() -> None:
    argv = build_argv(DEFAULT_RUNNER_COMMAND, NASTY_PROMPT)

    assert argv == ["claude", "-p", NASTY_PROMPT, "--output-format", "stream-json", "--verbose"]


def test_every_placeholder_occurrence_is_replaced_literally_in_one_pass() -> None:
    template = ["agent", "--prompt={prompt}", "{prompt}|{prompt}", "{0} {prompt!r}"]

    argv = build_argv(template, "a {prompt} {0} {x.y}")

    assert argv == [
        "agent",
        "--prompt=a {prompt} {0} {x.y}",
        "a {prompt} {0} {x.y}|a {prompt} {0} {x.y}",
        "{0} {prompt!r}",
    ]
    assert template[1] == "--prompt={prompt}"  # the template is not modified


def test_resume_appends_the_session_id() -> None:
    argv = build_argv(["claude", "-p", "{prompt}"], "go on", resume_session_id="3f1c2a7e-9b4d-4e51")

    assert argv == ["claude", "-p", "go on", "--resume", "3f1c2a7e-9b4d-4e51"]


@pytest.mark.parametrize("session_id", ["", "--dangerously-skip-permissions", "a b", "x;y", "é", "a" * 201])
def test_resume_refuses_an_id_that_is_not_a_plain_token(session_id: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        build_argv(["claude", "{prompt}"], "p", resume_session_id=session_id)


def test_prompt_starting_with_a_dash_cannot_become_an_option() -> None:
    argv = build_argv(["claude", "-p", "{prompt}", "--opt={prompt}"], "--dangerously-skip-permissions")

    assert argv == ["claude", "-p", " --dangerously-skip-permissions", "--opt=--dangerously-skip-permissions"]


def test_nul_in_prompt_and_empty_template_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        build_argv(["claude", "{prompt}"], "a\x00b")
    with pytest.raises(ValueError, match="non-empty"):
        build_argv([], "p")
    with pytest.raises(ValueError, match="non-empty"):
        build_argv(["", "{prompt}"], "p")


# --------------------------------------------------------------------------- scrubbed_env


def test_env_keeps_the_allow_list_drops_secrets_and_adds_runner_env() -> None:
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/aicm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_CTYPE": "UTF-8",
        "TERM": "xterm",
        "TZ": "UTC",
        "JWT_SECRET": "s3cret",
        "DATABASE_URL": "postgres://u:p@db/aicm",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "ANTHROPIC_API_KEY": "server-key",
        "PYTHONPATH": "/evil",
        "LD_PRELOAD": "/evil.so",
        "LC": "not a locale variable",
        "path": "lowercase is another variable",
    }

    env = scrubbed_env(environ, {"ANTHROPIC_API_KEY": "runner-key", "TZ": "Europe/Paris", "EXTRA": "1"})

    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/aicm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_CTYPE": "UTF-8",
        "TERM": "xterm",
        "TZ": "Europe/Paris",
        "ANTHROPIC_API_KEY": "runner-key",
        "EXTRA": "1",
    }


def test_env_of_the_real_process_holds_no_secret() -> None:
    env = scrubbed_env({**os.environ, "JWT_SECRET": "x" * 40}, {})

    assert "JWT_SECRET" not in env
    assert set(env) <= {"PATH", "HOME", "LANG", "TERM", "TZ"} | {k for k in env if k.startswith("LC_")}


@pytest.mark.parametrize("name", ["", "A=B", "1ABC", "A B", "A\x00"])
def test_env_refuses_a_bad_runner_env_name(name: str) -> None:
    with pytest.raises(ValueError, match=r"runner\.env"):
        scrubbed_env({}, {name: "v"})


def test_the_python_placeholder_is_the_servers_own_interpreter() -> None:
    import sys

    argv = build_argv(["{python}", "-m", "aicm.runner.demo_agent", "-p", "{prompt}"], "hello {python}")
    assert argv == [sys.executable, "-m", "aicm.runner.demo_agent", "-p", "hello {python}"]


def test_agent_flags_give_claude_flags_for_the_fields_set() -> None:
    assert AgentFlags().argv() == []
    assert AgentFlags(max_budget_usd=2.5).argv() == ["--max-budget-usd", "2.5"]
    assert AgentFlags(max_budget_usd=0.00001).argv() == ["--max-budget-usd", "0.00001"]  # never 1e-05
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            AgentFlags(max_budget_usd=bad).argv()


def test_options_come_after_resume_unchanged() -> None:
    argv = build_argv(["claude", "-p", "{prompt}"], "x", resume_session_id="s-1", options=["--a", "{prompt}"])
    assert argv == ["claude", "-p", "x", "--resume", "s-1", "--a", "{prompt}"]
    with pytest.raises(ValueError):
        build_argv(["claude"], "x", options=["bad\x00"])
