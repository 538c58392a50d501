"""Shell commands and test runs (API.md "Shell and PTY"): run, test, jobs, cancel, recent."""

from typing import Any

from django.urls import URLPattern, path
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

from accounts.models import Role, User
from api.bodies import json_object
from api.pagination import paginate
from projects.api import project_id_of
from projects.models import Project
from projects.selectors import project_get
from shell import selectors, services
from streams.models import Job
from streams.sse import SSE_RENDERERS, sse_cursor, sse_response

PROJECT_PARAM = OpenApiParameter("project_id", str, description="Defaults to the project you loaded last.")
RUN_SSE = OpenApiResponse(response=OpenApiTypes.STR, description=(
    "text/event-stream (header X-Job-ID): `job {job_id, kind, project_id, command, cwd}` first, `status "
    "{status: running}`, then `stdout` / `stderr` `{text}` as output comes (secret values masked as ••••), "
    "`truncated {limit_bytes, message}` once if the output passes KF_SHELL_OUTPUT_MAX_BYTES (the command "
    "runs on; the rest of its output is dropped), and last `end {status: succeeded|failed|cancelled, "
    "exit_code (null when killed by a signal), signal, duration_ms, output_bytes, truncated, timed_out, "
    "error?}`. Follow or resume it at /api/jobs/<job_id>/stream."))


def _stream(request: Request, job: Job) -> Any:
    return sse_response(job_id=job.pk, cursor=sse_cursor(request), headers={"X-Job-ID": job.pk})


