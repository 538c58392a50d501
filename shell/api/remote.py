"""Shell API, the remote half: SSH hosts, ssh-run, ssh-pull (shell.ssh) and suggest (shell.suggest).

Who may do what:
- ssh-hosts: member+ of `ws_id` (default: the caller's personal workspace). The hosts are the
  operator's, not a workspace's; the role check keeps viewers (read-only people) from them.
- ssh-run / ssh-pull: member+ of the project's workspace (or of `ws_id` for ssh-run without a project).
- suggest: viewer+ of the project: it only reads the project and runs nothing.
Outsiders get not_found for another workspace's ids, as everywhere.
"""

from typing import Any

from django.conf import settings
from django.urls import URLPattern, path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import workspace_get
from accounts.services import client_ip
from api.errors import InvalidRequest, NotFound
from projects.models import Project
from projects.selectors import project_get
from shell import ssh, suggest
from streams.sse import SSE_RENDERERS, sse_cursor, sse_response


class SshHostOut(serializers.Serializer):
    alias = serializers.CharField()
    hostname = serializers.CharField()
    user = serializers.CharField()
    port = serializers.IntegerField()


class SshHostsApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("ws_id", str, description="Defaults to your personal workspace.")],
                   responses={200: inline_serializer("SshHostList", {"items": SshHostOut(many=True)})}, tags=["shell"],
                   description="The hosts of the server's ssh config (KF_SSH_CONFIG): one item per name on each "
                               "`Host` line, patterns (`*`, `?`, `!`) excluded; `Include` is followed, `Match` "
                               "blocks are ignored. No config file: an empty list. Needs member+.")
    def get(self, request: Request) -> Response:
        workspace_get(user=request.user, ws_id=request.query_params.get("ws_id") or None, min_role=Role.MEMBER)
        return Response({"items": SshHostOut(ssh.ssh_hosts_list(), many=True).data})


class SshRunApi(APIView):
    renderer_classes = SSE_RENDERERS

    class SshRunInput(serializers.Serializer):
        host = serializers.CharField(max_length=255)
        command = serializers.CharField(max_length=ssh.COMMAND_MAX_CHARS)
        project_id = serializers.CharField(max_length=40, required=False)
        ws_id = serializers.CharField(max_length=40, required=False)
        timeout_s = serializers.IntegerField(required=False, min_value=1)

    @extend_schema(
        request=SshRunInput, tags=["shell"],
        responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description=(
            "SSE: `job {job_id, kind, project_id, command, host}`, `status {status}`, `stdout`/`stderr {text}`, `truncated {limit_bytes}` "
            "past KF_SHELL_OUTPUT_MAX_BYTES, then `end {status, exit_code, signal, duration_ms, host, "
            "timed_out, truncated, error?, reason?}`; connection failures (unknown or changed host key, auth, "
            "timeout) end the job `failed` with `reason`."))},
        description="Runs `command` on a host of the server's ssh config (by alias) as a job of kind `ssh`; "
                    "`timeout_s` defaults to KF_SHELL_TIMEOUT_SECONDS (max KF_SHELL_MAX_TIMEOUT_SECONDS). "
                    "`project_id` only files the job under a project. Cancel with POST /api/shell/cancel/<job_id>. "
                    "The remote needs a POSIX shell.")
    def post(self, request: Request) -> Any:
        data = self.SshRunInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        timeout_s = values.get("timeout_s", settings.KF_SHELL_TIMEOUT_SECONDS)
        if timeout_s > settings.KF_SHELL_MAX_TIMEOUT_SECONDS:
            raise InvalidRequest(f"timeout_s may be at most {settings.KF_SHELL_MAX_TIMEOUT_SECONDS}.",
                                 details={"timeout_s": ["too large"]})
        project_id = values.get("project_id") or ""
        if project_id:
            project = project_get(user=request.user, project_id=project_id, min_role=Role.MEMBER)
            workspace = project.workspace
            if values.get("ws_id") and values["ws_id"] != workspace.pk:
                raise InvalidRequest("The project is not in that workspace.", details={"ws_id": ["mismatch"]})
        else:
            workspace = workspace_get(user=request.user, ws_id=values.get("ws_id") or None, min_role=Role.MEMBER)
        host = ssh.ssh_host_get(alias=values["host"])
        job = ssh.ssh_run_start(user=request.user, workspace=workspace, project_id=project_id, host=host,
                                command=values["command"], timeout_s=timeout_s, ip=client_ip(request._request))
        return sse_response(job_id=job.pk, cursor=sse_cursor(request), headers={"X-Job-ID": job.pk})


