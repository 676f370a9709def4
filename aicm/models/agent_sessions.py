"""A run's agent CLI session files, kept with its task so a follow-up can ``--resume`` on any worker."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class TaskSession(Model):
    """One run's CLI session files: a size-capped tar.gz, restored before a follow-up's --resume.

    Made and unpacked by ``aicm.runner.sessions``."""

    id = fields.IntField(primary_key=True)
    task = fields.OneToOneField("models.Task", related_name="agent_session", on_delete=fields.CASCADE)
    session_id = fields.CharField(max_length=200)  # the CLI's session id (Task.cli_session_id)
    archive = fields.BinaryField()  # tar.gz of the files, named relative to the CLI's project directory
    size = fields.IntField()  # the files' bytes before compression
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "task_sessions"
