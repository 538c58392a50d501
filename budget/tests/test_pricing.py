"""Prices of model calls from the pinned genai-prices list, offline."""

from decimal import Decimal

from budget.pricing import UNPRICED, price_usd


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
