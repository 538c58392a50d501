"""The embedded shape's scheduler (api.tasking): every scheduled task resolves in a fresh process."""

import json
import os
import subprocess
import sys

from django.conf import settings


def test_every_scheduled_task_resolves_in_a_fresh_web_process() -> None:
    # A fresh interpreter, as daphne is: nothing has imported the apps' tasks modules yet (in this test
    # process other tests may have, which would hide a lazily registered task).
    code = ("import django, json; django.setup(); from api.tasking import beat_entries; "
            "print(json.dumps([[t.name, every] for t, every, _ in beat_entries()]))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "kfsite.settings"}
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env, check=True,
                         capture_output=True, text=True).stdout
    entries = dict(json.loads(out.strip().splitlines()[-1]))
    assert set(entries) == {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["agent.tasks.reap"] == 60
    assert entries["accounts.tasks.purge_deleted_accounts"] == 3600
