from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.models import UserSession
from accounts.services import client_ip


class SessionTrackingMiddleware:
    """Keeps UserSession.last_seen_at fresh (at most one write a minute per session) and records
    sessions that began outside kf's login view (the admin's)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        key = request.session.session_key if hasattr(request, "session") else None
        if user is not None and user.is_authenticated and key:
            if cache.add(f"kf:session-touch:{key}", 1, timeout=settings.KF_SESSION_TOUCH_SECONDS):
                updated = UserSession.objects.filter(session_key=key).update(last_seen_at=timezone.now())
                if not updated:
                    UserSession.objects.get_or_create(
                        session_key=key,
                        defaults={"user": user, "ip": client_ip(request),
                                  "user_agent": request.headers.get("User-Agent", "")[:300]},
                    )
        return self.get_response(request)
