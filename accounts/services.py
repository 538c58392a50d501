"""Every write of the accounts app: registration, login, MFA, sessions, keys, profile, deletion, export.

Functions are keyword-only and named <entity>_<action>. They raise api.errors; views stay thin.
"""

import hashlib
import io
import json
import secrets
import zipfile
from base64 import b32encode
from datetime import timedelta
from pathlib import Path
from typing import Any

import qrcode
import qrcode.image.svg
from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth import login as django_login
from django.contrib.auth import logout as django_logout
from django.contrib.auth import password_validation, update_session_auth_hash
from django.contrib.auth.tokens import default_token_generator
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode
from django_otp.plugins.otp_totp.models import TOTPDevice
from PIL import Image, UnidentifiedImageError

from accounts import apikeys, ratelimit
from accounts.models import (
    ApiKey,
    AuditRecord,
    DataExport,
    EmailToken,
    Membership,
    RecoveryCode,
    Role,
    User,
    UserSession,
    Workspace,
)
from api.errors import Conflict, Forbidden, InvalidRequest, MfaRequired, NotFound, PayloadTooLarge, RateLimited, Unauthenticated
from api.tasking import enqueue

BAD_CREDENTIALS = "Invalid email or password."


# --- request facts -------------------------------------------------------------------------------

def client_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- audit ---------------------------------------------------------------------------------------

def audit_record(*, action: str, actor: User | None = None, subject: User | None = None,
                 ip: str | None = None, target: str = "", meta: dict[str, Any] | None = None,
                 workspace: Workspace | None = None) -> AuditRecord:
    """Append to the audit log. Callers pass identifiers and facts, never secret values."""
    return AuditRecord.objects.create(
        action=action,
        actor=actor,
        actor_email=actor.email if actor else "",
        subject=subject if subject is not None else actor,
        workspace=workspace,
        target=target[:200],
        ip=ip,
        meta=meta or {},
    )


# --- email ---------------------------------------------------------------------------------------

def _email_send(*, to: str, template: str, context: dict[str, Any]) -> None:
    subject, _, body = render_to_string(template, context).partition("\n")
    transaction.on_commit(lambda: send_mail(subject.strip(), body.strip() + "\n", None, [to]))


def email_verification_send(*, user: User, email: str) -> None:
    token = secrets.token_urlsafe(32)
    EmailToken.objects.create(
        user=user,
        purpose=EmailToken.Purpose.VERIFY,
        email=email,
        token_hash=_sha256(token),
        expires_at=timezone.now() + timedelta(hours=settings.KF_VERIFY_TOKEN_HOURS),
    )
    _email_send(
        to=email,
        template="emails/verify.txt",
        context={"user": user, "url": f"{settings.KF_BASE_URL}/verify?token={token}",
                 "hours": settings.KF_VERIFY_TOKEN_HOURS},
    )


def email_verification_resend(*, email: str, ip: str | None) -> None:
    """Sends a fresh link if the address is registered and unverified; says nothing either way."""
    email = email.strip().lower()
    ratelimit.hit_and_check("verify-email", email, limit=settings.KF_EMAIL_REQUESTS_PER_HOUR, window=3600)
    address = EmailAddress.objects.filter(email__iexact=email, verified=False).select_related("user").first()
    if address is not None:
        email_verification_send(user=address.user, email=address.email)


@transaction.atomic
def email_verify(*, token: str) -> User:
    row = (
        EmailToken.objects.select_for_update()
        .select_related("user")
        .filter(token_hash=_sha256(token), purpose=EmailToken.Purpose.VERIFY)
        .first()
    )
    if row is None or row.used_at is not None or row.expires_at <= timezone.now():
        raise InvalidRequest("This verification link is invalid, used or expired.",
                             details={"token": ["invalid or expired"]})
    row.used_at = timezone.now()
    row.save(update_fields=["used_at"])
    user = User.objects.select_for_update().get(pk=row.user_id)
    if row.email != user.email:
        if User.objects.filter(email=row.email).exclude(pk=user.pk).exists():
            raise Conflict("That email address now belongs to another account.")
        old = user.email
        user.email = row.email
        user.save(update_fields=["email"])
        EmailAddress.objects.filter(user=user).exclude(email=row.email).delete()
        EmailAddress.objects.update_or_create(user=user, email=row.email,
                                              defaults={"verified": True, "primary": True})
        audit_record(action="email_change", actor=user, target=user.email, meta={"old_email": old})
    else:
        EmailAddress.objects.update_or_create(user=user, email=row.email,
                                              defaults={"verified": True, "primary": True})
        audit_record(action="email_verify", actor=user, target=user.email)
    return user


