"""A follow-up finds its CLI session on any worker: the files go with the task (aicm.runner.sessions).

The app-level tests run the demo agent, which keeps its conversation where Claude Code does and, like it, fails
a ``--resume`` whose session file is not there.
"""

from __future__ import annotations

import copy
import io
import os
import tarfile
from pathlib import Path

import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.runner import sessions
from aicm.runner.executor import TaskExecutor
from aicm.runner.sessions import TooLarge, collect, config_dir_of, project_dir_name, restore
from aicm.workspaces.git import Git
from tests.factories import make_project, make_user
from tests.schema.test_tasks import finished
from tests.workspaces.helpers import Upstream

SESSION = "0b7f8a52-5a3c-4c55-9d6e-0d2f1f0c9a11"


def test_the_project_directory_is_named_as_claude_code_names_it() -> None:
    assert project_dir_name("/srv/aicm/data/workspaces/projects/3/tasks/17") == (
        "-srv-aicm-data-workspaces-projects-3-tasks-17"
    )
    assert project_dir_name("/home/a.b/my_repo x") == "-home-a-b-my-repo-x"


def test_the_cli_config_directory_is_the_one_its_environment_names() -> None:
    assert config_dir_of({"CLAUDE_CONFIG_DIR": "/c", "HOME": "/h"}) == Path("/c")
    assert config_dir_of({"HOME": "/h"}) == Path("/h/.claude")
    assert config_dir_of({}) is None


def session_files(config: Path, cwd: str, files: dict[str, bytes]) -> Path:
    project = config / "projects" / project_dir_name(cwd)
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content)
    return project


def test_a_session_moves_to_another_home_and_another_cwd(tmp_path: Path) -> None:
    first, second = tmp_path / "worker-1" / ".claude", tmp_path / "worker-2" / ".claude"
    session_files(
        first,
        "/w1/tasks/7",
        {
            f"{SESSION}.jsonl": b'{"type":"user"}\n',
            f"{SESSION}/subagents/agent-1.jsonl": b"{}\n",
            "another-session.jsonl": b"not this run's",
        },
    )
    archive = collect(first, "/w1/tasks/7", SESSION)
    assert archive is not None and archive.files == 2

    assert restore(second, "/w2/tasks/7", archive.data, trusted=second.parent) == 2  # an empty disk

    project = second / "projects" / "-w2-tasks-7"
    assert (project / f"{SESSION}.jsonl").read_bytes() == b'{"type":"user"}\n'
    assert (project / SESSION / "subagents" / "agent-1.jsonl").read_bytes() == b"{}\n"
    assert not (project / "another-session.jsonl").exists()
    assert collect(first, "/w1/tasks/8", SESSION) is None  # nothing under another cwd
    assert collect(first, "/w1/tasks/7", "../../etc") is None


def test_planted_symlinks_are_neither_read_nor_written_through(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = tmp_path / "server-secret"
    secret.write_text("jwt-secret")
    project = session_files(home / ".claude", "/w/t", {"keep.txt": b""})
    (project / f"{SESSION}.jsonl").symlink_to(secret)

    assert collect(home / ".claude", "/w/t", SESSION, trusted=home) is None  # the server's file stays out

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".claude" / "projects" / "-w-u").symlink_to(elsewhere, target_is_directory=True)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{SESSION}.jsonl")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(OSError):  # the planted directory link is not followed
        restore(home / ".claude", "/w/u", archive.getvalue(), trusted=home)
    assert list(elsewhere.iterdir()) == []

    restore(home / ".claude", "/w/t", archive.getvalue(), trusted=home)  # a file link is replaced
    assert secret.read_text() == "jwt-secret"
    assert not (project / f"{SESSION}.jsonl").is_symlink()


def test_sessions_past_the_cap_are_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / ".claude"
    session_files(config, "/w/t", {f"{SESSION}.jsonl": os.urandom(64 * 1024)})
    monkeypatch.setattr(sessions, "MAX_ARCHIVE_BYTES", 32 * 1024)
    with pytest.raises(TooLarge):
        collect(config, "/w/t", SESSION)
    monkeypatch.setattr(sessions, "MAX_FILES_BYTES", 1024)
    with pytest.raises(TooLarge):
        collect(config, "/w/t", SESSION)


# ---------------------------------------------------------------------------------- through the executor


def other_worker(app: Starlette, root: Path, sandbox: str = "auto") -> TaskExecutor:
    """A second worker on the same database: its own data directory, agent homes and workspace root."""
    settings = copy.deepcopy(app.state.runtime.settings)
    settings.runner.sandbox = sandbox
    settings.app.data_dir = str(root / "data")
    settings.runner.workspace_root = str(root / "workspaces")
    settings.runner.env["CLAUDE_CONFIG_DIR"] = str(root / "claude")  # unsandboxed runs: a fresh one too
    return TaskExecutor(settings, app.state.runtime.broker, worker_id=f"other-{root.name}")


@pytest.mark.parametrize("sandbox", ["auto", "none"])
async def test_a_follow_up_on_another_worker_resumes_with_the_previous_context(
    app: Starlette, db: None, tmp_path: Path, sandbox: str
) -> None:
    upstream = Upstream(Git(), tmp_path)
    await upstream.create({"README.md": "hello\n"})
    owner = await make_user()
    project = await make_project(owner, repository_url=upstream.url)
    first = await models.Task.create(project=project, created_by=owner, prompt="remember the blue door")
    await app.state.runtime.executor.submit(first.id)
    first = await finished(first.id)
    assert first.status == models.TaskStatus.SUCCEEDED, first.error
    stored = await models.TaskSession.get(task_id=first.id)
    assert stored.session_id == first.cli_session_id and stored.size > 0

    # another machine: nothing of the first run on its disk, the worktree at another path
    follow_up = await models.Task.create(
        project=project, created_by=owner, prompt="and paint it", parent_id=first.id
    )
    worker = other_worker(app, tmp_path / "worker-2", sandbox)
    await worker.run(follow_up.id)
    follow_up = await finished(follow_up.id)

    assert follow_up.status == models.TaskStatus.SUCCEEDED, follow_up.error
    assert follow_up.cli_session_id == first.cli_session_id
    opening = await models.TaskLog.filter(task_id=follow_up.id, kind="assistant").order_by("seq").first()
    assert opening is not None and "earlier in this session: “remember the blue door”" in (opening.text or "")
    kept = await models.TaskSession.get(task_id=follow_up.id)
    assert kept.size > stored.size  # the follow-up's run appended to the conversation
    if sandbox == "none":  # unsandboxed, the CLI's config directory is the one its environment names
        assert list((tmp_path / "worker-2" / "claude" / "projects").glob(f"*/{first.cli_session_id}.jsonl"))

    # the control: the same on a third machine, but without the stored files, finds no conversation
    await models.TaskSession.filter(task_id=first.id).delete()
    again = await models.Task.create(
        project=project, created_by=owner, prompt="once more", parent_id=first.id
    )
    await other_worker(app, tmp_path / "worker-3").run(again.id)
    again = await finished(again.id)
    assert again.status == models.TaskStatus.FAILED
    assert "No conversation found with session ID" in (again.error or "")
