"""The /secrets page in headless Chromium against a real daphne (the rotation's progress arrives over
SSE, which needs ASGI), with the real task runner behind it: set, reveal on click, delete, rotate."""

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from accounts.models import AuditRecord
from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from conftest import Daphne, make_user
from secrets_app.models import Rotation, Secret

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = account_browser.browser  # headless Chromium, as for the account pages

VALUE = "tok-5f2b-only-on-reveal"


def test_set_reveal_delete_and_rotate(daphne: Daphne, task_runner: str, settings: Any, browser: Browser) -> None:
    # daphne runs with the production hashers; the tests' fast MD5 one is not among them.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user("sam@example.com", name="Sam")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    base = daphne.url
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.click("nav >> text=Secrets")
    page.wait_for_url(f"{base}/secrets")
    expect(page.locator("[data-empty]")).to_be_visible()

    # Too big a value: the API's 413 shows by the field.
    page.fill("[data-test=secret-name]", "API_TOKEN")
    page.fill("[data-test=secret-value]", "x" * (settings.KF_SECRET_MAX_BYTES + 1))
    page.click("[data-test=secret-submit]")
    expect(page.locator("#secret-value-error")).to_be_visible()
    assert not Secret.objects.exists()

    # Set: the row appears, the value does not.
    page.fill("[data-test=secret-value]", VALUE)
    page.click("[data-test=secret-submit]")
    row = page.locator("[data-test=secret-row][data-secret-name=API_TOKEN]")
    expect(row.locator("[data-test=secret-row-version]")).to_have_text("1")
    expect(page.locator("[data-test=secret-form-ok]")).to_contain_text("Saved API_TOKEN")
    expect(page.locator("[data-test=secret-value]")).to_have_value("")
    assert VALUE not in page.content()
    page.fill("[data-test=secret-value]", VALUE + "-2")
    page.click("[data-test=secret-submit]")
    expect(row.locator("[data-test=secret-row-version]")).to_have_text("2")
    page.fill("[data-test=secret-name]", "ANOTHER")
    page.fill("[data-test=secret-value]", "another-value")
    page.click("[data-test=secret-submit]")
    expect(page.locator("[data-test=secret-row]")).to_have_count(2)
    assert errors == []

    # Reveal on click fetches the value; Hide takes it out of the page again.
    shown = row.locator("[data-test=secret-value-shown]")
    expect(shown).to_be_hidden()
    row.locator("[data-test=secret-reveal]").click()
    expect(shown).to_have_text(VALUE + "-2")
    assert AuditRecord.objects.filter(action="secret.reveal", actor=user, target="API_TOKEN").count() == 1
    row.locator("[data-test=secret-reveal]").click()
    expect(shown).to_be_hidden()
    assert VALUE not in page.content()

    # A reload renders names only.
    page.reload()
    expect(page.locator("[data-test=secret-row]")).to_have_count(2)
    assert VALUE not in page.content()

    # Delete needs a second click.
    other = page.locator("[data-test=secret-row][data-secret-name=ANOTHER]")
    other.locator("[data-test=secret-delete]").click()
    expect(other).to_be_visible()
    other.locator("[data-test=secret-delete]").click()
    expect(other).to_have_count(0)
    assert not Secret.objects.filter(name="ANOTHER").exists()

    # Rotate (operators): progress over SSE until the end.
    before = Secret.objects.get(name="API_TOKEN").key_version
    page.click("[data-test=rotate]")
    page.click("[data-test=rotate]")
    expect(page.locator("[data-test=rotation-done]")).to_contain_text(re.compile(r"Rotated to v\d+"), timeout=60_000)
    rotation = Rotation.objects.filter(started_by=user).get()
    assert rotation.status == "succeeded" and rotation.target_version > before
    expect(page.locator("[data-test=key-version]")).to_have_text(f"v{rotation.target_version}")
    assert Secret.objects.get(name="API_TOKEN").key_version == rotation.target_version
    row.locator("[data-test=secret-reveal]").click()
    expect(shown).to_have_text(VALUE + "-2")
    assert errors == []
    context.close()