# --- registration --------------------------------------------------------------------------------

def _password_check(password: str, user: User, field: str = "password") -> None:
    try:
        password_validation.validate_password(password, user=user)
    except ValidationError as exc:
        raise InvalidRequest(exc.messages[0], details={field: list(exc.messages)}) from exc


def workspace_create(*, owner: User, name: str, personal: bool = False) -> Workspace:
    workspace = Workspace.objects.create(name=name, personal=personal)
    Membership.objects.create(user=owner, workspace=workspace, role=Role.OWNER)
    return workspace


@transaction.atomic
def user_register(*, email: str, password: str, name: str = "", ip: str | None = None) -> User:
    email = email.strip().lower()
    candidate = User(email=email, name=name)
    _password_check(password, candidate)
    if User.objects.filter(email=email).exists():
        raise InvalidRequest("An account with this email already exists.",
                             details={"email": ["already registered"]})
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
    except IntegrityError as exc:  # lost a race with a concurrent registration
        raise InvalidRequest("An account with this email already exists.",
                             details={"email": ["already registered"]}) from exc
    EmailAddress.objects.create(user=user, email=email, primary=True, verified=False)
    workspace_create(owner=user, name=f"{name or email.split('@')[0]}'s workspace", personal=True)
    audit_record(action="register", actor=user, ip=ip, target=email)
    email_verification_send(user=user, email=email)
    return user


# --- login, logout -------------------------------------------------------------------------------

def _login_window() -> int:
    return settings.KF_LOGIN_FAILURE_WINDOW_SECONDS


def _login_failure(*, email: str, ip: str | None, user: User | None, reason: str) -> None:
    window = _login_window()
    ratelimit.hit("login-fail-account", email, window=window)
    if ip:
        ratelimit.hit("login-fail-ip", ip, window=window)
    audit_record(action="login_failed", actor=None, subject=user, ip=ip, target=email,
                 meta={"reason": reason})


def otp_check(*, user: User, code: str) -> bool:
    """A TOTP code (never the same time step twice) or an unused recovery code. Must run in a
    transaction: the device row is locked so two requests cannot both spend one code."""
    code = (code or "").strip().replace(" ", "")
    if not code:
        return False
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
    if device is None:
        return False
    allowed, info = device.verify_is_allowed()
    if not allowed:
        wait = 30
        if info and info.get("locked_until"):
            wait = int((info["locked_until"] - timezone.now()).total_seconds()) + 1
        raise RateLimited("Too many wrong codes; wait before trying again.", retry_after=wait)
    if code.isdigit() and len(code) == device.digits:
        return device.verify_token(code)
    normalized = code.replace("-", "").lower()
    recovery = (
        RecoveryCode.objects.select_for_update()
        .filter(user=user, code_hash=_sha256(normalized), used_at__isnull=True)
        .first()
    )
    if recovery is None:
        device.throttle_increment(commit=True)
        return False
    recovery.used_at = timezone.now()
    recovery.save(update_fields=["used_at"])
    audit_record(action="mfa_recovery_code_used", actor=user)
    return True


