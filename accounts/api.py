"""The Auth and Account groups of API.md. Each view: input serializer → one service/selector → output."""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import ApiKey, DataExport, User
from accounts.permissions import (
    AccountNotPendingDeletion,
    ApiKeyScope,
    SessionOnly,
    SessionWithRecentLogin,
)
from api.errors import NotFound
from api.pagination import paginate

# --- shapes --------------------------------------------------------------------------------------


class UserOut(serializers.Serializer):
    id = serializers.CharField()
    email = serializers.EmailField()
    name = serializers.CharField()
    email_verified = serializers.SerializerMethodField()
    pending_email = serializers.SerializerMethodField()
    mfa_enabled = serializers.SerializerMethodField()
    avatar_url = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    delete_after = serializers.DateTimeField(allow_null=True)

    def get_email_verified(self, user: User) -> bool:
        return selectors.email_verified(user)

    def get_pending_email(self, user: User) -> str | None:
        return selectors.pending_email(user)

    def get_mfa_enabled(self, user: User) -> bool:
        return services.mfa_enabled(user)

    def get_avatar_url(self, user: User) -> str | None:
        return reverse("account-avatar", args=[user.avatar]) if user.avatar else None


def user_body(user: User) -> dict[str, Any]:
    return {"user": UserOut(user).data}


UserEnvelope = inline_serializer("UserEnvelope", {"user": UserOut()})


def _list_of(name: str, item: serializers.Serializer) -> serializers.Serializer:
    return inline_serializer(name, {"items": item.__class__(many=True),
                                    "next_cursor": serializers.CharField(allow_null=True)})


