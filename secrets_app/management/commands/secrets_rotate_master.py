"""`manage.py secrets_rotate_master`: rotate the secrets master key from the command line, in this
process. Starts a rotation, or resumes the one in flight (for example after its worker was killed)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.errors import ApiError
from secrets_app import services
from secrets_app.models import Rotation


class Command(BaseCommand):
    # The web process runs the system checks; skipping them here lets a resume start at once.
    requires_system_checks: list[str] = []
    help = "Rotate the secrets master key (or finish an interrupted rotation) and print the outcome as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=services.ROTATION_BATCH,
                            help="data keys re-wrapped per transaction (default %(default)s)")
        parser.add_argument("--pause", type=float, default=0.0,
                            help="seconds to sleep between batches, to go easy on a busy database")

    def handle(self, *args: Any, batch_size: int, pause: float, **options: Any) -> None:
        if batch_size < 1 or pause < 0:
            raise CommandError("--batch-size must be ≥ 1 and --pause ≥ 0")
        try:
            rotation, started = services.master_key_rotation_start(user=None, background=False)
            rotation = services.master_key_rotation_run(rotation_id=rotation.pk, batch_size=batch_size, pause=pause)
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(json.dumps({
            "rotation_id": rotation.pk, "resumed": not started, "status": rotation.status,
            "key_version": rotation.target_version, "rewrapped": rotation.rewrapped, "total": rotation.total,
            "retired": rotation.retired, "failed": rotation.failed, "error": rotation.error,
        }))
        if rotation.status != Rotation.Status.SUCCEEDED:
            raise CommandError(rotation.error or f"rotation {rotation.status}")