class SshPullApi(APIView):
    class SshPullInput(serializers.Serializer):
        host = serializers.CharField(max_length=255)
        remote_path = serializers.CharField(max_length=ssh.REMOTE_PATH_MAX_CHARS, trim_whitespace=False)
        path = serializers.CharField(max_length=4096, trim_whitespace=False)
        project_id = serializers.CharField(max_length=40, required=False)

    class SshPullOutput(serializers.Serializer):
        path = serializers.CharField()
        size = serializers.IntegerField()
        sha256 = serializers.CharField()
        replaced = serializers.BooleanField()

    @extend_schema(request=SshPullInput, responses={201: SshPullOutput, 200: SshPullOutput}, tags=["shell"],
                   description="Copies a remote file (SFTP; `remote_path` absolute or relative to the remote home) "
                               "into the project at `path` (relative; no `..`, no absolute path, no symlink out of "
                               "the root; missing folders are created; an existing file is replaced atomically: "
                               "200 instead of 201). Over KF_SSH_PULL_MAX_BYTES → 413; no such remote file → 404; "
                               "SSH failures → 502 `ssh_failed` with `details.reason`. Needs member+.")
    def post(self, request: Request) -> Response:
        data = self.SshPullInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project = project_get(user=request.user, project_id=values.get("project_id") or None, min_role=Role.MEMBER)
        result = ssh.ssh_pull(user=request.user, project=project, alias=values["host"],
                              remote_path=values["remote_path"], path=values["path"], ip=client_ip(request._request))
        return Response(self.SshPullOutput(result).data,
                        status=status.HTTP_200_OK if result.replaced else status.HTTP_201_CREATED)


class SuggestApi(APIView):
    class SuggestInput(serializers.Serializer):
        prompt = serializers.CharField(max_length=suggest.PROMPT_MAX_CHARS)
        project_id = serializers.CharField(max_length=40, required=False)

    class SuggestOutput(serializers.Serializer):
        command = serializers.CharField()
        explanation = serializers.CharField(allow_blank=True)
        model = serializers.CharField()
        project_id = serializers.CharField(allow_null=True)

    @extend_schema(request=SuggestInput, responses={200: SuggestOutput}, tags=["shell"],
                   description="One command and its explanation from the configured chat model, given the prompt, the "
                               "project's languages and its recent shell commands (`project_id` defaults to the "
                               "project you loaded last; none loaded: no project context). Never runs anything: "
                               "viewer+. No model configured → 503 `model_not_configured`; the model failing, "
                               "timing out or answering without a usable command → 502 `model_error`; more than "
                               f"{suggest.RATE_LIMIT} a minute → 429.")
    def post(self, request: Request) -> Response:
        data = self.SuggestInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project: Project | None
        if values.get("project_id"):
            project = project_get(user=request.user, project_id=values["project_id"])
        else:
            try:
                project = project_get(user=request.user, project_id=None)
            except NotFound:
                project = None
        result = suggest.command_suggest(user=request.user, prompt=values["prompt"], project=project)
        return Response(self.SuggestOutput({"command": result.command, "explanation": result.explanation,
                                     "model": result.model, "project_id": project.pk if project else None}).data)


urlpatterns: list[URLPattern] = [
    path("shell/ssh-hosts", SshHostsApi.as_view(), name="shell-ssh-hosts"),
    path("shell/ssh-run", SshRunApi.as_view(), name="shell-ssh-run"),
    path("shell/ssh-pull", SshPullApi.as_view(), name="shell-ssh-pull"),
    path("shell/suggest", SuggestApi.as_view(), name="shell-suggest"),
]
