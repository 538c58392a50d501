"""The shell page in headless Chromium against a real daphne with the real task runner behind it:
run a command and see its output live, cancel a sleep, run the tests and see the failures; the SSH
hosts, a command run on one and cancelled, a file pulled from one (the real sshd of shell/tests/
conftest.py); a command suggested by the scripted model server and put in the command box."""

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Browser, expect

from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from conftest import Daphne, make_user, wait_for
from llm.tests.scripted_server import ScriptedModelServer
from projects.models import Project
from projects.tests.test_browser import new_page
from shell.tests.conftest import Sshd
from shell.tests.test_commands import make_project, personal, processes_with
from shell.tests.test_ssh_run import sleeps
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


# --- SSH hosts, ssh-run, ssh-pull and suggest from the page ----------------------------------------------

def open_shell_page(browser: Browser, base: str, settings: Any, name: str) -> tuple[Any, Project, list[str]]:
    """A new user with a project, signed in on the project's shell page."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user(f"{name}@example.com", name=name.title())
    root = Path(django_settings.KF_PROJECTS_ROOT) / f"web-{uuid.uuid4().hex[:8]}"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    project = make_project(root, personal(user), user)
    errors: list[str] = []
    page = new_page(browser, errors)
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.goto(f"{base}/projects/{project.pk}/shell")
    expect(page.locator("[data-test=shell-title]")).to_have_text("Shell")
    return page, project, errors


def test_ssh_hosts_run_cancel_and_pull_from_the_page(daphne: Daphne, task_runner: str, sshd: Sshd, settings: Any,
                                                     browser: Browser, tmp_path: Path, agent_model: Any) -> None:
    # daphne (and the Celery worker) read the ssh config and known_hosts that the sshd fixture wrote, at the
    # paths the root conftest exported before they started.
    page, project, errors = open_shell_page(browser, daphne.url, settings, "sid")
    rows = page.locator("[data-test=ssh-host-row]")
    expect(rows.locator("[data-test=ssh-host-alias]")).to_have_text(
        ["kf-test", "kf-test-2", "kf-test-unknown", "kf-test-changed", "kf-test-nokey"])
    first = rows.first
    expect(first.locator("[data-test=ssh-host-hostname]")).to_have_text("127.0.0.1")
    expect(first.locator("[data-test=ssh-host-user]")).to_have_text(sshd.user)
    expect(first.locator("[data-test=ssh-host-port]")).to_have_text(str(sshd.port))

    # Run on a host: the same output panel as a local command, stdout and stderr apart, then the exit status.
    page.select_option("[data-test=ssh-run-host]", "kf-test")
    page.fill("[data-test=ssh-run-command]", "echo hello-over-ssh-$((6*7)); echo warn >&2; exit 3")
    page.click("[data-test=ssh-run-submit]")
    output = page.locator("[data-test=output]")
    expect(output.locator(".out-stdout")).to_have_text("hello-over-ssh-42\n")
    expect(output.locator(".out-stderr")).to_have_text("warn\n")
    expect(page.locator("[data-test=output-status]")).to_have_text("failed · exit 3")
    expect(page.locator("[data-test=output-command]")).to_have_text(
        "kf-test: echo hello-over-ssh-$((6*7)); echo warn >&2; exit 3")
    job = Job.objects.get(kind="ssh", project_id=project.pk)
    assert job.params["host"] == "kf-test" and job.result["exit_code"] == 3

    # A host whose key kf does not know: the job fails with the service's reason, shown under the output.
    page.select_option("[data-test=ssh-run-host]", "kf-test-unknown")
    page.fill("[data-test=ssh-run-command]", "echo never")
    page.click("[data-test=ssh-run-submit]")
    expect(page.locator("[data-test=output-error]")).to_contain_text("is not in kf's known_hosts")
    expect(page.locator("[data-test=output-status]")).to_have_text("failed · no exit code")
    expect(output).to_have_text("")

    # A bad request (empty command) is refused by the API with the message next to the field; no job.
    page.fill("[data-test=ssh-run-command]", "")
    page.click("[data-test=ssh-run-submit]")
    expect(page.locator("#ssh-run-command-error")).to_be_visible()
    assert Job.objects.filter(kind="ssh", project_id=project.pk).count() == 2

    # A long remote sleep; the page reloaded while it runs; "Show" on its row in "Running now" replays the
    # job from its first event and follows it live; the same Cancel button stops it and the remote process.
    marker = f"700.{uuid.uuid4().int % 10**6:06d}"
    page.select_option("[data-test=ssh-run-host]", "kf-test")
    page.fill("[data-test=ssh-run-command]", f"echo sleeping; sleep {marker}")
    page.click("[data-test=ssh-run-submit]")
    expect(output).to_have_text("sleeping\n")
    expect(page.locator("[data-test=output-status]")).to_have_text("running")
    wait_for(lambda: sleeps(marker), timeout=15)
    page.reload()
    expect(page.locator("[data-test=output-card]")).to_be_hidden()
    running = page.locator("[data-test=running-row]")
    expect(running).to_have_count(1)
    expect(running).to_contain_text(f"sleep {marker}")
    running.locator("[data-test=running-follow]").click()
    expect(output).to_have_text("sleeping\n")
    expect(page.locator("[data-test=output-command]")).to_have_text(f"kf-test: echo sleeping; sleep {marker}")
    expect(page.locator("[data-test=output-status]")).to_have_text("running")
    page.click("[data-test=shell-cancel]")
    expect(page.locator("[data-test=output-status]")).to_have_text(re.compile(r"^cancelled · "))
    wait_for(lambda: not sleeps(marker), timeout=10)
    expect(page.locator("[data-test=running-empty]")).to_be_visible()
    statuses = {j.params["command"]: j.status for j in Job.objects.filter(kind="ssh", project_id=project.pk)}
    assert statuses[f"echo sleeping; sleep {marker}"] == "cancelled"

    # Pull a file into the project: path, size and sha256 shown, the bytes on disk; again: replaced.
    remote = tmp_path / "remote report.txt"
    content = "line one\nüñí\n".encode() * 100
    remote.write_bytes(content)
    page.select_option("[data-test=ssh-pull-host]", "kf-test-2")
    page.fill("[data-test=ssh-pull-remote]", str(remote))
    page.fill("[data-test=ssh-pull-path]", "pulled/report.txt")
    page.click("[data-test=ssh-pull-submit]")
    result = page.locator("[data-test=ssh-pull-result]")
    expect(result).to_be_visible()
    expect(result.locator("[data-test=pull-path]")).to_have_text("pulled/report.txt")
    expect(result.locator("[data-test=pull-size]")).to_have_text(str(len(content)))
    expect(result.locator("[data-test=pull-sha256]")).to_have_text(hashlib.sha256(content).hexdigest())
    expect(result).to_contain_text("Saved")
    assert (Path(project.root) / "pulled" / "report.txt").read_bytes() == content
    page.click("[data-test=ssh-pull-submit]")
    expect(result).to_contain_text("Replaced")

    # Errors are the API's messages: a missing remote file, a path out of the project.
    page.fill("[data-test=ssh-pull-remote]", str(tmp_path / "nope.txt"))
    page.click("[data-test=ssh-pull-submit]")
    expect(page.locator("[data-test=ssh-pull-error]")).to_have_text(f"There is no file kf-test-2:{tmp_path}/nope.txt.")
    expect(result).to_be_hidden()
    page.fill("[data-test=ssh-pull-remote]", str(remote))
    page.fill("[data-test=ssh-pull-path]", "../escaped.txt")
    page.click("[data-test=ssh-pull-submit]")
    expect(page.locator("#ssh-pull-path-error")).to_be_visible()
    assert not (Path(project.root).parent / "escaped.txt").exists()

    # Suggest, with a model server that refuses kf's key (daphne uses the session's scripted model): the
    # API's message, nothing else.
    agent_model.fail(401, message="bad key")
    page.fill("[data-test=suggest-prompt]", "list the biggest files")
    page.click("[data-test=suggest-submit]")
    expect(page.locator("[data-test=suggest-error]")).to_contain_text("refused kf's credentials (HTTP 401)")
    expect(page.locator("[data-test=suggestion]")).to_be_hidden()
    page.screenshot(path="/tmp/kf-shell-ssh.png", full_page=True)
    assert errors == []


@pytest.fixture
def model_daphne(task_runner: str) -> Iterator[tuple[Daphne, ScriptedModelServer]]:
    """A daphne of its own whose settings name the scripted model server: the session's daphne started
    before this test's server and cannot see per-test settings."""
    server = ScriptedModelServer().start()
    web = Daphne(KF_LLM_BASE_URL=server.url, KF_LLM_API_KEY=server.api_key, KF_LLM_MODEL=server.model)
    try:
        yield web, server
    finally:
        web.stop()
        server.stop()


