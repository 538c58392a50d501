"""Celery's autodiscovery imports `shell.tasks`: every task module of the app is imported here."""

from shell.tasks import commands, remote  # noqa: F401
