"""Money (CONTRACT §9): a task's ``maxBudgetUsd``, a project's monthly budget and what its tasks cost.

The one rule: once the costs of a project's tasks created this calendar month (UTC) reach its
``monthly_budget_usd``, no new task starts there (``FORBIDDEN``, ``extensions.reason: "BUDGET_EXCEEDED"``),
follow-ups included. Costs are known when a run ends, so tasks running at the same time can together pass
the budget; a task's ``maxBudgetUsd`` (``--max-budget-usd``) caps what one run may spend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from tortoise.functions import Sum
from tortoise.queryset import QuerySet

from aicm import models
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, Forbidden

__all__ = ["MAX_USD", "amount", "month_costs", "month_start", "require_within_budget"]

log = logging.getLogger("aicm.runner")

MAX_USD = 1_000_000.0
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"


def amount(value: float, field: str) -> float:
    """A budget in US dollars: positive, at most ``MAX_USD``; else ``BAD_USER_INPUT`` on ``field``."""
    if not math.isfinite(value) or value <= 0:
        raise BadUserInput(f"'{field}' must be a positive amount of US dollars", field=field)
    if value > MAX_USD:
        raise BadUserInput(f"'{field}' must be at most {MAX_USD:,.0f}", field=field)
    return float(value)


def month_start(now: datetime | None = None) -> datetime:
    """Midnight UTC of the first day of ``now``'s month (default: this month)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def month_costs(
    project_ids: Sequence[int], tasks: QuerySet[models.Task] | None = None
) -> dict[int, float]:
    """The summed ``cost_usd`` of each project's tasks created this month (0.0 when none), in one query;
    ``tasks`` narrows the rows counted (a viewer's visible tasks)."""
    tasks = tasks if tasks is not None else models.Task.all()
    rows = (
        await tasks.filter(project_id__in=list(project_ids), created_at__gte=month_start())
        .annotate(total=Sum("cost_usd"))
        .group_by("project_id")
        .values_list("project_id", "total")
    )
    found = {project_id: float(total or 0) for project_id, total in rows}
    return {project_id: found.get(project_id, 0.0) for project_id in project_ids}


async def require_within_budget(viewer: Viewer, project: models.Project) -> None:
    """Refuse a new task in ``project`` once this month's costs reach its monthly budget."""
    budget = project.monthly_budget_usd
    if budget is None:
        return
    spent = (await month_costs([project.id]))[project.id]
    if spent >= budget:
        log.info(
            "task refused: the project's monthly budget is used up",
            extra={
                "event": "budget_exceeded",
                "project_id": project.id,
                "user_id": viewer.user_id,
                "budget_usd": budget,
                "month_cost_usd": spent,
            },
        )
        raise Forbidden(
            f"The project's monthly budget (${budget:,.2f}) is used up: ${spent:,.2f} this month",
            reason=BUDGET_EXCEEDED,
        )
