"""The agent pages in headless Chromium against a real daphne, the real task runner (Celery worker or the
in-process pool) and the session's scripted model server (conftest `agent_model`): a run started from
a project's agent page that reads a file, edits it and answers, watched live, replayed after a reload
and rolled back (through the conflict and "roll back anyway"); a slow run followed across a reload and
cancelled from its page; the run in the history."""

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Browser, Page, expect

from accounts.models import User
from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from agent.models import Run
from conftest import Daphne, make_user, wait_for
from llm.tests.scripted_server import ScriptedModelServer
from projects.models import Project
from projects.tests.test_browser import new_page
from shell.tests.test_commands import make_project, personal

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = account_browser.browser  # headless Chromium, as for the account pages

APP = "def greet(name):\n    return f'helo, {name}'\n"
FIXED = "def greet(name):\n    return f'hello, {name}'\n"
PRICED_MODEL = "gpt-4o-mini"  # known to genai-prices, so the run costs something; the scripted server answers any


def open_agent_page(browser: Browser, base: str, settings: Any, name: str) -> tuple[Page, Project, User, list[str]]:
    """A new user with a project (src/app.py with a typo), signed in on the project's agent page."""
    # daphne runs with the production hashers; the tests' fast MD5 one is not among them.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user(f"{name}@example.com", name=name.title())
    root = Path(django_settings.KF_PROJECTS_ROOT) / f"agent-{uuid.uuid4().hex[:8]}"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP)
    project = make_project(root, personal(user), user)
    errors: list[str] = []
    page = new_page(browser, errors)
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.goto(f"{base}/projects/{project.pk}")
    page.click("[data-test=agent-link]")
    page.wait_for_url(f"{base}/projects/{project.pk}/agent")
    expect(page.locator("[data-test=agent-title]")).to_have_text("Agent")
    return page, project, user, errors


def start(page: Page, task: str, model: str | None = None) -> str:
    """Types the task (and model), presses Start, and returns the run id from the address bar."""
    page.fill("[data-test=agent-task]", task)
    if model is not None:
        page.fill("[data-test=agent-model]", model)
    page.click("[data-test=agent-start]")
    page.wait_for_url(re.compile(r"/agent/runs/run_[^/]+$"))
    return page.url.rsplit("/", 1)[1]


def expect_transcript_of_the_edit(page: Page) -> None:
    """What the finished edit run shows, live or replayed."""
    messages = page.locator("[data-test=assistant-text]")
    expect(messages).to_have_text(["Let me read the file first.", "Fixed the greeting typo in src/app.py."])
    calls = page.locator("[data-test=tool-call]")
    expect(calls.locator("[data-test=tool-name]")).to_have_text(["read_file", "edit_file", "report_finding"])
    expect(calls.locator("[data-test=tool-summary]")).to_have_text(["src/app.py"] * 3)
    expect(calls.locator("[data-test=tool-state]")).to_have_text(["ok"] * 3)
    expect(page.locator("[data-test=retry]")).to_contain_text("Retry 1")
    finding = page.locator("[data-test=finding]")
    expect(finding).to_contain_text("src/app.py:2")
    expect(finding).to_contain_text("The <greeting> was misspelt.")
    change = page.locator("[data-test=file-change]")
    expect(change).to_have_count(1)
    expect(change.locator("[data-test=file-path]")).to_have_text("src/app.py")
    expect(change.locator("[data-test=file-change-kind]")).to_have_text("modified")
    expect(change.locator("[data-test=diff-del]")).to_have_text(["-    return f'helo, {name}'"])
    expect(change.locator("[data-test=diff-add]")).to_have_text(["+    return f'hello, {name}'"])
    expect(page.locator("[data-test=snapshot]").first).to_contain_text("before the first change")
    expect(page.locator("[data-test=end-status]")).to_have_text("succeeded")
    expect(page.locator("[data-test=run-status]")).to_have_text("succeeded")


