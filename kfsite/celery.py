import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")

app = Celery("kfsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
