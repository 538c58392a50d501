"""The one place errors become responses: DRF's exception handler plus Django's handler404/500,
the CSRF failure view and the 405 fallback, all rendering {"error": {code, message, details}}."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions as drf
from rest_framework.response import Response

from api import errors
from api.middleware import request_id_of

logger = logging.getLogger("kf.errors")

_DRF_CODES: list[tuple[type[Exception], str]] = [
    (drf.NotAuthenticated, "unauthenticated"),
    (drf.AuthenticationFailed, "unauthenticated"),
    (drf.PermissionDenied, "forbidden"),
    (drf.NotFound, "not_found"),
    (drf.MethodNotAllowed, "method_not_allowed"),
    (drf.NotAcceptable, "not_acceptable"),
    (drf.UnsupportedMediaType, "unsupported_media_type"),
    (drf.Throttled, "rate_limited"),
    (drf.ParseError, "invalid_request"),
    (drf.ValidationError, "invalid_request"),
]


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def _validation_details(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for field, value in detail.items():
            if isinstance(value, dict):
                for sub, msgs in _validation_details(value).items():
                    out[f"{field}.{sub}"] = msgs
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for i, item in enumerate(value):
                    for sub, msgs in _validation_details(item).items():
                        out[f"{field}[{i}].{sub}"] = msgs
            else:
                out[str(field)] = [str(m) for m in (value if isinstance(value, list) else [value])]
        return out
    return {"non_field_errors": [str(m) for m in (detail if isinstance(detail, list) else [detail])]}


def _validation_message(details: dict[str, list[str]]) -> str:
    field, msgs = next(iter(details.items()))
    first = msgs[0] if msgs else "is invalid"
    return first if field == "non_field_errors" else f"{field}: {first}"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    request = context.get("request")
    if isinstance(exc, Http404):
        exc = errors.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = errors.Forbidden()
    elif isinstance(exc, RequestDataTooBig):
        exc = errors.PayloadTooLarge()
    elif isinstance(exc, (SuspiciousOperation, TooManyFieldsSent)):
        exc = errors.InvalidRequest("The request was rejected as malformed.")

    if isinstance(exc, errors.ApiError):
        body = error_body(exc.default_code, exc.message, exc.details)
        return Response(body, status=exc.status_code, headers=exc.headers)

    if isinstance(exc, drf.APIException):
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "invalid_request")
        headers: dict[str, str] = {}
        details: dict[str, Any] | None = None
        if isinstance(exc, drf.ValidationError):
            details = _validation_details(exc.detail)
            message = _validation_message(details)
        else:
            message = str(exc.detail)
        if isinstance(exc, drf.Throttled):
            wait = max(1, int(exc.wait or 1))
            headers["Retry-After"] = str(wait)
            details = {"retry_after": wait}
            message = "Too many requests; try again later."
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        return Response(error_body(code, message, details), status=exc.status_code, headers=headers)

    request_id = request_id_of(getattr(request, "_request", request))
    logger.exception("unhandled error request_id=%s", request_id)
    return Response(
        error_body("internal", "An unexpected error occurred.", {"request_id": request_id}),
        status=500,
    )


def _wants_json(request: HttpRequest) -> bool:
    path = request.path
    return path.startswith("/api/") or path.startswith("/auth/") or path in ("/api", "/auth")


def _json_error(request: HttpRequest, status: int, code: str, message: str,
                details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return _json_error(request, 404, "not_found", f"No such endpoint: {request.path}")
    return render(request, "errors/404.html", status=404)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, RequestDataTooBig):
        return _json_error(request, 413, "payload_too_large", "The request body is too large.")
    if _wants_json(request):
        return _json_error(request, 400, "invalid_request", "The request was rejected as malformed.")
    return render(request, "errors/400.html", status=400)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return _json_error(request, 403, "forbidden", "You do not have permission to do this.")
    return render(request, "errors/403.html", status=403)


def handler500(request: HttpRequest) -> HttpResponse:
    request_id = request_id_of(request)
    if _wants_json(request):
        return _json_error(request, 500, "internal", "An unexpected error occurred.",
                           {"request_id": request_id})
    return render(request, "errors/500.html", {"request_id": request_id}, status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if _wants_json(request):
        return _json_error(request, 403, "forbidden",
                           "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie.")
    return render(request, "errors/403.html", {"reason": "The form expired; reload the page."},
                  status=403)
