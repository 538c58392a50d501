from typing import TYPE_CHECKING

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.models import ApiKey
from accounts.services import session_is_recent
from api.errors import Forbidden

if TYPE_CHECKING:  # rest_framework.views imports the permission classes from settings
    from rest_framework.views import APIView

_IMPLIED = {"read": {"read", "write", "admin"}, "write": {"write", "admin"}, "admin": {"admin"}}


class ApiKeyScope(BasePermission):
    """An API key may do what its scopes allow: read → safe methods, write → changes, admin → views
    that declare `required_scope = "admin"`. Sessions are not limited by scopes."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return True
        needed = getattr(view, "required_scope", None) or ("read" if request.method in SAFE_METHODS else "write")
        if not _IMPLIED[needed] & set(key.scopes):
            raise Forbidden(f"This API key lacks the '{needed}' scope.", details={"required_scope": needed})
        return True


class AccountNotPendingDeletion(BasePermission):
    """During the deletion grace period an account can only cancel the deletion (and sign out)."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        user = request.user
        if user.is_authenticated and user.delete_after and not getattr(view, "allowed_during_deletion", False):
            raise Forbidden("This account is scheduled for deletion; cancel the deletion to use it.",
                            details={"reason": "account_pending_deletion", "delete_after": user.delete_after.isoformat()})
        return True


class SessionOnly(BasePermission):
    """Account-changing actions that an API key must never perform."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        if isinstance(request.auth, ApiKey):
            raise Forbidden("API keys cannot do this; use a signed-in session.", details={"reason": "session_required"})
        return True


class SessionWithRecentLogin(SessionOnly):
    """Email, MFA and key creation: a browser session that signed in recently, never a key."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        super().has_permission(request, view)
        if not session_is_recent(request=request._request):
            raise Forbidden("Sign in again to do this.", details={"reason": "recent_login_required"})
        return True
