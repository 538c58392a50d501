"""Jobs seen from outside: status, the event stream to (re)attach to, and cancel."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from streams.selectors import job_get
from streams.services import job_cancel
from streams.sse import SSE_RENDERERS, sse_cursor, sse_response


class JobOut(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    ws_id = serializers.CharField(source="workspace_id")
    project_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    last_seq = serializers.IntegerField()
    result = serializers.DictField()


class JobApi(APIView):
    @extend_schema(responses={200: JobOut}, tags=["jobs"])
    def get(self, request: Request, job_id: str) -> Response:
        return Response(JobOut(job_get(user=request.user, job_id=job_id)).data)


class JobStreamApi(APIView):
    renderer_classes = SSE_RENDERERS

    @extend_schema(parameters=[OpenApiParameter("cursor", int, description="Events after this seq "
                                                "(or the Last-Event-ID header).")],
                   responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="SSE")},
                   tags=["jobs"])
    def get(self, request: Request, job_id: str) -> Any:
        job = job_get(user=request.user, job_id=job_id)
        return sse_response(job_id=job.pk, cursor=sse_cursor(request))


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={202: JobOut}, tags=["jobs"])
    def post(self, request: Request, job_id: str) -> Response:
        job = job_get(user=request.user, job_id=job_id, min_role=Role.MEMBER)
        job_cancel(job=job)
        job.refresh_from_db()
        return Response(JobOut(job).data, status=status.HTTP_202_ACCEPTED)