def test_run_edit_replay_and_roll_back(daphne: Daphne, agent_model: ScriptedModelServer, settings: Any,
                                       browser: Browser) -> None:
    page, project, _, errors = open_agent_page(browser, daphne.url, settings, "ada")
    app = Path(project.root) / "src" / "app.py"
    expect(page.locator("[data-test=agent-model]")).to_have_value(agent_model.model)  # the server's default
    expect(page.locator("[data-test=run-card]")).to_be_hidden()

    # The estimate shows before anything starts (POST /api/budget/estimate as the task is typed).
    page.fill("[data-test=agent-model]", PRICED_MODEL)
    page.fill("[data-test=agent-task]", "Fix the greeting typo")
    estimate = page.locator("[data-test=agent-estimate]")
    expect(estimate).to_contain_text(f"Estimate for {PRICED_MODEL}: about $")
    expect(estimate).to_contain_text("no daily cap")
    expect(estimate).to_contain_text("genai-prices")
    assert Run.objects.count() == 0

    agent_model.fail(503, message="the model is overloaded")  # kf retries, and says so
    agent_model.reply("Let me read the file first.", usage=(1000, 200),
                      tool_calls=[{"name": "read_file", "arguments": {"path": "src/app.py"}}])
    agent_model.reply(usage=(1200, 100), tool_calls=[
        {"name": "edit_file", "arguments": {"path": "src/app.py", "search": "'helo, {name}'",
                                            "replace": "'hello, {name}'"}},
        {"name": "report_finding", "arguments": {"path": "src/app.py", "line": 2, "rule": "typo",
                                                 "severity": "warning", "message": "The <greeting> was misspelt."}}])
    agent_model.reply("Fixed the greeting typo in src/app.py.", usage=(1400, 50))
    run_id = start(page, "Fix the <b>greeting</b> typo", model=PRICED_MODEL)

    expect(page.locator("[data-test=run-task]")).to_have_text("Fix the <b>greeting</b> typo")  # as text
    expect(page.locator("[data-test=run-model]")).to_have_text(PRICED_MODEL)
    expect_transcript_of_the_edit(page)
    assert app.read_text() == FIXED
    # The page shows `end` as soon as it is in the log; the run's row is closed a moment later (after its
    # receipt is appended).
    run = wait_for(lambda: Run.objects.filter(pk=run_id, status__in=Run.FINAL).first())
    assert run.project_id == project.pk and run.model == PRICED_MODEL and run.status == "succeeded"
    assert run.usd > 0
    expect(page.locator("[data-test=run-cost]")).to_have_text(f"${run.usd}")
    expect(page.locator("[data-test=run-tokens]")).to_have_text("3600 · 350")
    expect(page.locator("[data-test=run-steps]")).to_have_text(f"3 / {run.max_steps}")
    expect(page.locator("[data-test=run-files]")).to_have_text("1")
    expect(page.locator("[data-test=run-cancel]")).to_be_hidden()
    assert {r.body["model"] for r in agent_model.requests} == {PRICED_MODEL}

    # A tool call is folded: its arguments and result show when it is opened.
    read_call = page.locator("[data-test=tool-call]").first
    expect(read_call.locator("[data-test=tool-content]")).to_be_hidden()
    read_call.locator("[data-test=tool-toggle]").click()
    expect(read_call.locator("[data-test=tool-arguments]")).to_contain_text('"path": "src/app.py"')
    expect(read_call.locator("[data-test=tool-content]")).to_contain_text("return f'helo, {name}'")

    # A reload (the address is the run's page now) replays the whole log.
    page.reload()
    expect(page.locator("[data-test=agent-title]")).to_have_text("Agent run")
    expect_transcript_of_the_edit(page)
    expect(page.locator("[data-test=run-cost]")).to_have_text(f"${run.usd}")

    # Roll back: the file changed after the run, so kf asks first and names it; then "roll back anyway".
    app.write_text(FIXED + "# edited by hand\n")
    page.click("[data-test=run-rollback]")
    conflict = page.locator("[data-test=rollback-conflict]")
    expect(conflict).to_be_visible()
    expect(conflict.locator("[data-test=rollback-conflict-paths] li")).to_have_text(["src/app.py"])
    assert app.read_text() == FIXED + "# edited by hand\n"
    page.click("[data-test=run-rollback-force]")
    expect(page.locator("[data-test=rollback-done]")).to_contain_text("1 file restored")
    expect(conflict).to_be_hidden()
    assert app.read_text() == APP

    # The history lists the run, linking to its page.
    page.click("nav >> text=Agent runs")
    row = page.locator("[data-test=run-row]", has_text="Fix the <b>greeting</b> typo")
    expect(row.locator("[data-test=run-row-status]")).to_have_text("succeeded")
    row.locator("[data-test=run-row-link]").click()
    page.wait_for_url(f"{daphne.url}/agent/runs/{run_id}")
    expect(page.locator("[data-test=end-status]")).to_have_text("succeeded")
    page.screenshot(path="/tmp/kf-agent-run.png", full_page=True)
    assert errors == []


