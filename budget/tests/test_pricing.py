"""Prices of model calls: the workspace's own price first, then the pinned genai-prices list, offline."""

from decimal import Decimal

import pytest

from accounts.models import User, Workspace
from budget.models import PriceOverride
from budget.pricing import OVERRIDE, UNPRICED, context_window, price_usd, rate_for
from budget.tests.conftest import personal


def test_a_known_model_is_priced_from_the_list() -> None:
    price = price_usd(model="gpt-4o", input_tokens=1_000_000, output_tokens=100_000)
    assert price.usd == Decimal("3.500000")  # $2.50 / M input + $10 / M output
    assert price.source == "genai-prices openai/gpt-4o"


def test_amounts_are_rounded_up_to_a_millionth_of_a_dollar() -> None:
    assert price_usd(model="gpt-4o-mini", input_tokens=1, output_tokens=0).usd == Decimal("0.000001")
    assert price_usd(model="gpt-4o-mini", input_tokens=0, output_tokens=0).usd == Decimal(0)


def test_an_unknown_model_costs_nothing_and_says_so() -> None:
    price = price_usd(model="my-local-llama", input_tokens=10_000, output_tokens=500)
    assert price.usd == Decimal(0) and price.source == UNPRICED


def test_the_context_window_comes_from_the_list() -> None:
    assert context_window("gpt-4o") == 128_000
    assert context_window("my-local-llama") is None


@pytest.mark.django_db
def test_a_workspace_override_prices_an_unknown_model(owner: User) -> None:
    ws = personal(owner)
    PriceOverride.objects.create(workspace=ws, model="my-local-llama", input_usd_per_mtok=Decimal("0.5"),
                                 output_usd_per_mtok=Decimal("1.25"))
    price = price_usd(workspace=ws, model="my-local-llama", input_tokens=2_000_000, output_tokens=400_000)
    assert price.usd == Decimal("1.500000") and price.source == OVERRIDE
    # Rounded up: 1 input token at $0.5/M is $0.0000005 → $0.000001.
    assert price_usd(workspace=ws, model="my-local-llama", input_tokens=1, output_tokens=0).usd == Decimal("0.000001")


@pytest.mark.django_db
def test_an_override_wins_over_the_list_and_zero_is_allowed(owner: User) -> None:
    ws = personal(owner)
    PriceOverride.objects.create(workspace=ws, model="gpt-4o", input_usd_per_mtok=0, output_usd_per_mtok=0)
    price = price_usd(workspace=ws, model="gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000)
    assert price.usd == Decimal(0) and price.source == OVERRIDE
    assert rate_for(workspace=ws, model="gpt-4o").cost(10, 10) == 0


@pytest.mark.django_db
def test_an_override_applies_to_its_workspace_only(owner: User, team: Workspace) -> None:
    PriceOverride.objects.create(workspace=team, model="my-local-llama", input_usd_per_mtok=1, output_usd_per_mtok=1)
    assert price_usd(workspace=personal(owner), model="my-local-llama", input_tokens=10**6,
                     output_tokens=0).source == UNPRICED
    assert price_usd(model="my-local-llama", input_tokens=10**6, output_tokens=0).source == UNPRICED
    assert price_usd(workspace=team, model="my-local-llama", input_tokens=10**6,
                     output_tokens=0).usd == Decimal("1.000000")


def test_exact_costs_add_up_before_rounding() -> None:
    rate = rate_for(model="gpt-4o-mini")
    # 1 token costs $0.00000015: ten calls of one token are $0.0000015 before rounding, not 10 × $0.000001.
    assert sum(rate.cost(1, 0) for _ in range(10)) == Decimal("0.0000015")
