"""The web pages of the Auth and Account groups. Pages only render: kf.js submits their forms as JSON
to the API, so every write goes through the same endpoints (and checks) as any other client. The one
exception is /verify, because the emailed link opens a page."""

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_safe

from accounts import selectors, services
from accounts.models import ApiKey, Membership
from api.errors import ApiError
from api.pagination import paginate_rows

AUDIT_PAGE = 50


def page_workspace(request: HttpRequest) -> tuple[list[Membership], Membership | None]:
    """For a page about one workspace (secrets, budget, receipts, run history): the caller's memberships
    and the one the page shows, `?ws_id=` (404 if the caller is not a member) or else the personal one."""
    memberships = list(selectors.workspace_list(user=request.user))
    ws_id = request.GET.get("ws_id") or None
    if ws_id is not None:
        membership = next((m for m in memberships if m.workspace_id == ws_id), None)
        if membership is None:
            raise Http404("No such workspace.")
        return memberships, membership
    return memberships, next((m for m in memberships if m.workspace.personal), memberships[0] if memberships else None)


def _safe_next(request: HttpRequest) -> str:
    """`?next=` when it is a path on this site, else /account (no open redirect)."""
    target = request.GET.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "/account"


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    return redirect("/account" if request.user.is_authenticated else "/login")


@require_safe
@ensure_csrf_cookie
def register_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/register.html")


@require_safe
@ensure_csrf_cookie
def login_page(request: HttpRequest) -> HttpResponse:
    # Rendered for signed-in users too: "sign in again" (recent login required) lands here.
    return render(request, "accounts/login.html", {"next": _safe_next(request)})


@require_GET  # not HEAD: a link checker's HEAD must not spend the single-use token
@ensure_csrf_cookie
def verify_page(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("token", "")
    try:
        user = services.email_verify(token=token)
    except ApiError as exc:
        return render(request, "accounts/verify.html", {"error": exc.message}, status=exc.status_code)
    return render(request, "accounts/verify.html", {"email": user.email})


@require_safe
@ensure_csrf_cookie
def forgot_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/forgot.html")


@require_safe
@ensure_csrf_cookie
def reset_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/reset.html", {"token": request.GET.get("token", "")})


def _audit_first_page(request: HttpRequest) -> tuple[list[Any], str | None]:
    # The page shows the newest rows; later pages come from the API with the cursor.
    return paginate_rows(selectors.audit_list(user=request.user), cursor=None, limit=AUDIT_PAGE, order_field="at")


@require_safe
@ensure_csrf_cookie
@login_required
def account_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    if user.delete_after:
        return render(request, "accounts/account_pending_delete.html", {"delete_after": user.delete_after})
    audit_rows, audit_next = _audit_first_page(request)
    context = {
        "pending_email": selectors.pending_email(user),
        "email_verified": selectors.email_verified(user),
        "mfa_enabled": services.mfa_enabled(user),
        "sessions": selectors.session_list(user=user),
        "current_session_key": request.session.session_key,
        "api_keys": selectors.api_key_list(user=user),
        "scopes": ApiKey.Scope.values,
        "audit_rows": audit_rows,
        "audit_next": audit_next,
        "delete_grace_days": settings.KF_DELETE_GRACE_DAYS,
    }
    return render(request, "accounts/account.html", context)


urlpatterns = [
    path("", home, name="home"),
    path("register", register_page, name="register"),
    path("login", login_page, name="login"),
    path("verify", verify_page, name="verify"),
    path("forgot", forgot_page, name="forgot"),
    path("reset", reset_page, name="reset"),
    path("account", account_page, name="account"),
]
