from django.urls import path

from projects import api

urlpatterns = [
    path("project/load", api.LoadApi.as_view(), name="project-load"),
    path("project/info", api.ProjectGetApi.as_view(), name="project-info"),
    path("project/rescan", api.RescanApi.as_view(), name="project-rescan"),
    path("project/tree", api.TreeApi.as_view(), name="project-tree"),
    path("project/file", api.FileApi.as_view(), name="project-file"),
    path("project/symbols", api.SymbolsApi.as_view(), name="project-symbols"),
    path("project/search", api.SearchApi.as_view(), name="project-search"),
    path("project/recent", api.RecentApi.as_view(), name="project-recent"),
    path("project/findings", api.FindingsApi.as_view(), name="project-findings"),
]