def test_slow_run_followed_across_a_reload_and_cancelled(daphne: Daphne, agent_model: ScriptedModelServer,
                                                         settings: Any, browser: Browser) -> None:
    page, project, _, errors = open_agent_page(browser, daphne.url, settings, "cy")
    words = "I am thinking about this very slowly, one small piece at a time. " * 40
    agent_model.reply(words, chunk_delay=0.25)  # seven characters a chunk: minutes of text
    run_id = start(page, "Think slowly")
    text = page.locator("[data-test=assistant-text]")
    expect(text).to_contain_text("I am thinking")
    expect(page.locator("[data-test=run-status]")).to_have_text("running")

    # Reloaded mid-way: the text so far comes back from the log, and grows on live.
    page.reload()
    expect(text).to_contain_text("I am thinking")
    before = len(text.inner_text())
    expect(text).not_to_have_text(re.compile(rf"^.{{0,{before}}}$", re.DOTALL))
    expect(page.locator("[data-test=run-status]")).to_have_text("running")

    # The project's page, opened while the run goes on, shows and follows it too.
    page.goto(f"{daphne.url}/projects/{project.pk}/agent")
    expect(page.locator("[data-test=run-card]")).to_be_visible()
    expect(page.locator("[data-test=run-link]")).to_have_text(run_id)
    expect(text).to_contain_text("I am thinking")
    # Starting a second run now is refused: one run per project at a time.
    page.fill("[data-test=agent-task]", "another one")
    page.click("[data-test=agent-start]")
    expect(page.locator("[data-test=run-form-error]")).to_contain_text("already has an agent run in flight")

    page.click("[data-test=run-cancel]")
    expect(page.locator("[data-test=run-status]")).to_have_text("cancelled")
    expect(page.locator("[data-test=end-status]")).to_have_text("cancelled")
    expect(page.locator("[data-test=run-cancel]")).to_be_hidden()
    expect(page.locator("[data-test=end-error]")).to_be_visible()
    expect(page.locator("[data-test=run-error]")).to_be_hidden()  # the reason shows once, in the transcript
    # Its row in "Recent runs" (rendered while it ran) follows the card.
    row = page.locator("[data-test=run-row]", has=page.locator(f"a[href='/agent/runs/{run_id}']"))
    expect(row.locator("[data-test=run-row-status]")).to_have_text("cancelled")
    assert wait_for(lambda: Run.objects.filter(pk=run_id, status__in=Run.FINAL).first()).status == "cancelled"
    assert len(text.inner_text()) < len(words)  # it stopped mid-stream
    expect(page.locator("[data-test=run-rollback]")).to_be_hidden()  # it wrote nothing: nothing to roll back
    page.screenshot(path="/tmp/kf-agent-cancel.png", full_page=True)
    assert errors == []
