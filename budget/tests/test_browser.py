"""The /budget page in headless Chromium against a live server: an admin sets the caps (a bad value shows
by its field), adds and removes a price for a self-hosted model, and estimates a run; the chart shows
today's spending."""

from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from accounts.tests import test_browser as account_browser
from accounts.tests.test_browser import sign_in
from budget.models import Cap, PriceOverride
from budget.services import call_settle, run_reserve
from budget.tests.conftest import personal, usd
from conftest import make_user
from projects.tests.test_browser import new_page

pytestmark = [pytest.mark.browser]

browser = account_browser.browser  # headless Chromium, as for the account pages


def test_caps_prices_and_an_estimate_from_the_page(live_server: Any, transactional_db: None, settings: Any,
                                                   browser: Browser) -> None:
    settings.KF_LLM_MODEL = "gpt-4o"
    user = make_user("bea@example.com", name="Bea")
    ws = personal(user)
    run_reserve(workspace=ws, user=user, run_id="run_seen", model="gpt-4o-mini", usd=usd("1"))
    call_settle(run_id="run_seen", model="gpt-4o-mini", input_tokens=1_000_000, output_tokens=0)  # $0.15 today
    base = live_server.url
    errors: list[str] = []
    page = new_page(browser, errors)
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/account")
    page.click("nav >> text=Budget")
    page.wait_for_url(f"{base}/budget")
    expect(page.locator("[data-test=chart-bar]")).to_have_count(30)
    expect(page.locator("[data-test=chart-bar]").last).to_have_attribute("data-usd", "0.150000")
    expect(page.locator("[data-test=standing-daily] [data-test=spent]")).to_have_text("$0.150000")

    # A negative cap: the API's 400 shows by the field, nothing is saved.
    page.fill("[data-test=cap-daily]", "-5")
    page.click("[data-test=caps-save]")
    expect(page.locator("#cap-daily-error")).to_be_visible()
    assert not Cap.objects.exists()

    page.fill("[data-test=cap-daily]", "2.5")
    page.fill("[data-test=cap-monthly]", "40")
    page.click("[data-test=caps-save]")
    expect(page.locator("[data-test=standing-daily] [data-test=cap]")).to_have_text("$2.500000")
    expect(page.locator("[data-test=chart-cap]")).to_have_count(1)
    cap = Cap.objects.get(workspace=ws, user__isnull=True)
    assert (cap.daily_usd, cap.monthly_usd) == (usd("2.5"), usd("40"))

    # Emptying a field removes that cap.
    page.fill("[data-test=cap-monthly]", "")
    page.click("[data-test=caps-save]")
    expect(page.locator("[data-test=standing-monthly] [data-test=cap]")).to_have_text("none")
    cap.refresh_from_db()
    assert cap.monthly_usd is None and cap.daily_usd == usd("2.5")

    # A self-hosted model's price, then gone again.
    page.fill("[data-test=price-model]", "llama-local")
    page.fill("[data-test=price-input]", "0.2")
    page.fill("[data-test=price-output]", "0.4")
    page.click("[data-test=price-save]")
    row = page.locator("[data-test=price-row][data-model=llama-local]")
    expect(row).to_contain_text("0.200000")

    page.fill("[data-test=estimate-task]", "Add input validation to the signup form.")
    page.fill("[data-test=estimate-model]", "llama-local")
    page.click("[data-test=estimate-submit]")
    expect(page.locator("[data-test=estimate-result]")).to_be_visible()
    expect(page.locator("[data-test=estimate-source]")).to_have_text("override")
    expect(page.locator("[data-test=estimate-remaining]")).to_have_text("$1.500000")  # 2.5 − 0.15 spent − 0.85 still held by run_seen
    assert usd(page.locator("[data-test=estimate-high]").text_content().lstrip("$")) > 0

    row.locator("[data-test=price-delete]").click()
    row.locator("[data-test=price-delete]").click()  # confirm
    expect(row).to_have_count(0)
    assert not PriceOverride.objects.exists()

    # A bad estimate request shows the API's message.
    page.fill("[data-test=estimate-steps]", "0")
    page.click("[data-test=estimate-submit]")
    expect(page.locator("[data-test=estimate-form] [data-error-for=max_steps]")).to_be_visible()
    assert errors == []
