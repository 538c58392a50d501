"""The Project group of API.md (plus findings): thin views over services and selectors."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import workspace_get
from api.errors import InvalidRequest
from api.pagination import paginate
from projects import selectors, services
from projects.models import Finding
from projects.paths import clean_relative, list_dir
from projects.search import search_project
from streams.sse import SSE_RENDERERS, sse_cursor, sse_response


class ProjectStats(serializers.Serializer):
    files = serializers.IntegerField(source="files_count")
    bytes = serializers.IntegerField(source="bytes_total")
    symbols = serializers.IntegerField(source="symbols_count")
    findings = serializers.IntegerField(source="findings_count")


class ProjectOut(serializers.Serializer):
    id = serializers.CharField()
    ws_id = serializers.CharField(source="workspace_id")
    name = serializers.CharField()
    root = serializers.CharField()
    vcs = serializers.CharField()
    head = serializers.CharField()
    source = serializers.CharField()
    git_url = serializers.CharField()
    created_at = serializers.DateTimeField()
    indexed_at = serializers.DateTimeField(allow_null=True)
    stats = ProjectStats(source="*")


ProjectEnvelope = inline_serializer("ProjectEnvelope", {"project": ProjectOut()})
SSE = OpenApiResponse(response=OpenApiTypes.STR, description="text/event-stream: `progress {phase, done, total}` "
                      "events, then `end {status, files, symbols, findings, duration_ms}`")
PROJECT_PARAM = OpenApiParameter("project_id", str, description="Defaults to the project you loaded last.")


def project_id_of(request: Request) -> str | None:
    """The `project_id` of a request (query or body); None means the project loaded last."""
    value = request.query_params.get("project_id") or (
        request.data.get("project_id") if hasattr(request.data, "get") else None)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest("project_id must be a string.", details={"project_id": ["not a string"]})
    return value or None


class LoadApi(APIView):
    class LoadInput(serializers.Serializer):
        path = serializers.CharField(max_length=4096, required=False)
        git_url = serializers.CharField(max_length=2048, required=False)
        ws_id = serializers.CharField(max_length=40, required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if bool(attrs.get("path")) == bool(attrs.get("git_url")):
                raise serializers.ValidationError("Give exactly one of path or git_url.")
            return attrs

    @extend_schema(request=LoadInput, responses={200: ProjectEnvelope, 201: ProjectEnvelope}, tags=["project"],
                   description="Opens a folder under the projects root, or clones a git URL (https:// or file://). "
                               "Loading the same root twice in a workspace returns the existing project.")
    def post(self, request: Request) -> Response:
        data = self.LoadInput(data=request.data)
        data.is_valid(raise_exception=True)
        workspace = workspace_get(user=request.user, ws_id=data.validated_data.get("ws_id"), min_role=Role.MEMBER)
        if data.validated_data.get("path"):
            project, created = services.project_load_path(user=request.user, workspace=workspace,
                                                          path=data.validated_data["path"])
        else:
            project, created = services.project_load_git(user=request.user, workspace=workspace,
                                                         git_url=data.validated_data["git_url"])
        return Response({"project": ProjectOut(project).data},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ProjectGetApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM], responses={200: ProjectEnvelope}, tags=["project"])
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        return Response({"project": ProjectOut(project).data})


class RescanApi(APIView):
    renderer_classes = SSE_RENDERERS

    @extend_schema(request=inline_serializer("RescanInput", {"project_id": serializers.CharField(required=False)}),
                   parameters=[PROJECT_PARAM], responses={(200, "text/event-stream"): SSE}, tags=["project"])
    def post(self, request: Request) -> Any:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request), min_role=Role.MEMBER)
        job = services.rescan_start(user=request.user, project=project)
        return sse_response(job_id=job.pk, cursor=sse_cursor(request), headers={"X-Job-ID": job.pk})


class TreeEntry(serializers.Serializer):
    name = serializers.CharField()
    path = serializers.CharField()
    type = serializers.ChoiceField(["file", "dir"])
    size = serializers.IntegerField()
    has_children = serializers.BooleanField()


class TreeApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM, OpenApiParameter("path", str)], tags=["project"],
                   responses={200: inline_serializer("Tree", {"path": serializers.CharField(),
                                                             "entries": TreeEntry(many=True)})})
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        path = clean_relative(request.query_params.get("path", ""), allow_root=True)
        entries = list_dir(project.root, path)
        return Response({"path": path, "entries": TreeEntry(entries, many=True).data})


class FileApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM, OpenApiParameter("path", str, required=True)], tags=["project"],
                   responses={200: inline_serializer("FileContent", {
                       "path": serializers.CharField(), "size": serializers.IntegerField(),
                       "encoding": serializers.CharField(allow_null=True), "binary": serializers.BooleanField(),
                       "content": serializers.CharField(allow_null=True), "sha256": serializers.CharField(),
                       "language": serializers.CharField()})})
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        return Response(services.file_read(project=project, path=request.query_params.get("path", "")))


class SymbolOut(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    path = serializers.CharField()
    line = serializers.IntegerField()
    end_line = serializers.IntegerField(allow_null=True)
    container = serializers.CharField()
    language = serializers.CharField()


class SymbolsApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM, OpenApiParameter("q", str, required=True),
                               OpenApiParameter("mode", str, enum=["exact", "prefix", "substring"]),
                               OpenApiParameter("kind", str)], tags=["project"],
                   responses={200: inline_serializer("SymbolList", {"items": SymbolOut(many=True),
                                                                    "truncated": serializers.BooleanField()})})
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        rows, truncated = selectors.symbol_search(
            project=project, q=request.query_params.get("q", ""), mode=request.query_params.get("mode", "prefix"),
            kind=request.query_params.get("kind") or None)
        return Response({"items": SymbolOut(rows, many=True).data, "truncated": truncated})


def _flag(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidRequest(f"{name} must be true or false.", details={name: ["not a boolean"]})


class SearchHit(serializers.Serializer):
    path = serializers.CharField()
    line = serializers.IntegerField()
    column = serializers.IntegerField()
    preview = serializers.CharField()


class SearchApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM, OpenApiParameter("q", str, required=True),
                               OpenApiParameter("regex", bool), OpenApiParameter("case", bool),
                               OpenApiParameter("glob", str), OpenApiParameter("limit", int)], tags=["project"],
                   responses={200: inline_serializer("SearchResult", {
                       "items": SearchHit(many=True), "truncated": serializers.BooleanField(),
                       "took_ms": serializers.IntegerField()})})
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        try:
            limit = min(int(request.query_params.get("limit", 200)), 1000)
        except ValueError as exc:
            raise InvalidRequest("limit must be an integer.", details={"limit": ["not an integer"]}) from exc
        result = search_project(project=project, q=request.query_params.get("q", ""),
                                regex=_flag(request, "regex", False), case=_flag(request, "case", True),
                                glob=request.query_params.get("glob") or None, limit=max(limit, 1))
        return Response({"items": result.items, "truncated": result.truncated, "took_ms": result.took_ms})


class RecentApi(APIView):
    @extend_schema(tags=["project"], responses={200: inline_serializer("RecentList", {
        "items": inline_serializer("RecentItem", {"project": ProjectOut(), "opened_at": serializers.DateTimeField()},
                                   many=True)})})
    def get(self, request: Request) -> Response:
        rows = selectors.recent_list(user=request.user)[:50]
        return Response({"items": [{"project": ProjectOut(r.project).data,
                                    "opened_at": serializers.DateTimeField().to_representation(r.opened_at)}
                                   for r in rows]})


class FindingOut(serializers.Serializer):
    id = serializers.CharField()
    rule = serializers.CharField()
    severity = serializers.CharField()
    path = serializers.CharField()
    line = serializers.IntegerField()
    message = serializers.CharField()
    fingerprint = serializers.CharField()


class FindingsApi(APIView):
    @extend_schema(parameters=[PROJECT_PARAM, OpenApiParameter("severity", str, enum=Finding.Severity.values),
                               OpenApiParameter("rule", str), OpenApiParameter("path", str),
                               OpenApiParameter("cursor", str), OpenApiParameter("limit", int)], tags=["project"],
                   responses={200: inline_serializer("FindingList", {
                       "items": FindingOut(many=True), "next_cursor": serializers.CharField(allow_null=True)})})
    def get(self, request: Request) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id_of(request))
        severity = request.query_params.get("severity") or None
        if severity and severity not in Finding.Severity.values:
            raise InvalidRequest("Unknown severity.", details={"severity": [f"one of {Finding.Severity.values}"]})
        qs = selectors.finding_list(project=project, severity=severity, rule=request.query_params.get("rule") or None,
                                    path=request.query_params.get("path") or None)
        rows, next_cursor = paginate(qs, request, order_field="created_at")
        return Response({"items": FindingOut(rows, many=True).data, "next_cursor": next_cursor})
