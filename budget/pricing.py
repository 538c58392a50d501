"""What a model call costs, from the `genai-prices` package's bundled price list, used offline: kf never
asks it to fetch an update, so a price is the one of the pinned release (see requirements.txt).

A model the list does not know (a self-hosted one, a new release) costs 0 and says so in its
`source` ("unpriced"), so the user sees why a run shows $0 instead of a guess. (Per-workspace price
overrides for such models belong to the budget caps: the budget issue.)
"""

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage, calc_price

USD_PLACES = Decimal("0.000001")  # the 6 decimal places every usd amount of kf is stored with
UNPRICED = "unpriced"


@dataclass(frozen=True)
class Price:
    usd: Decimal
    source: str  # "genai-prices <provider>/<model>" or "unpriced"


@lru_cache(maxsize=256)
def _lookup(model: str) -> tuple[str, str] | None:
    """(provider id, model id) genai-prices matches `model` to, or None."""
    try:
        found = calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=model)
    except LookupError:
        return None
    return found.provider.id, found.model.id


def price_usd(*, model: str, input_tokens: int, output_tokens: int) -> Price:
    """The cost of one call's tokens, rounded up to a millionth of a dollar (never under-counted)."""
    match = _lookup(model)
    if match is None:
        return Price(Decimal(0), UNPRICED)
    provider, model_id = match
    found = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens), model_ref=model_id,
                       provider_id=provider)
    usd = Decimal(found.total_price).quantize(USD_PLACES, rounding="ROUND_CEILING")
    return Price(usd, f"genai-prices {provider}/{model_id}")
