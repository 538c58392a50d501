"""Background work through the real runner: a Celery worker over Redis, or the in-process pool."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import DataExport, User
from accounts.tasks import export_build_task, purge_deleted_accounts
from api.tasking import dispatch
from conftest import make_user, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_beat_schedules_the_purges():
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"accounts.tasks.purge_deleted_accounts", "accounts.tasks.purge_expired_exports"} <= tasks


def test_purge_task_runs_on_the_runner(task_runner):
    due = make_user("due@example.com")
    grace = make_user("grace@example.com")
    User.objects.filter(pk=due.pk).update(delete_after=timezone.now() - timedelta(minutes=1))
    User.objects.filter(pk=grace.pk).update(delete_after=timezone.now() + timedelta(days=3))
    dispatch(purge_deleted_accounts)
    wait_for(lambda: not User.objects.filter(pk=due.pk).exists())
    assert User.objects.filter(pk=grace.pk).exists()


def test_export_task_runs_on_the_runner(task_runner):
    user = make_user("exporter@example.com")
    export = DataExport.objects.create(user=user)
    dispatch(export_build_task, export.pk)
    wait_for(lambda: DataExport.objects.get(pk=export.pk).status == DataExport.Status.READY)
    assert DataExport.objects.get(pk=export.pk).size > 0


def test_expired_sessions_leave_the_list(owner, client_for):
    from django.contrib.sessions.models import Session

    from accounts.models import UserSession
    from accounts.services import sessions_purge_expired

    live, stale = client_for(owner), client_for(owner)
    Session.objects.filter(session_key=stale.cookies["sessionid"].value).update(
        expire_date=timezone.now() - timedelta(seconds=1))
    assert sessions_purge_expired() == 1
    assert list(UserSession.objects.values_list("session_key", flat=True)) == [live.cookies["sessionid"].value]
