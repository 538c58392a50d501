"""The project pages driven end to end in headless Chromium against a real daphne (the rescan's
progress comes over SSE, which needs ASGI), with the real task runner behind it."""

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from conftest import Daphne, make_user
from projects.models import Project
from projects.tests import test_api
from projects.tests.test_api import APP_PY

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = account_browser.browser  # headless Chromium, as for the account pages
tree = test_api.tree  # the sample project's files, under KF_PROJECTS_ROOT


def new_page(browser: Browser, errors: list[str]) -> Page:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def test_load_browse_search_and_rescan(daphne: Daphne, task_runner: str, tree: Path, settings: Any,
                                       browser: Browser) -> None:
    # daphne runs with the production hashers; the tests' fast MD5 one is not among them.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user("pat@example.com", name="Pat")
    base = daphne.url
    errors: list[str] = []
    page = new_page(browser, errors)
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")

    # Load through the form on /projects; it opens the new project's page.
    page.click("nav >> text=Projects")
    page.wait_for_url(f"{base}/projects")
    page.fill("[data-test=load-path]", "no-such-folder")
    assert errors == []  # project.js set itself up
    page.click("[data-test=load-submit]")
    expect(page.locator("#load-path-error")).to_contain_text("No such folder")
    page.fill("[data-test=load-path]", tree.name)
    page.click("[data-test=load-submit]")
    page.wait_for_url(re.compile(rf"^{re.escape(base)}/projects/prj_\w+$"))
    project = Project.objects.get(root=str(tree.resolve()))
    assert page.url == f"{base}/projects/{project.pk}"
    expect(page.locator("[data-test=project-name]")).to_have_text(tree.name)

    # The first scan runs on its own; the page notices when it ends.
    expect(page.locator("[data-test=indexing-note]")).to_be_hidden(timeout=60_000)
    expect(page.locator("[data-test=stat-files]")).to_have_text("5")
    expect(page.locator("[data-test=stat-indexed] time")).to_be_visible()

    # The tree: one level, then a folder opened on demand.
    tree_el = page.locator("[data-test=tree]")
    expect(tree_el.locator("[data-test=tree-dir]")).to_have_count(2)  # build, src
    expect(tree_el.locator("[data-path='src/app.py']")).to_have_count(0)
    tree_el.locator("[data-test=tree-dir][data-path=src]").click()
    app = tree_el.locator("[data-test=tree-file][data-path='src/app.py']")
    expect(app).to_be_visible()
    expect(tree_el.locator("[data-test=tree-dir][data-path='src/pkg']")).to_have_attribute("aria-expanded", "false")

    # The viewer: highlighted, every line with its anchor.
    app.click()
    expect(page.locator("[data-test=file-path]")).to_have_text("src/app.py")
    code = page.locator("[data-test=code]")
    expect(code.locator(".highlight .kn").first).to_have_text("import")
    expect(code.locator("[id^=L-]")).to_have_count(APP_PY.count("\n"))
    expect(app).to_have_attribute("aria-current", "true")
    page.locator("[data-test=tree-file][data-path='README.md']").click()
    expect(page.locator("[data-test=file-path]")).to_have_text("README.md")

    # Search, and a result opens its file at its line.
    page.fill("[data-test=search-q]", "greet")
    page.click("[data-test=search-submit]")
    hits = page.locator("[data-test=search-hit]")
    expect(hits).to_have_count(3)  # as grep -n: lines 8, 9 ("greeting") and 14
    expect(page.locator("[data-test=search-summary]")).to_contain_text("3 matches")
    hit = page.locator("[data-test=search-hit-link]", has_text=re.compile(r"^src/app\.py:14:\d+$"))
    expect(hits.locator("mark").first).to_have_text("greet")
    hit.click()
    expect(page.locator("[data-test=file-path]")).to_have_text("src/app.py")
    current = page.locator("[data-test=current-line]")
    expect(current).to_have_attribute("id", "line-14")
    expect(current).to_contain_text("Greeter().greet")
    expect(current).to_be_in_viewport()
    assert page.evaluate("location.hash") == "#path=src/app.py&line=14"

    # A regex search with a bad pattern shows the API's message.
    page.check("[data-test=search-regex]")
    page.fill("[data-test=search-q]", "(")
    page.click("[data-test=search-submit]")
    expect(page.locator("[data-search-form] .form-error:visible, [data-search-form] .field-error:visible")).to_have_count(1)
    expect(hits).to_have_count(0)

    # Symbols: a method, found by its exact name, opens at its definition.
    page.fill("[data-test=symbols-q]", "greet")
    page.select_option("[data-test=symbols-mode]", "exact")
    page.click("[data-test=symbols-submit]")
    symbol = page.locator("[data-test=symbol-hit]")
    expect(symbol).to_have_count(1)
    expect(symbol).to_contain_text("Greeter.greet")
    expect(symbol).to_contain_text("src/app.py:8")
    symbol.locator("[data-test=symbol-link]").click()
    expect(current).to_have_attribute("id", "line-8")

    # Clicking a line number makes a shareable link to that line.
    page.locator("[data-test=code] a[href='#L-3']").click()
    expect(current).to_have_attribute("id", "line-3")
    assert page.evaluate("location.hash") == "#path=src/app.py&line=3"

    # Findings, filtered by severity, link to their lines.
    rows = page.locator("[data-test=finding-row]")
    expect(rows.filter(has_text="src/app.py:9")).to_contain_text("TODO: localise the greeting")
    expect(rows.filter(has_text="ruff-F821")).to_have_count(1)
    page.select_option("[data-test=findings-severity]", "error")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("ruff-F821")
    rows.locator("[data-test=finding-link]").click()
    expect(current).to_have_attribute("id", "line-14")
    page.select_option("[data-test=findings-severity]", "")
    todos = rows.filter(has=page.locator("code", has_text=re.compile("^todo$")))
    expect(todos).to_have_count(1)

    # Rescan: the bar follows the job's progress events to the end, then the counts show.
    (tree / "src" / "app.py").write_text(APP_PY + "\n\ndef extra():\n    return 1  # FIXME: more\n")
    page.evaluate("""() => {
        window.phases = [];
        const phase = document.querySelector('[data-rescan-phase]');
        new MutationObserver(() => window.phases.push(phase.textContent)).observe(phase, {childList: true});
    }""")
    page.click("[data-test=rescan]")
    expect(page.locator("[data-test=rescan-status]")).to_be_visible()
    done = page.locator("[data-test=rescan-done]")
    expect(done).to_be_visible(timeout=60_000)
    expect(done).to_have_text(re.compile(r"^5 files · \d+ symbols · \d+ findings · \d+ ms$"))
    expect(page.locator("[data-test=rescan-phase]")).to_have_text("done")
    assert page.evaluate("(() => { const b = document.querySelector('[data-rescan-bar]');"
                         " return b.value === b.max; })()")
    phases = page.evaluate("window.phases")
    assert {"walk", "index", "symbols", "findings"} <= set(phases), phases
    project.refresh_from_db()
    expect(page.locator("[data-test=stat-symbols]")).to_have_text(str(project.symbols_count))
    expect(page.locator("[data-test=stat-findings]")).to_have_text(str(project.findings_count))
    expect(todos).to_have_count(2)  # the new FIXME is listed
    expect(page.locator("[data-test=rescan]")).to_be_enabled()
    expect(code).to_contain_text("def extra")  # the open file was shown again

    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path="/tmp/kf-project.png", full_page=True)

    # A shared link opens the file at the line.
    other = new_page(browser, errors)
    other.context.add_cookies(page.context.cookies())
    other.goto(f"{base}/projects/{project.pk}#path=src/pkg/util.js&line=2")
    expect(other.locator("[data-test=file-path]")).to_have_text("src/pkg/util.js")
    expect(other.locator("[data-test=current-line]")).to_have_attribute("id", "line-2")
    expect(other.locator("[data-test=tree-file][data-path='src/pkg/util.js']")).to_have_attribute("aria-current", "true")
    assert errors == []  # no JavaScript error on the way
