"""`manage.py receipts_verify_bundle <file>`: check a receipt bundle offline, with the same code as the
standalone receipts/verify_bundle.py and without touching the database. Exit code 0 when it verifies,
1 (with the reason) when it does not."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from receipts.verify_bundle import BundleInvalid, verify


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # an offline check: nothing about this installation matters
    help = "Verify a receipt bundle (from GET /api/receipts/<run_id>/bundle) without the database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bundle", help="the bundle file (JSON)")
        parser.add_argument("--public-key", help="the Ed25519 public key you trust (base64); default: the bundle's own")

    def handle(self, *args: Any, bundle: str, public_key: str | None, **options: Any) -> None:
        try:
            with open(bundle, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"FAIL: cannot read {bundle}: {exc}") from None
        try:
            summary = verify(data, public_key=public_key)
        except BundleInvalid as exc:
            raise CommandError(f"FAIL: {exc}") from None
        self.stdout.write(f"OK: {summary}")
