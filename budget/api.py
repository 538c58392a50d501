"""The Budget group of API.md (estimate, ledger) and what sets the budget: caps and price overrides.
Thin views: input serializer → one selector/service call → output. Money is a decimal string with 6
places ("0.012345"), never a float."""

from decimal import Decimal
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role, User, Workspace
from accounts.selectors import workspace_get
from accounts.services import client_ip
from api.bodies import json_object
from api.errors import InvalidRequest, NotFound
from api.fields import RejectUnknown, StrictCharField, StrictIntegerField
from budget import selectors, services
from budget.estimate import DEFAULT_MAX_STEPS, Estimate, Scenario, run_estimate
from budget.models import MAX_CAP_USD, MAX_PRICE_USD_PER_MTOK, Cap
from projects.models import Project
from projects.selectors import project_get

USD_HELP = "US dollars as a decimal string with 6 decimal places (exact, never a float)."
MAX_STEPS_LIMIT = 500  # as the agent's prefs allow
TASK_MAX_CHARS = 4_000_000
WS_PARAM = OpenApiParameter("ws_id", str, description="The workspace; your personal one when omitted.")


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.6f}"


class UsdField(serializers.DecimalField):
    """0 … max USD with at most 6 places, as a decimal string or a number; "" and null mean none (the
    web form sends an emptied field as "")."""

    def __init__(self, *, max_value: Decimal, **kwargs: Any) -> None:
        super().__init__(max_digits=13, decimal_places=6, min_value=Decimal(0), max_value=max_value,
                         coerce_to_string=True, **kwargs)

    def validate_empty_values(self, data: Any) -> tuple[bool, Any]:
        if data == "" and self.allow_null:
            return True, None
        return super().validate_empty_values(data)

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


def _ws_id(request: Request, body: dict[str, Any] | None = None) -> str | None:
    return (body or {}).get("ws_id") or request.query_params.get("ws_id") or None


# --- estimate -----------------------------------------------------------------------------------------

class EstimateIn(RejectUnknown):
    task = StrictCharField(trim_whitespace=False, max_length=TASK_MAX_CHARS, help_text="What the agent should do.")
    project_id = StrictCharField(required=False, allow_blank=True,
                                 help_text="Default: with ws_id, none; else the project you loaded last (if any).")
    ws_id = StrictCharField(required=False, allow_blank=True,
                            help_text="For an estimate without a project; default: your personal workspace.")
    model = StrictCharField(required=False, allow_blank=True, max_length=200,
                            help_text="Default: the server's KF_LLM_MODEL.")
    max_steps = StrictIntegerField(required=False, min_value=1, max_value=MAX_STEPS_LIMIT,
                                   help_text=f"Model calls at most (the agent prefs' max_steps; default "
                                             f"{DEFAULT_MAX_STEPS}).")


def _scenario_out(s: Scenario) -> dict[str, Any]:
    return {"steps": s.steps, "input_tokens": s.input_tokens, "output_tokens": s.output_tokens, "usd": _usd(s.usd)}


def estimate_body(estimate: Estimate, *, workspace: Workspace, project: Project | None) -> dict[str, Any]:
    profile = estimate.project
    return {
        "model": estimate.model,
        "input_tokens": estimate.expected.input_tokens,
        "output_tokens": estimate.expected.output_tokens,
        "usd_low": _usd(estimate.low.usd),
        "usd_expected": _usd(estimate.expected.usd),
        "usd_high": _usd(estimate.high.usd),
        "pricing_source": estimate.pricing_source,
        "remaining_today_usd": _usd(estimate.remaining_today_usd),
        "ws_id": workspace.pk,
        "project_id": project.pk if project else None,
        "tokenizer": estimate.tokenizer,
        "task_tokens": estimate.task_tokens,
        "first_prompt_tokens": estimate.first_prompt_tokens,
        "context_window": estimate.context_window,
        "calibrated_runs": estimate.calibrated_runs,
        "scenarios": {"low": _scenario_out(estimate.low), "expected": _scenario_out(estimate.expected),
                      "high": _scenario_out(estimate.high)},
        "project": None if profile is None else {
            "files": profile.files, "bytes": profile.bytes, "median_file_bytes": profile.median_file_bytes,
            "tokens_per_byte": round(profile.tokens_per_byte, 4),
            "languages": [{"language": lang, "bytes": size} for lang, size in profile.languages[:8]]},
        "notes": estimate.notes,
    }


