"""AI coding runs (tasks) and the lines they print (task logs)."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING_FOR_APPROVAL = "WAITING_FOR_APPROVAL"  # running, and an approval request is pending
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


# Statuses of a task whose agent process is alive.
ACTIVE = frozenset({TaskStatus.RUNNING, TaskStatus.WAITING_FOR_APPROVAL})
FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


class Task(Model):
    id = fields.IntField(primary_key=True)
    project = fields.ForeignKeyField("models.Project", related_name="tasks", on_delete=fields.CASCADE)
    created_by = fields.ForeignKeyField(
        "models.User", related_name="tasks", null=True, on_delete=fields.SET_NULL, db_index=True
    )
    # The task this one follows up (a plain id: aerich cannot migrate a self-referencing foreign key).
    parent_id = fields.IntField(null=True)
    prompt = fields.TextField()
    status = fields.CharEnumField(TaskStatus, max_length=24, default=TaskStatus.PENDING, db_index=True)
    exit_code = fields.IntField(null=True)
    error = fields.TextField(null=True)
    cost_usd = fields.FloatField(null=True)
    max_budget_usd = fields.FloatField(null=True)  # passed to the CLI (--max-budget-usd); null = none
    cli_session_id = fields.CharField(max_length=128, null=True)  # from the CLI's init line, for --resume
    last_seq = fields.IntField(default=0)  # the highest TaskLog.seq written
    worker_id = fields.CharField(max_length=128, null=True)  # the process running it
    lease_expires_at = fields.DatetimeField(null=True)  # a worker renews it while the task runs
    cancel_requested = fields.BooleanField(default=False)
    # SHA-256 of the run's approval credential (CONTRACT §10): set while it runs, cleared when it ends.
    approval_token_hash = fields.CharField(max_length=64, null=True)
    # Its git branch (CONTRACT §8): made from base_ref at base_commit; head_commit, commits and changes are
    # stored when a run ends, so reading them runs no git.
    branch = fields.CharField(max_length=255, null=True)
    base_ref = fields.CharField(max_length=255, null=True)
    base_commit = fields.CharField(max_length=64, null=True)
    head_commit = fields.CharField(max_length=64, null=True)
    commits: list | None = fields.JSONField(null=True)  # type: ignore[assignment]
    changes: str | None = fields.TextField(null=True)  # type: ignore[assignment]  # TaskChanges.to_json()
    changed_paths: list | None = fields.JSONField(null=True)  # type: ignore[assignment]  # for overlapsWith
    pushed_at = fields.DatetimeField(null=True)
    merged_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "tasks"
        indexes = (("project_id", "id"),)

    def __str__(self) -> str:
        return f"task {self.id}"


class TaskLog(Model):
    id = fields.BigIntField(primary_key=True)
    task = fields.ForeignKeyField("models.Task", related_name="logs", on_delete=fields.CASCADE)
    seq = fields.IntField()  # 1, 2, 3... per task, no holes
    at = fields.DatetimeField()
    stream = fields.CharField(max_length=8)  # stdout | stderr | system
    kind = fields.CharField(max_length=32)
    text = fields.TextField(null=True)
    data: dict | None = fields.JSONField(null=True)  # type: ignore[assignment]

    class Meta:
        table = "task_logs"
        unique_together = (("task", "seq"),)