class PublicAuthView(APIView):
    """Endpoints used before signing in: no session, JSON bodies only (a cross-site form cannot send
    JSON without a preflight, which is what keeps them safe from login CSRF)."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"


# --- Auth ----------------------------------------------------------------------------------------


class RegisterApi(PublicAuthView):
    class RegisterInput(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=512, trim_whitespace=False)
        name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")

    @extend_schema(request=RegisterInput, responses={201: UserEnvelope}, tags=["auth"])
    def post(self, request: Request) -> Response:
        data = self.RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_register(**data.validated_data, ip=services.client_ip(request))
        return Response(user_body(user), status=status.HTTP_201_CREATED)


class LoginApi(PublicAuthView):
    class LoginInput(serializers.Serializer):
        email = serializers.CharField(max_length=254)
        password = serializers.CharField(max_length=512, trim_whitespace=False)
        otp = serializers.CharField(max_length=32, required=False, allow_blank=True)

    @extend_schema(request=LoginInput, responses={200: UserEnvelope}, tags=["auth"],
                   description="Sets the session cookie. 401 `mfa_required` when a code is needed or wrong.")
    def post(self, request: Request) -> Response:
        data = self.LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.login_attempt(**data.validated_data, ip=services.client_ip(request))
        services.session_login(request=request._request, user=user)
        return Response(user_body(user))


class VerifyApi(PublicAuthView):
    @extend_schema(parameters=[OpenApiParameter("token", str, required=True)], tags=["auth"],
                   responses={200: inline_serializer("Verified", {"verified": serializers.BooleanField(),
                                                                 "email": serializers.EmailField()})})
    def get(self, request: Request) -> Response:
        user = services.email_verify(token=request.query_params.get("token", ""))
        return Response({"verified": True, "email": user.email})


class ResendVerificationApi(PublicAuthView):
    class ResendVerificationInput(serializers.Serializer):
        email = serializers.EmailField(max_length=254)

    @extend_schema(request=ResendVerificationInput, responses={202: inline_serializer("Accepted", {"accepted": serializers.BooleanField()})},
                   tags=["auth"], description="Sends a new link if the address is registered and unverified.")
    def post(self, request: Request) -> Response:
        data = self.ResendVerificationInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.email_verification_resend(email=data.validated_data["email"], ip=services.client_ip(request))
        return Response({"accepted": True}, status=status.HTTP_202_ACCEPTED)


class ForgotApi(PublicAuthView):
    class ForgotInput(serializers.Serializer):
        email = serializers.EmailField(max_length=254)

    @extend_schema(request=ForgotInput, responses={202: inline_serializer("ForgotAccepted", {"accepted": serializers.BooleanField()})},
                   tags=["auth"], description="Always 202: whether the account exists is not revealed.")
    def post(self, request: Request) -> Response:
        data = self.ForgotInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_forgot(email=data.validated_data["email"], ip=services.client_ip(request))
        return Response({"accepted": True}, status=status.HTTP_202_ACCEPTED)


class ResetApi(PublicAuthView):
    class ResetInput(serializers.Serializer):
        token = serializers.CharField(max_length=300)
        password = serializers.CharField(max_length=512, trim_whitespace=False)

    @extend_schema(request=ResetInput, responses={200: inline_serializer("ResetDone", {"reset": serializers.BooleanField()})},
                   tags=["auth"])
    def post(self, request: Request) -> Response:
        data = self.ResetInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_reset(**data.validated_data, ip=services.client_ip(request))
        return Response({"reset": True})


class LogoutApi(APIView):
    permission_classes = [AllowAny]
    allowed_during_deletion = True

    @extend_schema(request=None, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        services.session_logout(request=request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MfaSetupApi(APIView):
    permission_classes = [IsAuthenticated, ApiKeyScope, AccountNotPendingDeletion, SessionWithRecentLogin]

    @extend_schema(request=None, tags=["auth"], responses={200: inline_serializer("MfaSetup", {
        "secret": serializers.CharField(), "otpauth_uri": serializers.CharField(), "qr_svg": serializers.CharField()})})
    def post(self, request: Request) -> Response:
        return Response(services.mfa_setup(user=request.user, ip=services.client_ip(request)))


class MfaVerifyApi(APIView):
    permission_classes = [IsAuthenticated, ApiKeyScope, AccountNotPendingDeletion, SessionWithRecentLogin]

    class MfaVerifyInput(serializers.Serializer):
        code = serializers.CharField(max_length=16)

    @extend_schema(request=MfaVerifyInput, tags=["auth"], responses={200: inline_serializer("MfaVerified", {
        "mfa_enabled": serializers.BooleanField(), "recovery_codes": serializers.ListField(child=serializers.CharField())})})
    def post(self, request: Request) -> Response:
        data = self.MfaVerifyInput(data=request.data)
        data.is_valid(raise_exception=True)
        codes = services.mfa_verify(user=request.user, code=data.validated_data["code"], ip=services.client_ip(request))
        return Response({"mfa_enabled": True, "recovery_codes": codes})


class MfaDisableApi(APIView):
    permission_classes = [IsAuthenticated, ApiKeyScope, AccountNotPendingDeletion, SessionWithRecentLogin]

    class MfaDisableInput(serializers.Serializer):
        password = serializers.CharField(max_length=512, trim_whitespace=False)
        code = serializers.CharField(max_length=32)

    @extend_schema(request=MfaDisableInput, tags=["auth"],
                   responses={200: inline_serializer("MfaDisabled", {"mfa_enabled": serializers.BooleanField()})})
    def post(self, request: Request) -> Response:
        data = self.MfaDisableInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.mfa_disable(user=request.user, **data.validated_data, ip=services.client_ip(request))
        return Response({"mfa_enabled": False})


# --- Account -------------------------------------------------------------------------------------


class MeApi(APIView):
    allowed_during_deletion = True

    @extend_schema(responses={200: UserEnvelope}, tags=["account"])
    def get(self, request: Request) -> Response:
        return Response(user_body(request.user))


class SessionOut(serializers.Serializer):
    id = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    current = serializers.SerializerMethodField()

    def get_current(self, obj: Any) -> bool:
        return obj.session_key == self.context.get("session_key")


class SessionsApi(APIView):
    @extend_schema(responses={200: _list_of("SessionList", SessionOut())}, tags=["account"])
    def get(self, request: Request) -> Response:
        rows = selectors.session_list(user=request.user)
        ctx = {"session_key": request._request.session.session_key}
        return Response({"items": SessionOut(rows, many=True, context=ctx).data, "next_cursor": None})


class SessionRevokeApi(APIView):
    @extend_schema(request=None, responses={204: None}, tags=["account"])
    def post(self, request: Request, sid: str) -> Response:
        services.session_revoke(user=request.user, session_id=sid, ip=services.client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChangePasswordApi(APIView):
    permission_classes = [IsAuthenticated, ApiKeyScope, AccountNotPendingDeletion, SessionOnly]

    class ChangePasswordInput(serializers.Serializer):
        old_password = serializers.CharField(max_length=512, trim_whitespace=False)
        new_password = serializers.CharField(max_length=512, trim_whitespace=False)

    @extend_schema(request=ChangePasswordInput, responses={200: inline_serializer("PasswordChanged", {"changed": serializers.BooleanField()})},
                   tags=["account"], description="Signs out every other session.")
    def post(self, request: Request) -> Response:
        data = self.ChangePasswordInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_change(request=request._request, user=request.user, **data.validated_data)
        return Response({"changed": True})


class UpdateProfileApi(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    class UpdateProfileInput(serializers.Serializer):
        name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        email = serializers.EmailField(max_length=254, required=False)
        avatar = serializers.FileField(required=False, allow_empty_file=False)

    @extend_schema(request={"application/json": UpdateProfileInput, "multipart/form-data": UpdateProfileInput}, responses={200: UserEnvelope},
                   tags=["account"], description="A new email is used for sign-in only after it is verified.")
    def post(self, request: Request) -> Response:
        data = self.UpdateProfileInput(data=request.data)
        data.is_valid(raise_exception=True)
        if "email" in data.validated_data:
            SessionWithRecentLogin().has_permission(request, self)
        user = services.profile_update(user=request.user, **data.validated_data, ip=services.client_ip(request))
        return Response(user_body(user))


class AvatarApi(APIView):
    @extend_schema(responses={(200, "image/png"): bytes}, tags=["account"])
    def get(self, request: Request, name: str) -> HttpResponse:
        user = User.objects.filter(avatar=name).first() if name else None
        if user is None:
            raise NotFound("No such avatar.")
        path = settings.MEDIA_ROOT / "avatars" / user.avatar
        if not path.exists():
            raise NotFound("No such avatar.")
        response = FileResponse(path.open("rb"), content_type="image/png")
        response["Cache-Control"] = "private, max-age=86400"
        return response


DeleteAfter = inline_serializer("DeleteAfter", {"delete_after": serializers.DateTimeField(allow_null=True)})


class RequestDeleteApi(APIView):
    permission_classes = [IsAuthenticated, ApiKeyScope, AccountNotPendingDeletion, SessionOnly]

    class RequestDeleteInput(serializers.Serializer):
        password = serializers.CharField(max_length=512, trim_whitespace=False)

    @extend_schema(request=RequestDeleteInput, responses={200: DeleteAfter}, tags=["account"])
    def post(self, request: Request) -> Response:
        data = self.RequestDeleteInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.delete_request(user=request.user, password=data.validated_data["password"],
                                       ip=services.client_ip(request))
        return Response({"delete_after": serializers.DateTimeField().to_representation(user.delete_after)})


class CancelDeleteApi(APIView):
    allowed_during_deletion = True

    @extend_schema(request=None, responses={200: DeleteAfter}, tags=["account"])
    def post(self, request: Request) -> Response:
        services.delete_cancel(user=request.user, ip=services.client_ip(request))
        return Response({"delete_after": None})


EXPORT_SALT = "kf.export-download"


def export_body(export: DataExport | None) -> dict[str, Any]:
    if export is None:
        return {"status": "none"}
    body: dict[str, Any] = {"id": export.pk, "status": export.status,
                            "created_at": serializers.DateTimeField().to_representation(export.created_at)}
    if export.status == DataExport.Status.READY:
        token = signing.dumps({"e": export.pk, "u": export.user_id}, salt=EXPORT_SALT)
        expires = timezone.now() + timedelta(seconds=settings.KF_EXPORT_LINK_SECONDS)
        body["url"] = f"{reverse('account-export-download')}?token={token}"
        body["expires_at"] = serializers.DateTimeField().to_representation(expires)
        body["size"] = export.size
    return body


ExportStatus = inline_serializer("ExportStatus", {
    "id": serializers.CharField(), "status": serializers.ChoiceField(["pending", "ready", "failed"]),
    "url": serializers.CharField(required=False), "expires_at": serializers.DateTimeField(required=False),
})


class ExportDataApi(APIView):
    @extend_schema(responses={200: ExportStatus}, tags=["account"],
                   description="Starts building an export if none is pending or recent; then reports on it.")
    def get(self, request: Request) -> Response:
        export = services.export_current(user=request.user) or services.export_start(
            user=request.user, ip=services.client_ip(request))
        return Response(export_body(export))

    @extend_schema(request=None, responses={202: ExportStatus}, tags=["account"],
                   description="Starts a fresh export (unless one is already being built).")
    def post(self, request: Request) -> Response:
        export = services.export_start(user=request.user, ip=services.client_ip(request))
        return Response(export_body(export), status=status.HTTP_202_ACCEPTED)


class ExportDownloadApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("token", str, required=True)],
                   responses={(200, "application/zip"): bytes}, tags=["account"])
    def get(self, request: Request) -> HttpResponse:
        try:
            claims = signing.loads(request.query_params.get("token", ""), salt=EXPORT_SALT,
                                   max_age=settings.KF_EXPORT_LINK_SECONDS)
        except signing.BadSignature as exc:  # SignatureExpired is a BadSignature
            raise NotFound("This download link is invalid or has expired.") from exc
        if claims.get("u") != request.user.pk:
            raise NotFound("This download link is invalid or has expired.")
        export = DataExport.objects.filter(pk=claims.get("e"), user=request.user,
                                           status=DataExport.Status.READY).first()
        if export is None or not services.export_path(export).exists():
            raise NotFound("This export is no longer available.")
        return FileResponse(services.export_path(export).open("rb"), as_attachment=True,
                            filename=f"kf-export-{export.created_at:%Y%m%d}.zip", content_type="application/zip")


class AuditOut(serializers.Serializer):
    id = serializers.CharField()
    at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.SerializerMethodField()
    target = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    meta = serializers.DictField()

    def get_actor(self, obj: Any) -> str | None:
        return obj.actor_id or None


class AuditListApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("cursor", str), OpenApiParameter("limit", int)],
                   responses={200: _list_of("AuditList", AuditOut())}, tags=["account"])
    def get(self, request: Request) -> Response:
        rows, next_cursor = paginate(selectors.audit_list(user=request.user), request, order_field="at")
        return Response({"items": AuditOut(rows, many=True).data, "next_cursor": next_cursor})


class ApiKeyOut(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)


class ApiKeysApi(APIView):
    class ApiKeysInput(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(child=serializers.ChoiceField(ApiKey.Scope.values), min_length=1,
                                       max_length=3, required=False, default=["read"])
        expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)

    def get_permissions(self) -> list[Any]:
        perms = [IsAuthenticated(), ApiKeyScope(), AccountNotPendingDeletion()]
        if self.request.method == "POST":
            perms.append(SessionWithRecentLogin())
        return perms

    @extend_schema(responses={200: _list_of("ApiKeyList", ApiKeyOut())}, tags=["account"])
    def get(self, request: Request) -> Response:
        rows = selectors.api_key_list(user=request.user)
        return Response({"items": ApiKeyOut(rows, many=True).data, "next_cursor": None})

    @extend_schema(request=ApiKeysInput, tags=["account"], description="`key` is shown this once.",
                   responses={201: inline_serializer("ApiKeyCreated", {**ApiKeyOut().get_fields(),
                                                                       "key": serializers.CharField()})})
    def post(self, request: Request) -> Response:
        data = self.ApiKeysInput(data=request.data)
        data.is_valid(raise_exception=True)
        key, raw = services.api_key_create(user=request.user, name=data.validated_data["name"],
                                           scopes=data.validated_data["scopes"],
                                           expires_in_days=data.validated_data.get("expires_in_days"),
                                           ip=services.client_ip(request))
        return Response({**ApiKeyOut(key).data, "key": raw}, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    @extend_schema(responses={204: None}, tags=["account"])
    def delete(self, request: Request, key_id: str) -> Response:
        services.api_key_revoke(user=request.user, key_id=key_id, ip=services.client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkspaceOut(serializers.Serializer):
    id = serializers.CharField(source="workspace.id")
    name = serializers.CharField(source="workspace.name")
    personal = serializers.BooleanField(source="workspace.personal")
    role = serializers.CharField()
    created_at = serializers.DateTimeField(source="workspace.created_at")


class WorkspacesApi(APIView):
    @extend_schema(responses={200: _list_of("WorkspaceList", WorkspaceOut())}, tags=["account"])
    def get(self, request: Request) -> Response:
        rows = selectors.workspace_list(user=request.user)
        return Response({"items": WorkspaceOut(rows, many=True).data, "next_cursor": None})