class RunApi(APIView):
    renderer_classes = SSE_RENDERERS

    class RunInput(serializers.Serializer):
        command = serializers.CharField(help_text="Run with bash -c in the project root (or cwd).")
        project_id = serializers.CharField(required=False)
        cwd = serializers.CharField(required=False, allow_blank=True,
                                    help_text="A folder inside the project, relative to its root.")
        secrets = serializers.ListField(child=serializers.CharField(), required=False,
                                        help_text="Names of workspace secrets to set as environment variables.")
        timeout_s = serializers.IntegerField(required=False, help_text="Default KF_SHELL_TIMEOUT_SECONDS, at most "
                                                                        "KF_SHELL_MAX_TIMEOUT_SECONDS.")

    @extend_schema(request=RunInput, responses={(200, "text/event-stream"): RUN_SSE}, tags=["shell"],
                   description="Runs a command in the project as a background job and streams it. Members and "
                               "up; the command gets a clean environment (PATH, HOME of its own, LANG=C.UTF-8, "
                               "TERM=dumb, the named secrets), runs in its own process group, and is killed with "
                               "its whole group on cancel or timeout. Closing the stream does not stop it.")
    def post(self, request: Request) -> Any:
        data = self.RunInput(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        project = project_get(user=request.user, project_id=project_id_of(request), min_role=Role.MEMBER)
        job = services.shell_run_start(user=request.user, project=project, command=body.get("command"),
                                       cwd=body.get("cwd"), secrets=body.get("secrets"),
                                       timeout_s=body.get("timeout_s"))
        return _stream(request, job)


class TestApi(APIView):
    renderer_classes = SSE_RENDERERS

    class TestInput(serializers.Serializer):
        project_id = serializers.CharField(required=False)
        runner = serializers.ChoiceField(choices=list(services.testrunners.RUNNERS), required=False,
                                         help_text="Instead of the detected one.")
        args = serializers.JSONField(required=False, help_text="Extra arguments for the runner: a list of "
                                                               "strings, or one string split like a shell does.")
        cwd = serializers.CharField(required=False, allow_blank=True)
        secrets = serializers.ListField(child=serializers.CharField(), required=False)
        timeout_s = serializers.IntegerField(required=False)

    @extend_schema(request=TestInput, responses={(200, "text/event-stream"): RUN_SSE}, tags=["shell"],
                   description="Runs the project's tests and streams them like /api/shell/run. The runner is "
                               "detected in this order: pytest, npm test, go test, cargo test, make test (see "
                               "shell/testrunners.py); none found → 400. `end` adds `{runner, results_from: "
                               "junit|output|null, passed, failed, skipped, errors, failures: [{name, message, "
                               "path, line}]}` (counts null when the runner reported none we can read).")
    def post(self, request: Request) -> Any:
        data = self.TestInput(data=json_object(request))
        data.is_valid(raise_exception=True)
        body = data.validated_data
        project = project_get(user=request.user, project_id=project_id_of(request), min_role=Role.MEMBER)
        job = services.shell_test_start(user=request.user, project=project, runner=body.get("runner"),
                                        args=body.get("args"), cwd=body.get("cwd"), secrets=body.get("secrets"),
                                        timeout_s=body.get("timeout_s"))
        return _stream(request, job)


class ShellJobOut(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    command = serializers.SerializerMethodField()
    ws_id = serializers.CharField(source="workspace_id")
    project_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)

    def get_command(self, job: Job) -> str:
        return str(job.params.get("command", ""))


class RecentOut(serializers.Serializer):
    job_id = serializers.CharField(source="id")
    kind = serializers.CharField()
    command = serializers.SerializerMethodField()
    exit_code = serializers.SerializerMethodField()
    status = serializers.CharField()
    at = serializers.DateTimeField(source="created_at")
    project_id = serializers.CharField()

    def get_command(self, job: Job) -> str:
        return str(job.params.get("command", ""))

    def get_exit_code(self, job: Job) -> int | None:
        return job.result.get("exit_code")


def _project_filter(user: User, request: Request) -> Project | None:
    project_id = request.query_params.get("project_id")
    return project_get(user=user, project_id=project_id) if project_id else None


LIST_PARAMS = [OpenApiParameter("project_id", str, description="Only this project (default: every project you "
                                                                  "can see)."),
               OpenApiParameter("cursor", str), OpenApiParameter("limit", int)]


class JobsApi(APIView):
    @extend_schema(parameters=LIST_PARAMS, tags=["shell"], description="Queued and running shell, test and ssh "
                   "jobs in all your workspaces, newest first.",
                   responses={200: inline_serializer("ShellJobList", {
                       "items": ShellJobOut(many=True), "next_cursor": serializers.CharField(allow_null=True)})})
    def get(self, request: Request) -> Response:
        qs = selectors.jobs_in_flight(user=request.user, project=_project_filter(request.user, request))
        rows, next_cursor = paginate(qs, request, order_field="created_at")
        return Response({"items": ShellJobOut(rows, many=True).data, "next_cursor": next_cursor})


class RecentApi(APIView):
    @extend_schema(parameters=LIST_PARAMS, tags=["shell"], description="Commands and test runs, newest first "
                   "(exit_code null while running or when killed).",
                   responses={200: inline_serializer("ShellRecentList", {
                       "items": RecentOut(many=True), "next_cursor": serializers.CharField(allow_null=True)})})
    def get(self, request: Request) -> Response:
        qs = selectors.commands_recent(user=request.user, project=_project_filter(request.user, request))
        rows, next_cursor = paginate(qs, request, order_field="created_at")
        return Response({"items": RecentOut(rows, many=True).data, "next_cursor": next_cursor})


class CancelApi(APIView):
    @extend_schema(request=None, responses={202: ShellJobOut}, tags=["shell"],
                   description="Members and up. Raises the job's cancel flag: the worker kills the command's whole "
                               "process group (SIGTERM, SIGKILL after 1 s) and the stream ends with status "
                               "cancelled. A job that already ended is left as it is (still 202).")
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.command_job_get(user=request.user, job_id=job_id, min_role=Role.MEMBER)
        job = services.shell_cancel(job=job)
        return Response(ShellJobOut(job).data, status=status.HTTP_202_ACCEPTED)


urlpatterns: list[URLPattern] = [
    path("shell/run", RunApi.as_view(), name="shell-run"),
    path("shell/test", TestApi.as_view(), name="shell-test"),
    path("shell/jobs", JobsApi.as_view(), name="shell-jobs"),
    path("shell/recent", RecentApi.as_view(), name="shell-recent"),
    path("shell/cancel/<str:job_id>", CancelApi.as_view(), name="shell-cancel"),
]