def _estimate_target(request: Request, body: dict[str, Any]) -> tuple[Workspace, Project | None]:
    """The project named, else (without ws_id) the one loaded last, else just the workspace."""
    if body.get("project_id"):
        project = project_get(user=request.user, project_id=body["project_id"])
        return project.workspace, project
    ws_id = body.get("ws_id") or None
    if ws_id is None:
        try:
            project = project_get(user=request.user, project_id=None)
            return project.workspace, project
        except NotFound:
            pass
    return workspace_get(user=request.user, ws_id=ws_id), None


class EstimateApi(APIView):
    @extend_schema(
        tags=["budget"], request=EstimateIn, operation_id="budget_estimate",
        responses={200: inline_serializer("BudgetEstimate", {
            "model": serializers.CharField(), "input_tokens": serializers.IntegerField(),
            "output_tokens": serializers.IntegerField(), "usd_low": serializers.CharField(help_text=USD_HELP),
            "usd_expected": serializers.CharField(help_text=USD_HELP),
            "usd_high": serializers.CharField(help_text=USD_HELP + " What the agent reserves against the caps."),
            "pricing_source": serializers.CharField(help_text='"override", "genai-prices <provider>/<model>" '
                                                              'or "unpriced"'),
            "remaining_today_usd": serializers.CharField(allow_null=True, help_text=(
                "What one more run could reserve now: the least any cap in force leaves (workspace daily and "
                "monthly, yours if set) after what is spent and reserved; null when no cap is set.")),
            "ws_id": serializers.CharField(), "project_id": serializers.CharField(allow_null=True),
            "tokenizer": serializers.CharField(help_text='The encoding that counted the task, or "ratio".'),
            "task_tokens": serializers.IntegerField(), "first_prompt_tokens": serializers.IntegerField(),
            "context_window": serializers.IntegerField(allow_null=True),
            "calibrated_runs": serializers.IntegerField(help_text="Past runs of the workspace the figures learnt from."),
            "scenarios": serializers.DictField(), "project": serializers.DictField(allow_null=True),
            "notes": serializers.ListField(child=serializers.CharField())})},
        description=(
            "What an agent run of `task` would cost (viewer+). Input tokens: the task counted with the model's "
            "tokenizer (exact for OpenAI models, a calibrated ratio otherwise) re-sent at every step with the "
            "conversation growing; steps and growth from the project's size and language mix, calibrated with "
            "the workspace's past runs. `input_tokens`/`output_tokens` are the expected figures; `scenarios` "
            "has low, expected and high (every allowed step)."))
    def post(self, request: Request) -> Response:
        data = EstimateIn(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        model = (body.get("model") or settings.KF_LLM_MODEL).strip()
        if not model:
            raise InvalidRequest("No model given and none is configured on the server (KF_LLM_MODEL).",
                                 details={"model": ["required: no server default"]})
        workspace, project = _estimate_target(request, body)
        estimate = run_estimate(workspace=workspace, user=request.user, task=body["task"], model=model,
                                project=project, max_steps=body.get("max_steps") or DEFAULT_MAX_STEPS)
        return Response(estimate_body(estimate, workspace=workspace, project=project))


# --- ledger -------------------------------------------------------------------------------------------

class LedgerQuery(serializers.Serializer):
    ws_id = serializers.CharField(required=False, allow_blank=True)
    from_ = serializers.DateField(required=False, input_formats=["%Y-%m-%d"], allow_null=True)
    to = serializers.DateField(required=False, input_formats=["%Y-%m-%d"], allow_null=True)
    by_model = serializers.BooleanField(required=False, default=False)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")  # a Python keyword
        return fields


def caps_body(cap: Cap | None) -> dict[str, str | None]:
    return {"daily_usd": _usd(cap.daily_usd if cap else None), "monthly_usd": _usd(cap.monthly_usd if cap else None)}


class LedgerApi(APIView):
    @extend_schema(
        tags=["budget"], operation_id="budget_ledger",
        parameters=[WS_PARAM,
                    OpenApiParameter("from", str, description="First day, YYYY-MM-DD (UTC); default: 29 days before `to`."),
                    OpenApiParameter("to", str, description="Last day, YYYY-MM-DD (UTC); default: today."),
                    OpenApiParameter("by_model", bool, description="One item per day and model.")],
        responses={200: inline_serializer("BudgetLedger", {
            "ws_id": serializers.CharField(), "from": serializers.DateField(), "to": serializers.DateField(),
            "items": inline_serializer("LedgerItem", {
                "date": serializers.DateField(), "model": serializers.CharField(required=False),
                "usd": serializers.CharField(help_text=USD_HELP), "input_tokens": serializers.IntegerField(),
                "output_tokens": serializers.IntegerField(), "calls": serializers.IntegerField(),
                "runs": serializers.IntegerField(help_text="Runs that ended that day.")}, many=True),
            "caps": inline_serializer("LedgerCaps", {"daily_usd": serializers.CharField(allow_null=True),
                                                     "monthly_usd": serializers.CharField(allow_null=True)}),
            "total": serializers.DictField()})},
        description=(
            "The workspace's spending per UTC day (viewer+): the days between `from` and `to` that had model "
            "calls or ended runs, oldest first (at most 366 days at once). Today's row moves while runs go: "
            "each model call settles into it. `caps` are the workspace's caps (null: none)."))
    def get(self, request: Request) -> Response:
        query = LedgerQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        workspace = workspace_get(user=request.user, ws_id=params.get("ws_id") or None)
        start, end = selectors.ledger_range(date_from=params.get("from"), date_to=params.get("to"))
        items = selectors.ledger_items(workspace=workspace, start=start, end=end, by_model=params["by_model"])
        total = {"usd": _usd(sum((i["usd"] for i in items), Decimal(0))),
                 **{k: sum(i[k] for i in items) for k in ("input_tokens", "output_tokens", "calls", "runs")}}
        return Response({
            "ws_id": workspace.pk, "from": start.isoformat(), "to": end.isoformat(),
            "items": [{**item, "date": item["date"].isoformat(), "usd": _usd(item["usd"])} for item in items],
            "caps": caps_body(selectors.workspace_caps(workspace=workspace)), "total": total})


# --- caps ---------------------------------------------------------------------------------------------

class CapsIn(RejectUnknown):
    ws_id = StrictCharField(required=False, allow_blank=True)
    user_id = StrictCharField(required=False, allow_blank=True, allow_null=True,
                              help_text="A member's caps in the workspace; omitted: the workspace's.")
    daily_usd = UsdField(max_value=MAX_CAP_USD, required=False, allow_null=True,
                         help_text="Per UTC day; null or \"\" removes it; omitted leaves it as it is.")
    monthly_usd = UsdField(max_value=MAX_CAP_USD, required=False, allow_null=True,
                           help_text="Per UTC calendar month; null or \"\" removes it; omitted leaves it.")


def _period_body(row: Any) -> dict[str, str]:
    return {"spent_usd": _usd(row.spent_usd if row else Decimal(0)),
            "reserved_usd": _usd(row.reserved_usd if row else Decimal(0))}


def caps_view(*, workspace: Workspace, user: User) -> dict[str, Any]:
    cap = selectors.workspace_caps(workspace=workspace)
    now = selectors.standing(workspace=workspace, user=user)
    return {
        "ws_id": workspace.pk, **caps_body(cap),
        "updated_at": cap.updated_at.isoformat().replace("+00:00", "Z") if cap else None,
        "members": [{"user_id": c.user_id, "email": c.user.email, "name": c.user.name, **caps_body(c)}
                    for c in selectors.member_caps(workspace=workspace)],
        "today": _period_body(now.counters.get("daily")), "month": _period_body(now.counters.get("monthly")),
        "remaining_today_usd": _usd(now.remaining_today_usd),
    }


CAPS_OUT = inline_serializer("BudgetCaps", {
    "ws_id": serializers.CharField(), "daily_usd": serializers.CharField(allow_null=True, help_text=USD_HELP),
    "monthly_usd": serializers.CharField(allow_null=True, help_text=USD_HELP),
    "updated_at": serializers.DateTimeField(allow_null=True),
    "members": inline_serializer("MemberCaps", {
        "user_id": serializers.CharField(), "email": serializers.CharField(), "name": serializers.CharField(),
        "daily_usd": serializers.CharField(allow_null=True), "monthly_usd": serializers.CharField(allow_null=True)},
        many=True),
    "today": serializers.DictField(help_text="{spent_usd, reserved_usd} of the workspace today (UTC)"),
    "month": serializers.DictField(help_text="{spent_usd, reserved_usd} of the workspace this month"),
    "remaining_today_usd": serializers.CharField(allow_null=True, help_text="For you: see /api/budget/estimate."),
})


class CapsApi(APIView):
    @extend_schema(tags=["budget"], operation_id="budget_caps_get", parameters=[WS_PARAM], responses={200: CAPS_OUT},
                   description="The workspace's daily and monthly usd caps (null: none), its members' own caps, "
                               "and what is spent and reserved today and this month. Viewer+.")
    def get(self, request: Request) -> Response:
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request))
        return Response(caps_view(workspace=workspace, user=request.user))

    @extend_schema(tags=["budget"], operation_id="budget_caps_set", request=CapsIn, parameters=[WS_PARAM],
                   responses={200: CAPS_OUT},
                   description=(
                       "Sets the workspace's caps, or with `user_id` one member's caps in it (admin+; audited). "
                       "Fields left out keep their value; null or \"\" removes a cap; 0 stops all spending. "
                       "A run starts only if its high estimate fits under every cap that applies (spent + "
                       "reserved), and stops `budget_exceeded` when its next model call does not fit."))
    def put(self, request: Request) -> Response:
        data = CapsIn(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request, body), min_role=Role.ADMIN)
        member = None
        if body.get("user_id"):
            member = User.objects.filter(pk=body["user_id"], memberships__workspace=workspace).first()
            if member is None:
                raise InvalidRequest("No such member in this workspace.", details={"user_id": ["not a member"]})
        services.caps_set(actor=request.user, workspace=workspace, user=member,
                          daily_usd=body.get("daily_usd", services.UNSET),
                          monthly_usd=body.get("monthly_usd", services.UNSET), ip=client_ip(request._request))
        return Response(caps_view(workspace=workspace, user=request.user))