def test_suggest_fills_the_command_box_and_never_runs_it(model_daphne: tuple[Daphne, ScriptedModelServer],
                                                         settings: Any, browser: Browser) -> None:
    web, model = model_daphne
    page, project, errors = open_shell_page(browser, web.url, settings, "suzy")
    model.reply_json({"command": "ls -la src", "explanation": "Lists the src folder, hidden files too."})
    page.fill("[data-test=suggest-prompt]", "what is in the source folder?")
    page.press("[data-test=suggest-prompt]", "Control+Enter")
    suggestion = page.locator("[data-test=suggestion]")
    expect(suggestion.locator("[data-test=suggested-command]")).to_have_text("ls -la src")
    expect(suggestion.locator("[data-test=suggested-explanation]")).to_have_text(
        "Lists the src folder, hidden files too.")
    expect(suggestion.locator("[data-test=suggested-model]")).to_have_text(model.model)
    (request,) = model.requests
    asked = request.body["messages"][1]["content"]
    assert "what is in the source folder?" in asked and project.name in asked  # the page sent its project

    # The button only fills the command box: no job until the user presses Run.
    page.click("[data-test=suggestion-use]")
    expect(page.locator("[data-test=shell-command]")).to_have_value("ls -la src")
    expect(page.locator("[data-test=shell-command]")).to_be_focused()
    assert not Job.objects.filter(project_id=project.pk).exists()
    page.click("[data-test=shell-run]")
    expect(page.locator("[data-test=output]")).to_contain_text("main.py")
    expect(page.locator("[data-test=output-status]")).to_have_text("succeeded · exit 0")
    assert list(Job.objects.filter(project_id=project.pk).values_list("params__command", flat=True)) == ["ls -la src"]

    # A failing model: its error message, and the old suggestion is gone.
    model.fail(500, message="the model fell over", times=3)
    page.fill("[data-test=suggest-prompt]", "and now?")
    page.click("[data-test=suggest-submit]")
    expect(page.locator("[data-test=suggest-error]")).to_contain_text("answered HTTP 500")
    expect(suggestion).to_be_hidden()
    expect(page.locator("[data-test=suggest-submit]")).to_have_text("Suggest")
    assert errors == []
