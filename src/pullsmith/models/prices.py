"""What a run's tokens cost: the price table (prices.toml, dated), config overrides, arithmetic.

A `Price` is US dollars per million tokens: uncached input, input read from the prompt cache,
input written to it, and output. `pricing_for(settings)` finds the model's price — the
config's `[prices."PATTERN"]` rows first, then the shipped table — and says where it came
from. The bundled local model and a replayed run cost 0 and say so; a model with no price is
`Pricing(price=None)`: its tokens are still counted, and every cost of it is None (unknown),
never an estimate.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib import resources
from typing import Any

from pullsmith.config import PriceSetting, Settings
from pullsmith.errors import UserError
from pullsmith.models.base import Usage

PRICES_FILE = "prices.toml"
PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float:
        """What `usage` costs at this price, in US dollars.

        `usage.prompt_tokens` holds every prompt token; those read from the cache are billed
        at `cached_input`, those written to it at `cache_write`, the rest at `input`.
        """
        read = max(0, usage.cached_tokens)
        written = max(0, usage.cache_write_tokens)
        uncached = max(0, usage.prompt_tokens - read - written)
        cached_input = self.input if self.cached_input is None else self.cached_input
        cache_write = self.input if self.cache_write is None else self.cache_write
        dollars = (
            uncached * self.input
            + read * cached_input
            + written * cache_write
            + max(0, usage.completion_tokens) * self.output
        )
        return dollars / PER

    def to_dict(self) -> dict[str, float]:
        return {
            "input": self.input,
            "cached_input": self.input if self.cached_input is None else self.cached_input,
            "cache_write": self.input if self.cache_write is None else self.cache_write,
            "output": self.output,
        }


@dataclass(frozen=True)
class Pricing:
    """The price a run is charged at, and where it came from; `price` None means unknown."""

    model: str
    price: Price | None
    # "the bundled local model", "a replay", "prices.toml of 2025-10-15 (claude-sonnet-4*)",
    # "the config (claude-*)", or "" when unknown.
    source: str = ""

    @property
    def known(self) -> bool:
        return self.price is not None

    def cost(self, usage: Usage) -> float | None:
        """What `usage` cost in US dollars, rounded to a millionth; None when unknown."""
        if self.price is None:
            return None
        return round(self.price.cost(usage), 6)

    def describe(self) -> dict[str, Any] | None:
        """The price as events carry it (task.started); None when unknown."""
        if self.price is None:
            return None
        return {**self.price.to_dict(), "source": self.source}


@dataclass(frozen=True)
class PriceTable:
    date: str
    rows: tuple[tuple[str, Price], ...]


def _price(row: Mapping[str, Any], where: str) -> Price:
    try:
        return Price(
            input=float(row["input"]),
            output=float(row["output"]),
            cached_input=float(row["cached_input"]) if "cached_input" in row else None,
            cache_write=float(row["cache_write"]) if "cache_write" in row else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad price row {where}: {exc}") from None


def parse_table(text: str) -> PriceTable:
    """A price table from TOML text: `date`, then `[models."PATTERN"]` rows."""
    raw = tomllib.loads(text)
    models = raw.get("models") or {}
    rows = tuple((str(k).lower(), _price(v, k)) for k, v in models.items())
    return PriceTable(date=str(raw.get("date") or ""), rows=rows)


@lru_cache(maxsize=1)
def shipped_table() -> PriceTable:
    """The table that ships with pullsmith (src/pullsmith/models/prices.toml)."""
    text = resources.files("pullsmith.models").joinpath(PRICES_FILE).read_text(encoding="utf-8")
    return parse_table(text)


def _names(model: str) -> tuple[str, ...]:
    name = model.strip().lower()
    short = name.rsplit("/", 1)[-1]
    return (name, short) if short != name else (name,)


def find_price(
    model: str,
    overrides: Iterable[PriceSetting] = (),
    table: PriceTable | None = None,
) -> tuple[Price, str] | None:
    """The first config row, then table row, whose pattern matches `model`; with its source."""
    names = _names(model)
    for row in overrides:
        if any(fnmatchcase(name, row.pattern) for name in names):
            price = Price(row.input, row.output, row.cached_input, row.cache_write)
            return price, f"the config ({row.pattern})"
    table = table or shipped_table()
    for pattern, price in table.rows:
        if any(fnmatchcase(name, pattern) for name in names):
            return price, f"{PRICES_FILE} of {table.date} ({pattern})"
    return None


FREE = Price(input=0.0, output=0.0, cached_input=0.0, cache_write=0.0)


def pricing_for(settings: Settings) -> Pricing:
    """The price of the model the settings ask for (see the module's docstring)."""
    model = settings.model_name
    provider = settings.provider_name
    if provider == "replay":
        return Pricing(model, FREE, "a replay (no model is called)")
    found = find_price(model, settings.prices)
    if found is not None and not found[1].startswith(PRICES_FILE):
        return Pricing(model, found[0], found[1])  # the config's word goes, even for local
    if provider == "local":
        return Pricing(model, FREE, "the bundled local model")
    if found is None:
        return Pricing(model, None, "")
    return Pricing(model, found[0], found[1])


def check_budget(settings: Settings, pricing: Pricing) -> None:
    """Refuse `max_cost` for a model whose price is unknown: the limit could never be kept."""
    if settings.max_cost is not None and not pricing.known:
        raise UserError(
            f"--max-cost needs the price of model '{pricing.model}', which pullsmith does not "
            f'know; add [prices."{pricing.model}"] with input and output (USD per million '
            "tokens) to pullsmith.toml, or drop --max-cost."
        )


def add_costs(costs: Iterable[float | None]) -> float | None:
    """The sum of costs, or None when any of them is unknown (or there are none)."""
    total = 0.0
    seen = False
    for cost in costs:
        if cost is None:
            return None
        total += cost
        seen = True
    return round(total, 6) if seen else None


def format_cost(cost: float | None, pricing_source: str | None = None) -> str:
    """A cost as the summaries print it: "$0.0123", "$0 (the bundled local model)", or
    "unknown (no price for this model)"."""
    if cost is None:
        return "unknown (no price for this model)"
    if cost == 0 and pricing_source:
        return f"$0 ({pricing_source})"
    if cost < 0.01:
        return f"${cost:.4f}"
    return f"${cost:.2f}"
