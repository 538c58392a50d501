from django.urls import path

from agent import api

urlpatterns = [
    path("agent/run", api.RunApi.as_view(), name="agent-run"),
    path("agent/follow", api.FollowApi.as_view(), name="agent-follow"),
    path("agent/runs/<str:run_id>", api.RunDetailApi.as_view(), name="agent-run-detail"),
    path("agent/cancel/<str:run_id>", api.CancelApi.as_view(), name="agent-cancel"),
    path("agent/rollback", api.RollbackApi.as_view(), name="agent-rollback"),
    path("agent/history", api.HistoryApi.as_view(), name="agent-history"),
    path("agent/prefs", api.PrefsApi.as_view(), name="agent-prefs"),
]
