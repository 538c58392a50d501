"""The /receipts page in headless Chromium against a live server: verify a receipt from its row, download
its bundle and check it offline, then see verify name the receipt that was tampered with."""

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from conftest import make_user
from receipts.models import Receipt
from receipts.services import receipt_append
from receipts.tests.conftest import make_project, run_facts
from receipts.verify_bundle import verify

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = account_browser.browser  # headless Chromium, as for the account pages


def test_verify_download_and_tampering(live_server: Any, browser: Browser, tmp_path: Path,
                                       signing_key_b64: str) -> None:
    user = make_user("rita@example.com", name="Rita")
    project = make_project(tmp_path / "shop", user.workspaces.get(personal=True), user)
    receipts = [receipt_append(facts=run_facts(project, user=user)) for _ in range(3)]
    base = live_server.url
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.click("nav >> text=Receipts")
    page.wait_for_url(f"{base}/receipts")
    expect(page.locator("[data-test=receipt-row]")).to_have_count(3)
    expect(page.locator("[data-test=head-size]")).to_have_text("3")

    row = page.locator("[data-test=receipt-row][data-seq='2']")
    row.locator("[data-test=receipt-verify]").click()
    result = page.locator(f"[data-verify-result-for='{receipts[1].run_id}'] [data-test=verify-result]")
    expect(result).to_contain_text("Verified: 2 receipts recomputed up to seq 2")
    expect(result).to_contain_text("entry 2 of the 3")
    assert result.get_attribute("data-ok") == "true"

    with page.expect_download() as download:
        row.locator("[data-test=receipt-bundle]").click()
    assert download.value.suggested_filename == f"receipt-{receipts[1].run_id}.json"
    bundle = json.loads(Path(download.value.path()).read_text())
    assert verify(bundle).startswith("receipt seq 2")

    # Someone edits receipt 1 in the database: verifying receipt 3 names it.
    first = Receipt.objects.get(seq=1)
    Receipt.objects.filter(pk=first.pk).update(body=bytes(first.body).replace(b'"model":"gpt-4o-mini"',
                                                                               b'"model":"gpt-4o"'))
    page.locator("[data-test=receipt-row][data-seq='3'] [data-test=receipt-verify]").click()
    result = page.locator(f"[data-verify-result-for='{receipts[2].run_id}'] [data-test=verify-result]")
    expect(result).to_contain_text("Not verified (first bad receipt: 1): receipt 1")
    expect(result).to_contain_text("edited")
    assert result.get_attribute("data-ok") == "false"
    page.screenshot(path=str(tmp_path / "receipts.png"), full_page=True)
    assert errors == []
    context.close()
