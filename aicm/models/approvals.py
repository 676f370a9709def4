"""Tool approvals an agent asked for (CONTRACT §10) and the project webhooks that tell people about them."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class ApprovalStatus(StrEnum):
    PENDING = "PENDING"
    ALLOWED = "ALLOWED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"


class ApprovalRequest(Model):
    """One ``approval_prompt`` call of a running agent: the tool it wants to use and who decided."""

    id = fields.IntField(primary_key=True)
    task = fields.ForeignKeyField("models.Task", related_name="approvals", on_delete=fields.CASCADE)
    tool_name = fields.CharField(max_length=200)
    input: dict = fields.JSONField(default=dict)  # type: ignore[assignment]
    # SHA-256 of the tool name and its canonical JSON input: what ``remember`` matches on.
    input_key = fields.CharField(max_length=64)
    tool_use_id = fields.CharField(max_length=200, null=True)
    status = fields.CharEnumField(
        ApprovalStatus, max_length=16, default=ApprovalStatus.PENDING, db_index=True
    )
    requested_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    decided_by = fields.ForeignKeyField(
        "models.User", related_name=False, null=True, on_delete=fields.SET_NULL
    )
    decided_at = fields.DatetimeField(null=True)
    reason = fields.TextField(null=True)
    remember = fields.BooleanField(default=False)  # allowed for the rest of the task, same tool and input

    class Meta:
        table = "approval_requests"
        indexes = (("task_id", "status"),)


class WebhookEvent(StrEnum):
    TASK_FINISHED = "TASK_FINISHED"
    APPROVAL_REQUESTED = "APPROVAL_REQUESTED"


class Webhook(Model):
    id = fields.IntField(primary_key=True)
    project = fields.ForeignKeyField("models.Project", related_name="webhooks", on_delete=fields.CASCADE)
    url = fields.CharField(max_length=2000)
    events: list = fields.JSONField(default=list)  # type: ignore[assignment]  # WebhookEvent values
    secret = fields.TextField()  # encrypted (aicm/crypto.py) for "webhook:<project id>"
    created_by = fields.ForeignKeyField(
        "models.User", related_name=False, null=True, on_delete=fields.SET_NULL
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "webhooks"


class WebhookJob(Model):
    """One event to deliver to one webhook: the queue the sender works off, retried with backoff."""

    id = fields.IntField(primary_key=True)
    webhook = fields.ForeignKeyField("models.Webhook", related_name="jobs", on_delete=fields.CASCADE)
    event = fields.CharField(max_length=32)
    payload: dict = fields.JSONField(default=dict)  # type: ignore[assignment]
    attempts = fields.IntField(default=0)
    done = fields.BooleanField(default=False)
    # When it is due; while an attempt runs, pushed past that attempt's timeout (the claim).
    next_attempt_at = fields.DatetimeField(db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "webhook_jobs"
        indexes = (("done", "next_attempt_at"),)


class WebhookDelivery(Model):
    """One attempt to POST one event to one webhook."""

    id = fields.IntField(primary_key=True)
    webhook = fields.ForeignKeyField("models.Webhook", related_name="deliveries", on_delete=fields.CASCADE)
    event = fields.CharField(max_length=32)
    attempt = fields.IntField(default=1)
    status = fields.IntField(null=True)  # the HTTP status, null when no response came
    error = fields.TextField(null=True)
    at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "webhook_deliveries"
        indexes = (("webhook_id", "id"),)
