"""The /budget page: a workspace's cost per day over the last 30 days (an SVG drawn here, no chart
library), today's and this month's spending against the caps, the caps and price-override forms
(admins) and an estimate form. Forms and buttons go through the JSON API (kf.js, budget.js), so the page
passes the same checks as any other client."""

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from accounts.models import ROLE_RANK, Role, Workspace
from accounts.web import page_workspace
from budget import selectors
from budget.estimate import DEFAULT_MAX_STEPS
from budget.models import Cap, Counter
from budget.services import caps_in_force
from projects.models import Project

CHART_DAYS = 30
CHART_WIDTH, CHART_HEIGHT = 720, 200
CHART_LEFT, CHART_BOTTOM, CHART_TOP = 64, 24, 12


@dataclass(frozen=True)
class Bar:
    day: date
    usd: Decimal
    x: float
    y: float
    width: float
    height: float
    today: bool
    label: bool  # the day is written under the axis


def _nice_top(value: Decimal) -> Decimal:
    """The smallest 1, 2 or 5 × 10^k at or above `value` (the chart's top line)."""
    if value <= 0:
        return Decimal("0.01")
    exponent = math.floor(math.log10(float(value)))
    for step in (1, 2, 5, 10):
        top = Decimal(step) * Decimal(10) ** exponent
        if top >= value:
            return top
    return Decimal(10) ** (exponent + 1)


def _chart(days: list[tuple[date, Decimal]], daily_cap: Decimal | None) -> dict[str, Any]:
    top = _nice_top(max([usd for _, usd in days] + [daily_cap or Decimal(0)]))
    plot_w, plot_h = CHART_WIDTH - CHART_LEFT, CHART_HEIGHT - CHART_BOTTOM - CHART_TOP
    slot = plot_w / len(days)

    def y_of(usd: Decimal) -> float:
        return CHART_TOP + plot_h * (1 - float(usd / top))

    bars = [Bar(day=day, usd=usd, x=round(CHART_LEFT + i * slot + slot * 0.15, 2), y=round(y_of(usd), 2),
                width=round(slot * 0.7, 2), height=round(plot_h * float(usd / top), 2), today=i == len(days) - 1,
                label=i % 5 == 4 or i == len(days) - 1) for i, (day, usd) in enumerate(days)]
    ticks = [{"usd": top * k / 2, "y": round(y_of(top * k / 2), 2)} for k in (0, 1, 2)]
    return {"bars": bars, "ticks": ticks, "width": CHART_WIDTH, "height": CHART_HEIGHT, "left": CHART_LEFT,
            "base": CHART_HEIGHT - CHART_BOTTOM, "label_y": CHART_HEIGHT - 6, "slot": slot,
            "cap_y": round(y_of(daily_cap), 2) if daily_cap is not None else None, "cap": daily_cap,
            "total": sum((usd for _, usd in days), Decimal(0))}


_STANDING_ROWS = [("daily", "Workspace, today"), ("monthly", "Workspace, this month"),
                  ("user_daily", "You, today"), ("user_monthly", "You, this month")]


def _standing_rows(workspace: Workspace, user: Any) -> list[dict[str, Any]]:
    now = selectors.standing(workspace=workspace, user=user)
    limits = caps_in_force(workspace_id=workspace.pk, user_id=user.pk)
    rows = []
    for key, label in _STANDING_ROWS:
        counter: Counter | None = now.counters.get(key)
        if key.startswith("user_") and limits[key] is None:
            continue  # the user has no cap of their own: their spending is in the workspace's rows
        spent = counter.spent_usd if counter else Decimal("0.000000")
        reserved = counter.reserved_usd if counter else Decimal("0.000000")
        rows.append({"key": key, "label": label, "spent": spent, "reserved": reserved, "cap": limits[key],
                     "left": now.left.get(key), "used": spent + reserved})
    return rows


@require_safe
@ensure_csrf_cookie
@login_required
def budget_page(request: HttpRequest) -> HttpResponse:
    memberships, membership = page_workspace(request)
    context: dict[str, Any] = {"memberships": memberships, "membership": membership}
    if membership is not None:
        workspace = membership.workspace
        ws_cap: Cap | None = selectors.workspace_caps(workspace=workspace)
        can_manage = ROLE_RANK[Role(membership.role)] >= ROLE_RANK[Role.ADMIN]
        context.update(
            workspace=workspace, can_manage=can_manage, ws_cap=ws_cap,
            chart=_chart(selectors.daily_spend(workspace=workspace, days=CHART_DAYS),
                         ws_cap.daily_usd if ws_cap else None),
            standing=_standing_rows(workspace, request.user),
            member_caps=list(selectors.member_caps(workspace=workspace)),
            members=list(workspace.memberships.select_related("user").order_by("user__email")) if can_manage else [],
            overrides=list(selectors.price_override_list(workspace=workspace)),
            projects=list(Project.objects.filter(workspace=workspace).order_by("name")[:200]),
            default_model=settings.KF_LLM_MODEL, default_max_steps=DEFAULT_MAX_STEPS,
        )
    return render(request, "budget/budget.html", context)


urlpatterns: list[URLPattern] = [
    path("budget", budget_page, name="budget-page"),
]
