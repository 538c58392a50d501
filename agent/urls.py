from django.urls import path

from agent import api

urlpatterns = [
    path("agent/history", api.HistoryApi.as_view(), name="agent-history"),
    path("agent/prefs", api.PrefsApi.as_view(), name="agent-prefs"),
]
