"""Offline verification of a bundle, good and tampered: through `manage.py receipts_verify_bundle` and the
standalone receipts/verify_bundle.py, each in its own process, neither touching the database; the
standalone script runs with Django made unimportable."""

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from receipts.selectors import receipt_bundle
from receipts.services import receipt_append
from receipts.tests.conftest import new_key_b64
from receipts.verify_bundle import BundleInvalid, verify

pytestmark = pytest.mark.django_db

REPO = Path(settings.BASE_DIR)
SCRIPT = REPO / "receipts" / "verify_bundle.py"
# The script as someone without kf runs it: isolated mode, and `import django` fails.
STANDALONE = ("import runpy, sys; sys.modules['django'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture
def bundle(facts_for, signing_key_b64) -> dict[str, Any]:
    receipts = [receipt_append(facts=facts_for()) for _ in range(6)]
    return receipt_bundle(receipt=receipts[2])


def standalone(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(SCRIPT), str(path), *extra],
                          capture_output=True, text=True, timeout=60, cwd="/", check=False)


def command(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "receipts_verify_bundle", str(path), *extra],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def write(tmp_path: Path, data: Any, name: str = "bundle.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def test_a_good_bundle_verifies_in_both_tools(bundle, tmp_path, signing_key_b64):
    path = write(tmp_path, bundle)
    for run in (standalone, command):
        done = run(path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("OK: receipt seq 3") and "entry 3 of 6" in done.stdout
    public = bundle["public_key"]
    assert standalone(path, "--public-key", public).returncode == 0
    assert command(path, "--public-key", public).returncode == 0


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return change


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


TAMPERINGS = {
    "receipt edited": (_set(["receipt", "usage", "usd"], "0.000001"), "do not lead to the signed root"),
    "task hash edited": (_set(["receipt", "task_sha256"], _flip), "do not lead to the signed root"),
    "audit path edited": (_set(["inclusion_proof", "audit_path", 0], _flip), "do not lead to the signed root"),
    "audit path shortened": (_set(["inclusion_proof", "audit_path"], lambda p: p[:-1]), "wrong length"),
    "head root edited": (_set(["head", "root_hash"], _flip), "signature is not valid"),
    "head size edited": (_set(["head", "tree_size"], 7), "signature is not valid"),
    "head time edited": (_set(["head", "at"], "2030-01-01T00:00:00.000000Z"), "signature is not valid"),
    "other seq claimed": (_set(["receipt", "seq"], 4), "the proof is for leaf 2"),
    "not a bundle": (_set(["format"], "something else"), "not a kf receipt bundle"),
    "key swapped": (_set(["public_key"], lambda _: new_key_b64()), "signature is not valid"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_bundles_fail_in_both_tools(bundle, tmp_path, name):
    change, message = TAMPERINGS[name]
    data = copy.deepcopy(bundle)
    change(data)
    with pytest.raises(BundleInvalid, match=message):
        verify(data)
    path = write(tmp_path, data)
    for run in (standalone, command):
        done = run(path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAIL" in done.stdout + done.stderr and message in done.stdout + done.stderr


def test_a_bundle_checked_against_another_trusted_key_fails(bundle, tmp_path):
    path = write(tmp_path, bundle)
    done = standalone(path, "--public-key", new_key_b64())
    assert done.returncode == 1 and "is not the trusted key" in done.stdout


def test_unreadable_files_fail_cleanly(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    for run in (standalone, command):
        for path in (tmp_path / "junk.json", tmp_path / "missing.json"):
            done = run(path)
            assert done.returncode == 1 and "FAIL: cannot read" in done.stdout + done.stderr


def test_call_command_in_process(bundle, tmp_path, capsys):
    path = write(tmp_path, bundle)
    call_command("receipts_verify_bundle", str(path))
    assert capsys.readouterr().out.startswith("OK:")
    bad = copy.deepcopy(bundle)
    bad["receipt"]["model"] = "x"
    with pytest.raises(CommandError, match="do not lead to the signed root"):
        call_command("receipts_verify_bundle", str(write(tmp_path, bad, "bad.json")))


def test_the_newest_receipt_and_a_single_receipt_log(facts_for, signing_key_b64, tmp_path):
    only = receipt_append(facts=facts_for())
    data = receipt_bundle(receipt=only)
    assert data["inclusion_proof"]["audit_path"] == [] and data["head"]["tree_size"] == 1
    assert verify(data).startswith("receipt seq 1")
    newest = [receipt_append(facts=facts_for()) for _ in range(4)][-1]
    assert verify(receipt_bundle(receipt=newest)).startswith("receipt seq 5")
    assert verify(receipt_bundle(receipt=only)).startswith("receipt seq 1")  # now in a head of 5
