"""The shell page in headless Chromium against a real daphne with the real task runner behind it:
run a command and see its output live, cancel a sleep, run the tests and see the failures."""

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Browser, expect

from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from conftest import Daphne, make_user, wait_for
from projects.tests.test_browser import new_page
from shell.tests.test_commands import make_project, personal, processes_with
from streams.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = account_browser.browser  # headless Chromium, as for the account pages


def test_run_see_output_cancel_and_run_tests(daphne: Daphne, task_runner: str, settings: Any,
                                             browser: Browser) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user("sam@example.com", name="Sam")
    root = Path(django_settings.KF_PROJECTS_ROOT) / f"web-{uuid.uuid4().hex[:8]}"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_web.py").write_text("def test_ok():\n    pass\n\n\ndef test_broken():\n"
                                                "    assert 'a' == 'b', 'letters differ'\n")
    project = make_project(root, personal(user), user)
    base = daphne.url
    errors: list[str] = []
    page = new_page(browser, errors)
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.goto(f"{base}/projects/{project.pk}/shell")
    expect(page.locator("[data-test=shell-title]")).to_have_text("Shell")

    # A command: its output shows as it comes, then the exit status.
    page.fill("[data-test=shell-command]", "echo hello-from-kf; echo oops >&2")
    page.click("[data-test=shell-run]")
    output = page.locator("[data-test=output]")
    expect(output).to_contain_text("hello-from-kf")
    expect(output.locator(".out-stderr")).to_have_text("oops\n")
    expect(page.locator("[data-test=output-status]")).to_have_text("succeeded · exit 0")
    expect(page.locator("[data-test=recent-row]").first).to_contain_text("echo hello-from-kf")

    # A bad folder: the API's message by the field, no job.
    page.fill("[data-test=shell-cwd]", "../..")
    page.click("[data-test=shell-run]")
    expect(page.locator("#shell-cwd-error")).to_be_visible()
    page.fill("[data-test=shell-cwd]", "")

    # A long sleep, cancelled from the page: the process is gone and the stream says so.
    marker = str(600000 + int.from_bytes(os.urandom(2), "big"))
    page.fill("[data-test=shell-command]", f"echo sleeping; sleep {marker}")
    page.click("[data-test=shell-run]")
    expect(output).to_have_text("sleeping\n")
    expect(page.locator("[data-test=output-status]")).to_have_text("running")
    wait_for(lambda: processes_with(f"sleep {marker}"), timeout=15)
    expect(page.locator("[data-test=running-row]")).to_have_count(1)
    page.click("[data-test=shell-cancel]")
    expect(page.locator("[data-test=output-status]")).to_have_text(re.compile(r"^cancelled · SIG(TERM|KILL)$"))
    assert processes_with(f"sleep {marker}") == []
    expect(page.locator("[data-test=shell-cancel]")).to_be_hidden()
    expect(page.locator("[data-test=running-empty]")).to_be_visible()
    assert Job.objects.filter(project_id=project.pk, status="cancelled").count() == 1

    # The tests: counts and the failures table.
    page.click("[data-test=test-run]")
    expect(page.locator("[data-test=test-results]")).to_be_visible(timeout=60_000)
    expect(page.locator("[data-test=count-runner]")).to_have_text("pytest")
    expect(page.locator("[data-test=count-passed]")).to_have_text("1")
    expect(page.locator("[data-test=count-failed]")).to_have_text("1")
    row = page.locator("[data-test=failure-row]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("tests.test_web::test_broken")
    expect(row).to_contain_text("tests/test_web.py:6")
    expect(row).to_contain_text("letters differ")
    expect(page.locator("[data-test=output-status]")).to_have_text("failed · exit 1")

    # An earlier command's output can be shown again from the recent list.
    page.locator("[data-test=recent-row]", has_text="hello-from-kf").locator("[data-test=recent-show]").click()
    expect(output).to_contain_text("hello-from-kf")
    expect(page.locator("[data-test=test-results]")).to_be_hidden()
    page.screenshot(path="/tmp/kf-shell.png", full_page=True)
    assert errors == []
