from django.urls import path

from streams import api

urlpatterns = [
    path("jobs/<str:job_id>", api.JobApi.as_view(), name="job"),
    path("jobs/<str:job_id>/stream", api.JobStreamApi.as_view(), name="job-stream"),
    path("jobs/<str:job_id>/cancel", api.JobCancelApi.as_view(), name="job-cancel"),
]
