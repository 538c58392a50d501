"""Reads of the vault with their access checks. Names and metadata only: values come out of services
(reveal, use), which audit them."""

import base64
import binascii
import re

from django.db.models import QuerySet

from accounts.models import Role, User, Workspace
from accounts.selectors import workspace_get
from api.errors import InvalidRequest, NotFound
from secrets_app.models import KeyState, Rotation, Secret

# Environment-variable-like, so a secret can be handed to a command as $NAME; it also keeps names
# apart from the API's own words (`rotate-master`).
NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "Use A-Z, 0-9 and _, not starting with a digit, at most 128 characters (like an environment variable)."


def name_check(name: object, *, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidRequest(f"Invalid secret name. {NAME_RULE}", details={field: [NAME_RULE]})
    return name


def secret_list(*, user: User, ws_id: str | None, after: str | None = None) -> tuple[Workspace, QuerySet[Secret]]:
    """Every member (viewers too) may list the names of a workspace's secrets."""
    workspace = workspace_get(user=user, ws_id=ws_id, min_role=Role.VIEWER)
    rows = Secret.objects.filter(workspace=workspace).order_by("name")
    if after:
        rows = rows.filter(name__gt=after)
    return workspace, rows.defer("wrapped_key", "ciphertext")


def secret_get(*, user: User, ws_id: str | None, name: str, min_role: Role = Role.ADMIN) -> Secret:
    """The row (with its ciphertext) for someone allowed `min_role`: outsiders not_found, lower roles
    forbidden, unknown names not_found."""
    name = name_check(name)
    workspace = workspace_get(user=user, ws_id=ws_id, min_role=min_role)
    secret = Secret.objects.filter(workspace=workspace, name=name).select_related("workspace").first()
    if secret is None:
        raise NotFound(f"No secret named {name} in this workspace.")
    return secret


def name_cursor_encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def name_cursor_decode(cursor: str) -> str:
    try:
        return name_check(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode(), field="cursor")
    except (binascii.Error, ValueError, UnicodeDecodeError, InvalidRequest) as exc:
        raise InvalidRequest("The cursor is malformed.", details={"cursor": ["malformed"]}) from exc


def rotation_active() -> Rotation | None:
    state = KeyState.objects.select_related("rotation").filter(pk=1).first()
    return state.rotation if state else None


def rotation_latest() -> Rotation | None:
    return Rotation.objects.order_by("-started_at").first()
