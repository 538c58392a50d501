from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import web
from accounts.urls import api_urlpatterns as account_api
from accounts.urls import auth_urlpatterns
from agent.urls import urlpatterns as agent_api
from api import handlers
from budget.urls import urlpatterns as budget_api
from projects.urls import urlpatterns as project_api
from receipts.urls import urlpatterns as receipts_api
from secrets_app.urls import urlpatterns as secrets_api
from shell.urls import urlpatterns as shell_api
from streams.urls import urlpatterns as stream_api


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


api_urlpatterns = [
    *account_api,
    *project_api,
    *stream_api,
    *secrets_api,
    *shell_api,
    *agent_api,
    *budget_api,
    *receipts_api,
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

urlpatterns = [
    path("auth/", include(auth_urlpatterns)),
    path("api/", include(api_urlpatterns)),
    path("api-auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    *web.urlpatterns,
    path("", include("projects.web")),
    path("", include("secrets_app.web")),
    path("", include("shell.web")),
    path("", include("agent.web")),
    path("", include("budget.web")),
    path("", include("receipts.web")),
    # Anything else under /api/ or /auth/ answers in the API's error shape.
    re_path(r"^(?:api|auth)(?:/.*)?$", csrf_exempt(handlers.handler404)),
]

handler400 = "api.handlers.handler400"
handler403 = "api.handlers.handler403"
handler404 = "api.handlers.handler404"
handler500 = "api.handlers.handler500"