def mfa_enabled(user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def login_attempt(*, email: str, password: str, otp: str | None = None, ip: str | None) -> User:
    """Checks credentials and the second factor. Raises 429 past the failure limits, 401 otherwise."""
    email = (email or "").strip().lower()
    window = _login_window()
    ratelimit.check("login-fail-account", email, limit=settings.KF_LOGIN_FAILURES_PER_ACCOUNT, window=window,
                    message="Too many failed sign-ins for this account; try again later.")
    if ip:
        ratelimit.check("login-fail-ip", ip, limit=settings.KF_LOGIN_FAILURES_PER_IP, window=window,
                        message="Too many failed sign-ins from this address; try again later.")
    user = authenticate(None, email=email, password=password)
    if user is None:
        _login_failure(email=email, ip=ip, user=User.objects.filter(email=email).first(), reason="password")
        raise Unauthenticated(BAD_CREDENTIALS)
    if not EmailAddress.objects.filter(user=user, email=user.email, verified=True).exists():
        raise Forbidden("Verify your email address before signing in; we sent you a link.",
                        details={"reason": "email_unverified"})
    if mfa_enabled(user):
        if not otp:
            raise MfaRequired("Enter the code from your authenticator app.")
        with transaction.atomic():  # commits the spent code, or the throttle's count of a wrong one
            accepted = otp_check(user=user, code=otp)
        if not accepted:
            _login_failure(email=email, ip=ip, user=user, reason="otp")
            raise MfaRequired("That code is not valid (codes are accepted once).")
    ratelimit.reset("login-fail-account", email, window)
    return user


@transaction.atomic
def session_login(*, request: HttpRequest, user: User) -> UserSession:
    previous_key = request.session.session_key
    django_login(request, user, backend="accounts.backends.EmailBackend")
    if previous_key and request.session.session_key == previous_key:
        # Django keeps the key when the same user signs in again; a fresh key makes it "recent".
        request.session.cycle_key()
    request.session.save()
    if previous_key:
        UserSession.objects.filter(session_key=previous_key).delete()
    tracked = UserSession.objects.create(
        user=user,
        session_key=request.session.session_key,
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", "")[:300],
    )
    audit_record(action="login", actor=user, ip=client_ip(request), meta={"session_id": tracked.id})
    return tracked


def session_logout(*, request: HttpRequest) -> None:
    key = request.session.session_key
    if key:
        UserSession.objects.filter(session_key=key).delete()
    if request.user.is_authenticated:
        audit_record(action="logout", actor=request.user, ip=client_ip(request))
    django_logout(request)  # flushes: the session row is deleted server-side


def sessions_kill(sessions: list[UserSession]) -> None:
    keys = [s.session_key for s in sessions]
    Session.objects.filter(session_key__in=keys).delete()
    UserSession.objects.filter(pk__in=[s.pk for s in sessions]).delete()


def sessions_revoke_all(*, user: User, keep_key: str | None = None) -> int:
    sessions = list(UserSession.objects.filter(user=user).exclude(session_key=keep_key or ""))
    sessions_kill(sessions)
    return len(sessions)


@transaction.atomic
def session_revoke(*, user: User, session_id: str, ip: str | None) -> None:
    tracked = UserSession.objects.filter(user=user, pk=session_id).first()
    if tracked is None:
        raise NotFound("No such session.")
    sessions_kill([tracked])
    audit_record(action="session_revoke", actor=user, ip=ip, target=session_id)


def sessions_purge_expired() -> int:
    """Housekeeping: expired sessions leave Django's store and the user's session list."""
    expired = Session.objects.filter(expire_date__lt=timezone.now())
    keys = list(expired.values_list("session_key", flat=True))
    expired.delete()
    UserSession.objects.filter(session_key__in=keys).delete()
    return len(keys)


@transaction.atomic
def user_disable(*, user: User, by: User | None, ip: str | None) -> None:
    """Operator action: the account can no longer sign in; its sessions and keys stop at once."""
    User.objects.filter(pk=user.pk).update(is_active=False)
    sessions_revoke_all(user=user)
    keys = ApiKey.objects.filter(user=user).delete()[0]
    audit_record(action="user_disable", actor=by, subject=user, ip=ip, target=user.pk, meta={"api_keys_revoked": keys})


def session_is_recent(*, request: HttpRequest) -> bool:
    key = request.session.session_key if hasattr(request, "session") else None
    if not key:
        return False
    cutoff = timezone.now() - timedelta(seconds=settings.KF_RECENT_AUTH_SECONDS)
    return UserSession.objects.filter(session_key=key, created_at__gte=cutoff).exists()


# --- password ------------------------------------------------------------------------------------

def password_forgot(*, email: str, ip: str | None) -> None:
    email = (email or "").strip().lower()
    ratelimit.hit_and_check("reset-email", email, limit=settings.KF_EMAIL_REQUESTS_PER_HOUR, window=3600)
    user = User.objects.filter(email=email, is_active=True).first()
    if user is None:
        return
    token = f"{urlsafe_base64_encode(user.pk.encode())}.{default_token_generator.make_token(user)}"
    audit_record(action="password_reset_request", actor=None, subject=user, ip=ip, target=email)
    _email_send(to=user.email, template="emails/reset.txt",
                context={"user": user, "url": f"{settings.KF_BASE_URL}/reset?token={token}",
                         "minutes": settings.PASSWORD_RESET_TIMEOUT // 60})


@transaction.atomic
def password_reset(*, token: str, password: str, ip: str | None) -> User:
    invalid = InvalidRequest("This reset link is invalid, used or expired.", details={"token": ["invalid or expired"]})
    uid_b64, _, raw = (token or "").partition(".")
    try:
        uid = urlsafe_base64_decode(uid_b64).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid from exc
    # Locked so two uses of one token serialise; the first changes the password, which voids the token.
    user = User.objects.select_for_update().filter(pk=uid, is_active=True).first()
    if user is None or not default_token_generator.check_token(user, raw):
        raise invalid
    _password_check(password, user)
    user.set_password(password)
    user.save(update_fields=["password"])
    sessions_revoke_all(user=user)
    audit_record(action="password_reset", actor=user, ip=ip)
    return user


@transaction.atomic
def password_change(*, request: HttpRequest, user: User, old_password: str, new_password: str) -> None:
    if not user.check_password(old_password):
        ratelimit.hit_and_check("password-change", user.pk, limit=settings.KF_LOGIN_FAILURES_PER_ACCOUNT,
                                window=_login_window())
        raise InvalidRequest("The current password is wrong.", details={"old_password": ["wrong password"]})
    _password_check(new_password, user, field="new_password")
    user.set_password(new_password)
    user.save(update_fields=["password"])
    update_session_auth_hash(request, user)
    revoked = sessions_revoke_all(user=user, keep_key=request.session.session_key)
    audit_record(action="password_change", actor=user, ip=client_ip(request), meta={"sessions_revoked": revoked})


# --- MFA -----------------------------------------------------------------------------------------

def _qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=10)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue().decode()


@transaction.atomic
def mfa_setup(*, user: User, ip: str | None) -> dict[str, str]:
    if mfa_enabled(user):
        raise Conflict("MFA is already enabled; disable it first to enrol a new device.")
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    uri = device.config_url
    audit_record(action="mfa_setup", actor=user, ip=ip)
    return {"secret": b32encode(device.bin_key).decode(), "otpauth_uri": uri, "qr_svg": _qr_svg(uri)}


RECOVERY_CODES = 10


def mfa_verify(*, user: User, code: str, ip: str | None) -> list[str]:
    # Not one transaction: a wrong code's throttle count must commit even though we then raise.
    with transaction.atomic():
        if mfa_enabled(user):
            raise Conflict("MFA is already enabled.")
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).first()
        if device is None:
            raise Conflict("Start MFA setup first.")
        allowed, _ = device.verify_is_allowed()
        if not allowed:
            raise RateLimited("Too many wrong codes; wait before trying again.", retry_after=30)
        accepted = device.verify_token((code or "").strip())
        if accepted:
            return _mfa_confirm(user=user, device=device, ip=ip)
    raise InvalidRequest("That code is not valid.", details={"code": ["invalid code"]})


def _mfa_confirm(*, user: User, device: TOTPDevice, ip: str | None) -> list[str]:
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    RecoveryCode.objects.filter(user=user).delete()
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = secrets.token_hex(6)
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
        RecoveryCode.objects.create(user=user, code_hash=_sha256(raw))
    audit_record(action="mfa_enable", actor=user, ip=ip)
    return codes


def mfa_disable(*, user: User, password: str, code: str, ip: str | None) -> None:
    if not mfa_enabled(user):
        raise Conflict("MFA is not enabled.")
    if not user.check_password(password):
        raise InvalidRequest("The password is wrong.", details={"password": ["wrong password"]})
    with transaction.atomic():
        accepted = otp_check(user=user, code=code)
        if accepted:
            TOTPDevice.objects.filter(user=user).delete()
            RecoveryCode.objects.filter(user=user).delete()
            audit_record(action="mfa_disable", actor=user, ip=ip)
    if not accepted:
        raise InvalidRequest("That code is not valid.", details={"code": ["invalid code"]})


# --- API keys ------------------------------------------------------------------------------------

SCOPE_ORDER = [ApiKey.Scope.READ, ApiKey.Scope.WRITE, ApiKey.Scope.ADMIN]


@transaction.atomic
def api_key_create(*, user: User, name: str, scopes: list[str], expires_in_days: int | None,
                   ip: str | None) -> tuple[ApiKey, str]:
    raw, parts = apikeys.generate()
    key = ApiKey.objects.create(
        user=user,
        name=name,
        public_id=parts.public_id,
        secret_hash=apikeys.secret_hash(parts.secret),
        scopes=sorted(set(scopes), key=SCOPE_ORDER.index),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    audit_record(action="api_key_create", actor=user, ip=ip, target=key.id,
                 meta={"name": name, "prefix": key.prefix, "scopes": key.scopes})
    return key, raw


@transaction.atomic
def api_key_revoke(*, user: User, key_id: str, ip: str | None) -> None:
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise NotFound("No such API key.")
    key.delete()
    audit_record(action="api_key_revoke", actor=user, ip=ip, target=key_id, meta={"prefix": key.prefix})


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The live key for `raw`, or None. Shape and checksum are checked before any query."""
    parts = apikeys.parse(raw)
    if parts is None:
        return None
    key = ApiKey.objects.select_related("user").filter(public_id=parts.public_id).first()
    if key is None or not secrets.compare_digest(key.secret_hash, apikeys.secret_hash(parts.secret)):
        return None
    now = timezone.now()
    if (key.expires_at and key.expires_at <= now) or not key.user.is_active:
        return None
    stale = now - timedelta(seconds=settings.KF_API_KEY_TOUCH_SECONDS)
    if key.last_used_at is None or key.last_used_at < stale:
        # One conditional UPDATE: concurrent requests do not pile up writes.
        ApiKey.objects.filter(pk=key.pk).exclude(last_used_at__gte=stale).update(last_used_at=now)
        key.last_used_at = now
    return key


# --- profile -------------------------------------------------------------------------------------

AVATAR_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}
AVATAR_SIZE = 256


def _avatar_store(*, user: User, upload: Any) -> str:
    if upload.size > settings.KF_AVATAR_MAX_BYTES:
        raise PayloadTooLarge(f"The avatar is larger than {settings.KF_AVATAR_MAX_BYTES // 1024} KiB.")
    data = upload.read(settings.KF_AVATAR_MAX_BYTES + 1)
    not_image = InvalidRequest("The avatar must be a PNG, JPEG, GIF or WebP image.",
                               details={"avatar": ["not an image"]})
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.format not in AVATAR_FORMATS:
                raise not_image
            if probe.width * probe.height > 40_000_000:
                raise InvalidRequest("The avatar has too many pixels.", details={"avatar": ["too large"]})
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            clean = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise not_image from exc
    clean.thumbnail((AVATAR_SIZE, AVATAR_SIZE))
    folder = Path(settings.MEDIA_ROOT) / "avatars"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{user.pk}-{secrets.token_hex(8)}.png"
    clean.save(folder / name, format="PNG", optimize=True)  # re-encoded: no metadata, no payloads
    return name


def _avatar_delete(name: str) -> None:
    if name:
        (Path(settings.MEDIA_ROOT) / "avatars" / name).unlink(missing_ok=True)


@transaction.atomic
def profile_update(*, user: User, name: str | None = None, email: str | None = None,
                   avatar: Any = None, ip: str | None = None) -> User:
    user = User.objects.select_for_update().get(pk=user.pk)
    fields: list[str] = []
    if name is not None and name != user.name:
        user.name = name
        fields.append("name")
    if avatar is not None:
        old = user.avatar
        user.avatar = _avatar_store(user=user, upload=avatar)
        fields.append("avatar")
        transaction.on_commit(lambda: _avatar_delete(old))
    if fields:
        user.save(update_fields=fields)
        audit_record(action="profile_update", actor=user, ip=ip, meta={"fields": fields})
    if email is not None:
        email = email.strip().lower()
        if email != user.email:
            if User.objects.filter(email=email).exists():
                raise InvalidRequest("That email address is already in use.", details={"email": ["already in use"]})
            EmailAddress.objects.filter(user=user, primary=False).delete()
            EmailAddress.objects.create(user=user, email=email, primary=False, verified=False)
            email_verification_send(user=user, email=email)
            audit_record(action="email_change_request", actor=user, ip=ip, target=email)
    return user


# --- deletion ------------------------------------------------------------------------------------

@transaction.atomic
def delete_request(*, user: User, password: str, ip: str | None) -> User:
    if not user.check_password(password):
        raise InvalidRequest("The password is wrong.", details={"password": ["wrong password"]})
    user.delete_after = timezone.now() + timedelta(days=settings.KF_DELETE_GRACE_DAYS)
    user.save(update_fields=["delete_after"])
    audit_record(action="delete_request", actor=user, ip=ip, meta={"delete_after": user.delete_after.isoformat()})
    return user


@transaction.atomic
def delete_cancel(*, user: User, ip: str | None) -> User:
    user.delete_after = None
    user.save(update_fields=["delete_after"])
    audit_record(action="delete_cancel", actor=user, ip=ip)
    return user


def _export_dir() -> Path:
    path = Path(settings.KF_DATA_DIR) / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


@transaction.atomic
def account_purge(*, user_id: str) -> bool:
    """Removes the account and everything it owns. Only for accounts past their delete_after."""
    user = User.objects.select_for_update().filter(pk=user_id, delete_after__lte=timezone.now()).first()
    if user is None:
        return False
    sessions_revoke_all(user=user)
    for export in user.exports.exclude(file_name=""):
        export_path(export).unlink(missing_ok=True)
    owned = Workspace.objects.filter(memberships__user=user, memberships__role=Role.OWNER)
    for workspace in owned:
        if not workspace.memberships.filter(role=Role.OWNER).exclude(user=user).exists():
            workspace.delete()
    avatar = user.avatar
    user.delete()
    transaction.on_commit(lambda: _avatar_delete(avatar))
    audit_record(action="account_purge", target=user_id)
    return True


def accounts_purge_due() -> int:
    due = User.objects.filter(delete_after__lte=timezone.now()).values_list("pk", flat=True)
    return sum(account_purge(user_id=pk) for pk in list(due))


# --- export --------------------------------------------------------------------------------------

EXPORT_KEEP = timedelta(days=1)


def export_current(*, user: User) -> DataExport | None:
    cutoff = timezone.now() - EXPORT_KEEP
    return user.exports.filter(created_at__gte=cutoff).exclude(status=DataExport.Status.FAILED).order_by("-created_at").first()


@transaction.atomic
def export_start(*, user: User, ip: str | None) -> DataExport:
    from accounts.tasks import export_build_task

    User.objects.select_for_update().filter(pk=user.pk).first()  # one export at a time per user
    current = export_current(user=user)
    if current is not None and current.status == DataExport.Status.PENDING:
        return current
    export = DataExport.objects.create(user=user)
    audit_record(action="export", actor=user, ip=ip, target=export.id)
    enqueue(export_build_task, export.id)
    return export


def _dump(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, default=str, ensure_ascii=False)


def export_build(*, export_id: str) -> DataExport:
    export = DataExport.objects.select_related("user").get(pk=export_id)
    if export.status != DataExport.Status.PENDING:
        return export
    user = export.user
    files: dict[str, list[dict[str, Any]]] = {
        "user.json": [{"id": user.pk, "email": user.email, "name": user.name,
                       "created_at": user.created_at, "delete_after": user.delete_after}],
        "email_addresses.json": list(EmailAddress.objects.filter(user=user).values("email", "verified", "primary")),
        "workspaces.json": list(Workspace.objects.filter(memberships__user=user).values("id", "name", "personal", "created_at")),
        "memberships.json": list(Membership.objects.filter(user=user).values("id", "workspace_id", "role", "created_at")),
        "sessions.json": list(UserSession.objects.filter(user=user).values("id", "ip", "user_agent", "created_at", "last_seen_at")),
        "api_keys.json": [
            {"id": k.pk, "name": k.name, "prefix": k.prefix, "scopes": k.scopes, "created_at": k.created_at,
             "last_used_at": k.last_used_at, "expires_at": k.expires_at}
            for k in ApiKey.objects.filter(user=user)
        ],
        "audit.json": list(AuditRecord.objects.filter(subject=user).order_by("at").values(
            "id", "at", "action", "actor_email", "target", "ip", "meta")),
        "mfa.json": [{"enabled": mfa_enabled(user),
                      "recovery_codes_left": RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()}],
    }
    name = f"{export.pk}.zip"
    tmp = _export_dir() / f".{name}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for filename, rows in files.items():
            archive.writestr(filename, _dump(rows))
        if user.avatar:
            avatar = Path(settings.MEDIA_ROOT) / "avatars" / user.avatar
            if avatar.exists():
                archive.write(avatar, "files/avatar.png")
    tmp.replace(_export_dir() / name)
    DataExport.objects.filter(pk=export.pk).update(
        status=DataExport.Status.READY, finished_at=timezone.now(), file_name=name,
        size=(_export_dir() / name).stat().st_size,
    )
    export.refresh_from_db()
    return export


def export_path(export: DataExport) -> Path:
    return _export_dir() / export.file_name


def exports_purge_expired() -> int:
    old = DataExport.objects.filter(created_at__lt=timezone.now() - EXPORT_KEEP)
    count = 0
    for export in old:
        if export.file_name:
            export_path(export).unlink(missing_ok=True)
        export.delete()
        count += 1
    return count
