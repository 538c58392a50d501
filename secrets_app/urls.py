"""API routes of the Secrets group (API.md). `rotate-master` comes before `<name>` so it is never read
as a secret's name (names could not be spelled like it anyway: they are upper case, no hyphen)."""

from django.urls import URLPattern, path

from secrets_app import api

urlpatterns: list[URLPattern] = [
    path("secrets", api.SecretListApi.as_view(), name="secrets"),
    path("secrets/rotate-master", api.RotateMasterApi.as_view(), name="secrets-rotate-master"),
    path("secrets/<str:name>", api.SecretDetailApi.as_view(), name="secret"),
]
