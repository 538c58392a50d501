"""The Auth and Account pages driven end to end in headless Chromium against a live server."""

import io
import re
import time
from base64 import b32decode
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.core import mail
from django.test import Client
from django_otp.oath import TOTP
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from accounts.models import User
from conftest import PASSWORD, wait_for

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API marks its event loop as running on this thread, and Django then refuses
    # the ORM calls that the test and its database teardown make here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # Connections opened by the test's ORM calls live in the context Playwright set up; close
            # them here, or the test database cannot be dropped at the end of the run.
            connections.close_all()


def new_page(browser: Browser) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    return context.new_page()


def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.click("[data-test=login-submit]")


def emailed_link(to: str) -> str:
    message = wait_for(lambda: next((m for m in mail.outbox if to in m.to), None), timeout=10)
    return re.search(r"https?://\S+", message.body).group(0)


def totp_code(key: bytes, *, offset: int = 0) -> str:
    totp = TOTP(key)
    totp.time = time.time() + offset
    return f"{totp.token():06d}"


def test_sign_up_verify_sign_in_and_two_factor(live_server: Any, transactional_db: None, settings: Any,
                                              browser: Browser) -> None:
    base = live_server.url
    settings.KF_BASE_URL = base  # the emailed link must point at the live server
    page = new_page(browser)

    page.goto(f"{base}/register")
    page.get_by_label("Name", exact=True).fill("Dana")
    page.get_by_label("Email", exact=True).fill("dana@example.com")
    page.get_by_label("Password", exact=True).fill("short")
    page.click("[data-test=register-submit]")
    expect(page.locator("#register-password-error")).to_be_visible()  # the API's message, by the field
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.click("[data-test=register-submit]")
    expect(page.locator("[data-test=register-done]")).to_contain_text("dana@example.com")

    # Signing in before confirming is refused with a way to get a new link.
    sign_in(page, base, "dana@example.com")
    expect(page.locator("[data-test=resend-verification]")).to_be_visible()

    link = emailed_link("dana@example.com")
    assert link.startswith(f"{base}/verify?token=")
    page.goto(link)
    expect(page.locator("[data-test=verify-ok]")).to_contain_text("dana@example.com")
    page.click("[data-test=verify-login]")
    page.wait_for_url(f"{base}/login")

    page.get_by_label("Email", exact=True).fill("dana@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.click("[data-test=login-submit]")
    page.wait_for_url(f"{base}/account")
    expect(page.locator("[data-test=whoami]")).to_have_text("Dana")
    expect(page.locator("[data-test=mfa-status]")).to_have_text("Off")

    # Two-factor: set up, confirm with a code, see the recovery codes once.
    page.click("[data-test=mfa-setup]")
    expect(page.locator("[data-test=mfa-secret]")).to_have_text(re.compile(r"^[A-Z2-7]{16,}=*$"))
    secret = page.locator("[data-test=mfa-secret]").inner_text().strip()
    page.wait_for_function("() => document.querySelector('[data-test=mfa-qr]').naturalWidth > 0")
    key = b32decode(secret)
    setup_code = totp_code(key)
    page.get_by_label("Code from the app").fill(setup_code)
    page.click("[data-test=mfa-verify-submit]")
    expect(page.locator("[data-test=recovery-codes] li")).to_have_count(10)
    expect(page.locator("[data-test=mfa-status]")).to_have_text("On")
    page.click("[data-test=mfa-done-ok]")
    expect(page.locator("[data-test=mfa-disable-submit]")).to_be_visible()
    expect(page.locator("[data-test=recovery-codes]")).to_have_count(0)  # never shown again

    page.click("[data-test=logout]")
    page.wait_for_url(f"{base}/login")
    assert page.context.request.get(f"{base}/api/account/me").status == 401

    # Signing in now asks for a code; the one spent at setup is refused (no replay).
    sign_in(page, base, "dana@example.com")
    otp = page.locator("[data-test=login-otp]")
    expect(otp).to_be_visible()
    assert page.url == f"{base}/login"
    otp.fill(setup_code)
    page.click("[data-test=login-submit]")
    expect(page.locator("#login-otp-error")).to_contain_text("not valid")
    time.sleep(1.2)  # django-otp's throttle after one wrong code
    otp.fill(totp_code(key, offset=30))  # the next time step: not yet spent
    page.click("[data-test=login-submit]")
    page.wait_for_url(f"{base}/account")
    expect(page.locator("[data-test=mfa-status]")).to_have_text("On")
    expect(page.locator("[data-test=audit-table]")).to_contain_text("mfa_enable")


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (79, 70, 229)).save(out, format="PNG")
    return out.getvalue()


