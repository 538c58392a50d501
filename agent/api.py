"""The Agent group of API.md: run (SSE), follow (SSE), cancel, rollback, history, prefs; and one run."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from agent import selectors, services
from agent.models import MAX_COST_USD_LIMIT, MAX_STEPS_LIMIT, AgentPrefs, Run
from api.bodies import json_object
from api.errors import InvalidRequest
from api.fields import (
    PrintableCharField,
    RejectUnknown,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
)
from api.pagination import paginate
from projects.api import project_id_of
from projects.selectors import project_get
from streams.sse import SSE_RENDERERS, sse_cursor, sse_response

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
    snapshot_before = serializers.CharField(help_text="The before-snapshot's id (\"\" if the run wrote nothing).")
    snapshot_after = serializers.CharField()
    can_rollback = serializers.SerializerMethodField(help_text="Ended, and has a before-snapshot.")

    def get_can_rollback(self, run: Run) -> bool:
        return run.finished and bool(run.snapshot_before)


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


class PrefsIn(RejectUnknown):
    model = PrintableCharField(max_length=200, allow_blank=True, required=False,
                               help_text='"" means the server\'s default model (KF_LLM_MODEL).')
    max_cost_usd_per_run = serializers.DecimalField(
        max_digits=12, decimal_places=6, min_value=0, max_value=MAX_COST_USD_LIMIT, allow_null=True,
        required=False, help_text="0 … 10000 USD (number or decimal string), or null for no per-run cap.")
    max_steps = StrictIntegerField(min_value=1, max_value=MAX_STEPS_LIMIT, required=False)
    auto_rollback_on_failure = StrictBooleanField(required=False)



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


RUN_EVENTS = OpenApiResponse(response=OpenApiTypes.STR, description=(
    "text/event-stream (headers X-Run-ID, X-Job-ID): `run {run_id, job_id, project_id, task, model, max_steps, "
    "max_cost_usd}` first, `status {status: running}`, then per step `message {step, delta}` while the model "
    "streams and `message {step, text, done: true}`, `retry {step, attempt, wait_seconds, message}`, `cost {step, "
    "input_tokens, output_tokens, usd, pricing_source}` (cumulative; usd a decimal string), `tool_call {step, id, "
    "name, arguments}`, `file_changed {path, change, diff, diff_truncated, before_sha256, after_sha256}`, "
    "`finding {path, line, rule, severity, message}`, `tool_result {step, id, name, ok, content, data}`, "
    "`snapshot {snapshot_id, kind: before|after}`, `rollback {snapshot_id, paths, automatic}`, and last `end "
    "{status: succeeded|failed|cancelled|budget_exceeded, error?, steps, usd, files_changed, input_tokens, "
    "output_tokens}`. Secret values of the workspace are masked. Resume with /api/agent/follow."))



def _stream(request: Request, run: Run) -> Any:
    return sse_response(job_id=run.job_id, cursor=sse_cursor(request),
                        headers={"X-Run-ID": run.pk, "X-Job-ID": run.job_id})


class RunApi(APIView):
    renderer_classes = SSE_RENDERERS

    class RunIn(RejectUnknown):
        task = StrictCharField(trim_whitespace=False, help_text="What the agent should do.")
        project_id = StrictCharField(required=False, help_text="Defaults to the project you loaded last.")
        model = PrintableCharField(max_length=200, required=False, allow_blank=True,
                                   help_text="Defaults to your prefs' model, else the server's KF_LLM_MODEL.")
        max_cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0,
                                                max_value=MAX_COST_USD_LIMIT, required=False, allow_null=True,
                                                help_text="Stop when the run has cost this much (default: prefs).")
        max_steps = StrictIntegerField(min_value=1, max_value=MAX_STEPS_LIMIT, required=False,
                                       help_text="Model calls at most (default: prefs).")


    @extend_schema(tags=["agent"], request=RunIn, responses={(200, "text/event-stream"): RUN_EVENTS},
                   description="Starts an agent run on the project (members and up) and streams its events. "
                               "Closing the stream does not stop the run (only cancel does). A project runs one "
                               "agent at a time: a second run while one is queued or running is a 409 `conflict` "
                               "whose details.run_id names the run in flight.")
    def post(self, request: Request) -> Any:
        data = self.RunIn(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        project = project_get(user=request.user, project_id=project_id_of(request), min_role=Role.MEMBER)
        run = services.run_start(user=request.user, project=project, task=body["task"],
                                 model=body.get("model") or None, max_cost_usd=body.get("max_cost_usd"),
                                 max_steps=body.get("max_steps"))
        return _stream(request, run)


class FollowApi(APIView):
    renderer_classes = SSE_RENDERERS

    @extend_schema(tags=["agent"], responses={(200, "text/event-stream"): RUN_EVENTS}, parameters=[
        OpenApiParameter("run_id", str, description="Default: your latest run that is queued or running."),
        OpenApiParameter("cursor", int, description="Events after this seq (or the Last-Event-ID header).")],
        description="A run's events with seq > cursor, then the live ones until `end`: no gap, no duplicate, "
                    "whether the run is going or long finished. Viewers and up.")
    def get(self, request: Request) -> Any:
        run_id = request.query_params.get("run_id")
        run = (selectors.run_get(user=request.user, run_id=run_id) if run_id
               else selectors.run_in_flight_latest(user=request.user))
        return _stream(request, run)


class RunDetailApi(APIView):
    @extend_schema(tags=["agent"], responses={200: RunOut}, description="One run (viewers and up).")
    def get(self, request: Request, run_id: str) -> Response:
        return Response(RunOut(selectors.run_get(user=request.user, run_id=run_id)).data)


class CancelApi(APIView):
    @extend_schema(tags=["agent"], request=None, responses={202: RunOut},
                   description="Stops the run (members and up): within a fraction of a second the model stream "
                               "is closed and its commands' process groups are killed; it ends `cancelled`. "
                               "A run that already ended is a 409 `conflict`.")
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id, min_role=Role.MEMBER)
        run = services.run_cancel(run=run)
        return Response(RunOut(run).data, status=status.HTTP_202_ACCEPTED)


class RollbackApi(APIView):
    class RollbackIn(serializers.Serializer):
        run_id = serializers.CharField(required=False)
        snapshot_id = serializers.CharField(required=False, help_text="A run's before- (or after-) snapshot id.")
        force = StrictBooleanField(required=False, default=False,
                                   help_text="Discard changes made to the files after the run ended.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if bool(attrs.get("run_id")) == bool(attrs.get("snapshot_id")):
                raise serializers.ValidationError("Give exactly one of run_id or snapshot_id.")
            return attrs

    @extend_schema(tags=["agent"], request=RollbackIn, responses={200: inline_serializer("RollbackOut", {
        "run_id": serializers.CharField(), "snapshot_id": serializers.CharField(),
        "paths": serializers.ListField(child=serializers.CharField())})},
        description="Restores the project's files to the snapshot taken before the run (members and up): "
                    "modified files back, added ones removed, deleted ones restored; ignored files untouched. "
                    "If files changed after the run ended: 409 `conflict` with details.paths, unless force.")
    def post(self, request: Request) -> Response:
        data = self.RollbackIn(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        if body.get("run_id"):
            run = selectors.run_get(user=request.user, run_id=body["run_id"], min_role=Role.MEMBER)
        else:
            run = selectors.run_by_snapshot(user=request.user, snapshot_id=body["snapshot_id"], min_role=Role.MEMBER)
        return Response(services.run_rollback(user=request.user, run=run, snapshot_id=body.get("snapshot_id"),
                                              force=body["force"]))
