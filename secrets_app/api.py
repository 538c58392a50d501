"""The Secrets group of API.md: thin views over selectors and services. Values appear in exactly one
answer, the reveal (admin+, audited, `Cache-Control: no-store`)."""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import workspace_get
from accounts.services import client_ip
from api.errors import Forbidden
from api.fields import StrictCharField
from api.pagination import page_limit
from secrets_app import selectors, services
from secrets_app.selectors import NAME_RULE

WS_PARAM = OpenApiParameter("ws_id", str, description="The workspace; your personal one when omitted.")
NAME_PARAM = OpenApiParameter("name", str, OpenApiParameter.PATH,
                              description=f"Pattern `{selectors.NAME_PATTERN}`. {NAME_RULE}")


def _ws_id(request: Request, body: dict[str, Any] | None = None) -> str | None:
    raw = (body or {}).get("ws_id") or request.query_params.get("ws_id")
    return raw or None


class SecretOut(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class SecretListApi(APIView):
    @extend_schema(
        parameters=[WS_PARAM, OpenApiParameter("cursor", str), OpenApiParameter("limit", int)], tags=["secrets"],
        operation_id="secrets_list",
        description="Names and versions of a workspace's secrets, by name (never values). Any member may "
                    "list, viewers too. Paginated with `cursor`/`limit`.",
        responses={200: inline_serializer("SecretList", {
            "ws_id": serializers.CharField(), "items": SecretOut(many=True),
            "next_cursor": serializers.CharField(allow_null=True)})})
    def get(self, request: Request) -> Response:
        cursor = request.query_params.get("cursor")
        after = selectors.name_cursor_decode(cursor) if cursor else None
        limit = page_limit(request)
        workspace, rows = selectors.secret_list(user=request.user, ws_id=request.query_params.get("ws_id") or None,
                                                after=after)
        page = list(rows[: limit + 1])
        next_cursor = selectors.name_cursor_encode(page[limit - 1].name) if len(page) > limit else None
        return Response({"ws_id": workspace.pk, "items": SecretOut(page[:limit], many=True).data,
                         "next_cursor": next_cursor})


class SecretDetailApi(APIView):
    class SetInput(serializers.Serializer):
        value = StrictCharField(trim_whitespace=False)
        ws_id = StrictCharField(required=False, allow_null=True, max_length=40)

    @property
    def required_scope(self) -> str | None:
        # A read-only API key lists names but never sees a value.
        return "write" if getattr(self, "request", None) is not None and self.request.method == "GET" else None

    @extend_schema(
        parameters=[NAME_PARAM, WS_PARAM], tags=["secrets"], operation_id="secrets_reveal",
        description="Reveals a value: needs the admin role in the workspace (and, with an API key, the `write` "
                    "scope). Audited (`secret.reveal`: who, when, which name; never the value).",
        responses={200: inline_serializer("SecretReveal", {
            "name": serializers.CharField(), "value": serializers.CharField(), "version": serializers.IntegerField(),
            "ws_id": serializers.CharField(), "updated_at": serializers.DateTimeField()})})
    def get(self, request: Request, name: str) -> Response:
        secret = selectors.secret_get(user=request.user, ws_id=_ws_id(request), name=name)
        value = services.secret_reveal(user=request.user, secret=secret, ip=client_ip(request._request))
        body = {"name": secret.name, "value": value, "version": secret.version, "ws_id": secret.workspace_id,
                "updated_at": serializers.DateTimeField().to_representation(secret.updated_at)}
        return Response(body, headers={"Cache-Control": "no-store"})

    @extend_schema(
        parameters=[NAME_PARAM], request=SetInput, tags=["secrets"], operation_id="secrets_set",
        description="Creates (201) or replaces (200, next version) a secret; admin+. The value is a non-empty "
                    "string without NUL of at most KF_SECRET_MAX_BYTES bytes (larger: 413 payload_too_large). "
                    "`ws_id` in the body or the query.",
        responses={201: SecretOut, 200: SecretOut})
    def post(self, request: Request, name: str) -> Response:
        selectors.name_check(name)
        data = self.SetInput(data=request.data)
        data.is_valid(raise_exception=True)
        workspace = workspace_get(user=request.user, ws_id=_ws_id(request, data.validated_data), min_role=Role.ADMIN)
        secret, created = services.secret_set(user=request.user, workspace=workspace, name=name,
                                              value=data.validated_data["value"], ip=client_ip(request._request))
        return Response(SecretOut(secret).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(parameters=[NAME_PARAM, WS_PARAM], tags=["secrets"], responses={204: None},
                   operation_id="secrets_delete",
                   description="Deletes a secret (all of it); admin+. Audited.")
    def delete(self, request: Request, name: str) -> Response:
        secret = selectors.secret_get(user=request.user, ws_id=_ws_id(request), name=name)
        services.secret_delete(user=request.user, secret=secret, ip=client_ip(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RotationOut(serializers.Serializer):
    key_version = serializers.IntegerField(source="target_version", allow_null=True)
    rewrapped = serializers.IntegerField()
    total = serializers.IntegerField()
    status = serializers.CharField()
    rotation_id = serializers.CharField(source="pk")
    job_id = serializers.CharField(allow_blank=True)
    from_version = serializers.IntegerField(allow_null=True)
    retired = serializers.ListField(child=serializers.IntegerField())
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_blank=True)


class RotationStartedOut(RotationOut):
    started = serializers.BooleanField(help_text="false: a rotation was already running; this is its progress")


class RotateMasterApi(APIView):
    required_scope = "admin"

    @extend_schema(
        request=None, tags=["secrets"], operation_id="secrets_rotate_master",
        responses={202: RotationStartedOut},
        description=(
            "Installation-wide master key rotation. **Who:** operators only, i.e. staff or superuser accounts "
            "(others: 403 forbidden); with an API key, the `admin` scope. **What:** adds a new master key version "
            "(to the key file; with KF_MASTER_KEY set, uses its newest version: add it to the environment "
            "first), makes it the one new secrets use, then re-wraps every data key in small idempotent batches in "
            "the background (a Celery task, or the in-process runner). **Answer:** 202 at once with "
            "`{key_version, rewrapped, total, status, rotation_id, job_id, started}`: the progress so far; follow "
            "`/api/jobs/<job_id>/stream` (`progress {done, total}` events, then `end`). One rotation at a time: "
            "while one runs, calling again returns it (`started: false`), and resumes it if it stalled. The old "
            "version is retired once no secret uses it. An interrupted rotation loses nothing; a rerun finishes."))
    def post(self, request: Request) -> Response:
        if not services.rotation_allowed(request.user):
            raise Forbidden("Only an operator (a staff account) may rotate the master key.")
        rotation, started = services.master_key_rotation_start(user=request.user, ip=client_ip(request._request))
        rotation.started = started
        return Response(RotationStartedOut(rotation).data, status=status.HTTP_202_ACCEPTED)
