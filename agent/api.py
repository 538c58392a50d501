"""The Agent group of API.md: history and prefs (run, follow, cancel and rollback come with the loop)."""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agent import selectors, services
from agent.models import MAX_COST_USD_LIMIT, MAX_STEPS_LIMIT, AgentPrefs, Run
from api.errors import InvalidRequest
from api.pagination import paginate

# Money is a decimal string ("0.012345"), never a float: six exact decimal places, as stored.
USD_HELP = "US dollars as a decimal string with 6 decimal places (exact, never a float)."


class RunOut(serializers.Serializer):
    id = serializers.CharField()
    task = serializers.CharField()
    status = serializers.ChoiceField(Run.Status.choices)
    model = serializers.CharField()
    project_id = serializers.CharField()
    ws_id = serializers.CharField(source="workspace_id")
    job_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    usd = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True, help_text=USD_HELP)
    max_cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True,
                                            allow_null=True, help_text=USD_HELP)
    max_steps = serializers.IntegerField()
    steps = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    files_changed = serializers.IntegerField()
    error = serializers.CharField()


class HistoryApi(APIView):
    @extend_schema(
        tags=["agent"],
        parameters=[
            OpenApiParameter("ws_id", str, description="The workspace (viewer+); omitted: the project's when project_id is given, else your personal one."),
            OpenApiParameter("project_id", str, description="Only this project's runs."),
            OpenApiParameter("status", str, description="One status or a comma-separated list: "
                                                        + ", ".join(Run.Status.values)),
            OpenApiParameter("cursor", str), OpenApiParameter("limit", int, description="Default 50, max 200."),
        ],
        responses={200: inline_serializer("RunHistory", {"items": RunOut(many=True),
                                                         "next_cursor": serializers.CharField(allow_null=True)})},
        description="The runs you may see, newest first. `usd` is a decimal string.")
    def get(self, request: Request) -> Response:
        params = request.query_params
        raw_status = params.get("status", "")
        statuses = [s.strip() for s in raw_status.split(",") if s.strip()] if raw_status else None
        if raw_status and not statuses:
            raise InvalidRequest("status is empty.", details={"status": ["must name at least one status"]})
        qs = selectors.run_history(user=request.user, ws_id=params.get("ws_id") or None,
                                   project_id=params.get("project_id") or None, statuses=statuses)
        rows, next_cursor = paginate(qs, request, order_field="created_at")
        return Response({"items": RunOut(rows, many=True).data, "next_cursor": next_cursor})


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: "yes", 1 or "false" are more likely mistakes than intentions."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class PrintableCharField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        value = super().to_internal_value(data)
        if not value.isprintable():
            raise serializers.ValidationError("Must contain printable characters only.")
        return value


class StrictIntegerField(serializers.IntegerField):
    """Integers as JSON numbers only: DRF would otherwise take "30" or 30.0."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class PrefsIn(serializers.Serializer):
    model = PrintableCharField(max_length=200, allow_blank=True, required=False,
                               help_text='"" means the server\'s default model (KF_LLM_MODEL).')
    max_cost_usd_per_run = serializers.DecimalField(
        max_digits=12, decimal_places=6, min_value=0, max_value=MAX_COST_USD_LIMIT, allow_null=True,
        required=False, help_text="0 … 10000 USD (number or decimal string), or null for no per-run cap.")
    max_steps = StrictIntegerField(min_value=1, max_value=MAX_STEPS_LIMIT, required=False)
    auto_rollback_on_failure = StrictBooleanField(required=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            # Silently ignoring a misspelt field would leave the user believing it was saved.
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class PrefsOut(serializers.Serializer):
    model = serializers.CharField(help_text='"" means the server\'s default model: see effective_model.')
    effective_model = serializers.SerializerMethodField(
        help_text="The model a run would use: `model`, or the server's KF_LLM_MODEL (\"\" if none is configured).")
    max_cost_usd_per_run = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True,
                                                    allow_null=True, help_text=USD_HELP)
    max_steps = serializers.IntegerField()
    auto_rollback_on_failure = serializers.BooleanField()
    updated_at = serializers.DateTimeField(allow_null=True)

    def get_effective_model(self, prefs: AgentPrefs) -> str:
        return selectors.effective_model(prefs=prefs)


class PrefsApi(APIView):
    @extend_schema(tags=["agent"], responses={200: PrefsOut},
                   description="Your agent prefs; the defaults (updated_at null) when you never saved any.")
    def get(self, request: Request) -> Response:
        return Response(PrefsOut(selectors.prefs_get(user=request.user)).data)

    @extend_schema(tags=["agent"], request=PrefsIn, responses={200: PrefsOut},
                   description="A partial update: fields left out keep their value; unknown fields are a 400.")
    def post(self, request: Request) -> Response:
        data = PrefsIn(data=request.data)
        data.is_valid(raise_exception=True)
        prefs = services.agent_prefs_update(user=request.user, **data.validated_data)
        return Response(PrefsOut(prefs).data)