def test_api_keys_sessions_avatar_and_export(live_server: Any, transactional_db: None, task_runner: str,
                                             owner: User, settings: Any, browser: Browser) -> None:
    base = live_server.url
    page = new_page(browser)
    sign_in(page, base, owner.email)
    page.wait_for_url(f"{base}/account")

    # A second browser signed in as the same user, to be revoked from the first.
    other = new_page(browser)
    sign_in(other, base, owner.email)
    other.wait_for_url(f"{base}/account")
    page.reload()
    rows = page.locator("[data-test=session-row]")
    expect(rows).to_have_count(2)
    expect(page.locator("[data-test=session-row][data-current] [data-test=this-session]")).to_be_visible()
    revoke = page.locator("[data-test=session-row]:not([data-current]) [data-test=session-revoke]")
    revoke.click()
    expect(revoke).to_have_text("Really revoke?")
    revoke.click()
    expect(rows).to_have_count(1)
    other.goto(f"{base}/account")
    assert other.url == f"{base}/login?next=/account"

    # API key: needs a recent sign-in, else the form offers to sign in again.
    page.locator("#api-keys").get_by_label("Name", exact=True).fill("ci-bot")
    page.check("[data-test=key-scope-write]")
    page.get_by_label("Expires after (days)").fill("30")
    settings.KF_RECENT_AUTH_SECONDS = 0
    page.click("[data-test=key-submit]")
    again = page.locator("#key-form [data-test=sign-in-again]")
    expect(again).to_be_visible()
    assert again.get_attribute("href") == "/login?next=%2Faccount"
    settings.KF_RECENT_AUTH_SECONDS = 3600

    # Then the full key is shown once, and the list keeps only its prefix.
    page.click("[data-test=key-submit]")
    expect(again).to_be_hidden()
    expect(page.locator("[data-test=new-key-value]")).to_have_text(re.compile(r"^kf_\S{20,}$"))
    raw = page.locator("[data-test=new-key-value]").inner_text().strip()
    key_row = page.locator("[data-test=key-row]")
    expect(key_row).to_have_count(1)
    prefix = key_row.locator("[data-test=key-prefix]").inner_text().rstrip("…")
    assert prefix.startswith("kf_") and raw.startswith(prefix) and prefix != raw
    expect(key_row).to_contain_text("read, write")
    assert Client().get("/api/account/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200

    # Avatar, multipart to the profile endpoint; shown in the page and the header.
    page.set_input_files("[data-test=avatar-file]", files=[{"name": "me.png", "mimeType": "image/png", "buffer": _png()}])
    page.click("[data-test=avatar-submit]")
    expect(page.locator("header img[data-avatar]")).to_be_visible()
    page.wait_for_function("() => { const img = document.querySelector('[data-test=avatar-img]');"
                           " return img.complete && img.naturalWidth === 64; }")

    # Export: polled until the zip is ready.
    page.click("[data-test=export-start]")
    link = page.locator("[data-test=export-link]")
    expect(link).to_be_visible(timeout=20_000)
    assert page.context.request.get(base + link.get_attribute("href")).headers["content-type"] == "application/zip"

    page.evaluate("window.scrollTo(0, 0)")  # the sticky header then sits at the top of the full-page shot
    page.screenshot(path="/tmp/kf-account.png", full_page=True)

    page.reload()
    assert raw not in page.content()  # shown once only
    expect(page.locator("[data-test=key-prefix]")).to_have_text(f"{prefix}…")
    revoke_key = page.locator("[data-test=key-revoke]")
    revoke_key.click()
    revoke_key.click()
    expect(page.locator("[data-test=key-row]")).to_have_count(0)
    expect(page.locator("[data-test=keys-table]")).to_contain_text("No API keys yet.")
    assert Client().get("/api/account/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401
