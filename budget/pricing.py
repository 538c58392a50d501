"""What a model call costs: a workspace's own price for the model if an admin set one, else the price
from the `genai-prices` package's bundled list, used offline (kf never asks it to fetch an update, so a
price is the one of the pinned release, see requirements.txt), else 0.

A model neither knows (a self-hosted one, a new release) costs 0 and says so in its `source`
("unpriced"), so the user sees why a run shows $0 instead of a guess; an admin can then set its price
for the workspace (PriceOverride, 0 allowed).
"""

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage, calc_price

from accounts.models import Workspace
from budget.models import PriceOverride

USD_PLACES = Decimal("0.000001")  # the 6 decimal places every usd amount of kf is stored with
UNPRICED = "unpriced"
OVERRIDE = "override"
_PER_MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    usd: Decimal
    source: str  # "override", "genai-prices <provider>/<model>" or "unpriced"


@lru_cache(maxsize=256)
def _lookup(model: str) -> tuple[str, str] | None:
    """(provider id, model id) genai-prices matches `model` to, or None."""
    try:
        found = calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=model)
    except LookupError:
        return None
    return found.provider.id, found.model.id


@lru_cache(maxsize=256)
def context_window(model: str) -> int | None:
    """The model's context window in tokens, when genai-prices knows it."""
    match = _lookup(model)
    if match is None:
        return None
    found = calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=match[1], provider_id=match[0])
    return found.model.context_window


@dataclass(frozen=True)
class Rate:
    """How one model is priced in one workspace; `cost` is exact (unrounded), for sums of many calls."""

    model: str
    source: str
    override: tuple[Decimal, Decimal] | None = None  # usd per million input, output tokens
    match: tuple[str, str] | None = None  # genai-prices provider id, model id

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        if self.override is not None:
            per_input, per_output = self.override
            return (per_input * input_tokens + per_output * output_tokens) / _PER_MTOK
        if self.match is None:
            return Decimal(0)
        provider, model_id = self.match
        found = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens), model_ref=model_id,
                           provider_id=provider)
        return Decimal(found.total_price)


def rate_for(*, workspace: Workspace | None = None, model: str) -> Rate:
    override = (PriceOverride.objects.filter(workspace=workspace, model=model)
                .values_list("input_usd_per_mtok", "output_usd_per_mtok").first() if workspace is not None else None)
    if override is not None:
        return Rate(model=model, source=OVERRIDE, override=override)
    match = _lookup(model)
    if match is None:
        return Rate(model=model, source=UNPRICED)
    return Rate(model=model, source=f"genai-prices {match[0]}/{match[1]}", match=match)


def round_up(usd: Decimal) -> Decimal:
    """To a millionth of a dollar, upwards: a cost is never under-counted."""
    return usd.quantize(USD_PLACES, rounding="ROUND_CEILING")


def price_usd(*, workspace: Workspace | None = None, model: str, input_tokens: int, output_tokens: int) -> Price:
    """The cost of one call's tokens: the workspace's override for the model, else genai-prices, else 0
    ("unpriced"); rounded up to a millionth of a dollar."""
    rate = rate_for(workspace=workspace, model=model)
    return Price(round_up(rate.cost(input_tokens, output_tokens)), rate.source)
