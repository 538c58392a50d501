"""Request bodies: the one check that a JSON body is an object, for views that read request.data
before (or instead of) a serializer."""

from typing import Any

from rest_framework.request import Request

from api.errors import InvalidRequest


def json_object(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return request.data
