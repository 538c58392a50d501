"""Reads with their access checks. Objects outside the caller's reach are not_found; forbidden only
when the caller can see the object but lacks the role."""

from typing import Any

from allauth.account.models import EmailAddress
from django.db.models import QuerySet

from accounts.models import ROLE_RANK, ApiKey, AuditRecord, Membership, Role, User, UserSession, Workspace
from api.errors import Forbidden, NotFound


def membership_get(*, user: User, ws_id: str | None) -> Membership:
    """The caller's membership of `ws_id` (their personal workspace when None)."""
    memberships = Membership.objects.select_related("workspace").filter(user=user)
    membership = (
        memberships.filter(workspace__personal=True).order_by("created_at").first()
        if ws_id is None
        else memberships.filter(workspace_id=ws_id).first()
    )
    if membership is None:
        raise NotFound("No such workspace.")
    return membership


def workspace_get(*, user: User, ws_id: str | None, min_role: Role = Role.VIEWER) -> Workspace:
    membership = membership_get(user=user, ws_id=ws_id)
    if ROLE_RANK[Role(membership.role)] < ROLE_RANK[min_role]:
        raise Forbidden(f"This needs the {min_role.value} role in this workspace.")
    return membership.workspace


def workspace_object_check(*, user: User, obj: Any, kind: str, min_role: Role = Role.VIEWER) -> Any:
    """The one access check for objects that belong to a workspace: `obj` (None if it does not exist)
    comes back if the caller may see it; otherwise not_found, or forbidden for a too-low role."""
    if obj is None:
        raise NotFound(f"No such {kind}.")
    try:
        workspace_get(user=user, ws_id=obj.workspace_id, min_role=min_role)
    except NotFound as exc:
        raise NotFound(f"No such {kind}.") from exc
    return obj


def workspace_list(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("workspace").filter(user=user).order_by("created_at")


def email_verified(user: User) -> bool:
    return EmailAddress.objects.filter(user=user, email=user.email, verified=True).exists()


def pending_email(user: User) -> str | None:
    address = EmailAddress.objects.filter(user=user, verified=False).exclude(email=user.email).first()
    return address.email if address else None


def session_list(*, user: User) -> QuerySet[UserSession]:
    return UserSession.objects.filter(user=user).order_by("-last_seen_at")


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created_at")


def audit_list(*, user: User) -> QuerySet[AuditRecord]:
    return AuditRecord.objects.filter(subject=user)
