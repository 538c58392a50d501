"""The API's error types. Views and services raise these; api.handlers renders them."""

from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException


class ApiError(APIException):
    """Base error: a snake_case `code`, an HTTP `status_code`, a human message, optional details."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"
    default_detail = "The request is invalid."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail=message or self.default_detail, code=self.default_code)
        self.message = str(message or self.default_detail)
        self.details = details
        self.headers = headers or {}


class InvalidRequest(ApiError):
    pass


class Unauthenticated(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "unauthenticated"
    default_detail = "Authentication credentials were not provided or are invalid."


class MfaRequired(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "mfa_required"
    default_detail = "A valid one-time code is required."


class Forbidden(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "forbidden"
    default_detail = "You do not have permission to do this."


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = "Not found."


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class BudgetExceeded(ApiError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_code = "budget_exceeded"
    default_detail = "The budget would be exceeded."


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class RateLimited(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "rate_limited"
    default_detail = "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(message, details={"retry_after": retry_after},
                         headers={"Retry-After": str(retry_after)})