# --- price overrides ----------------------------------------------------------------------------------

class PriceIn(RejectUnknown):
    ws_id = StrictCharField(required=False, allow_blank=True)
    model = StrictCharField(max_length=200, help_text="The model name exactly as runs use it.")
    input_usd_per_mtok = UsdField(max_value=MAX_PRICE_USD_PER_MTOK, help_text="USD per million input tokens (0 allowed).")
    output_usd_per_mtok = UsdField(max_value=MAX_PRICE_USD_PER_MTOK, help_text="USD per million output tokens.")


class PriceOut(serializers.Serializer):
    model = serializers.CharField()
    input_usd_per_mtok = serializers.DecimalField(max_digits=13, decimal_places=6, coerce_to_string=True)
    output_usd_per_mtok = serializers.DecimalField(max_digits=13, decimal_places=6, coerce_to_string=True)
    updated_at = serializers.DateTimeField()


class PricesApi(APIView):
    @extend_schema(tags=["budget"], operation_id="budget_prices_list", parameters=[WS_PARAM],
                   responses={200: inline_serializer("PriceOverrides", {
                       "ws_id": serializers.CharField(), "items": PriceOut(many=True)})},
                   description="The workspace's own model prices (viewer+), which win over the genai-prices list.")
    def get(self, request: Request) -> Response:
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request))
        return Response({"ws_id": workspace.pk,
                         "items": PriceOut(selectors.price_override_list(workspace=workspace), many=True).data})

    @extend_schema(tags=["budget"], operation_id="budget_prices_set", request=PriceIn,
                   responses={201: PriceOut, 200: PriceOut},
                   description="Sets the workspace's price for a model (admin+; audited): 201 new, 200 replaced. "
                               "For models genai-prices does not know (self-hosted: 0), or to replace its price.")
    def put(self, request: Request) -> Response:
        data = PriceIn(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request, body), min_role=Role.ADMIN)
        row, created = services.price_override_set(
            actor=request.user, workspace=workspace, model=body["model"],
            input_usd_per_mtok=body["input_usd_per_mtok"], output_usd_per_mtok=body["output_usd_per_mtok"],
            ip=client_ip(request._request))
        return Response(PriceOut(row).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(tags=["budget"], operation_id="budget_prices_delete", responses={204: None},
                   parameters=[WS_PARAM, OpenApiParameter("model", str, required=True)],
                   description="Removes the workspace's price for `model` (admin+; audited).")
    def delete(self, request: Request) -> Response:
        model = request.query_params.get("model") or ""
        if not model:
            raise InvalidRequest("model is required.", details={"model": ["required"]})
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request), min_role=Role.ADMIN)
        services.price_override_delete(actor=request.user, workspace=workspace, model=model,
                                       ip=client_ip(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)

