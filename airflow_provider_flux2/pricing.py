"""Megapixels and money: the only place either is computed.

One megapixel is 1,048,576 pixels (2^20), rounded up per image, at least one. That is the only unit
that reproduces every row of the vendor's table: 1024×1024 → 1 MP → $0.030, 1920×1080 → 2 MP →
$0.045, 2048×2048 → 4 MP → $0.075, 4096×4096 → 16 MP → $0.255 (FLUX 2 [pro]: $0.030 for the first
megapixel, $0.015 for each further one). Prices are ``Decimal`` and live in one table keyed by
variant, which a connection can override because vendors change prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Union

from airflow_provider_flux2.exceptions import BudgetExceededError, FluxValidationError
from airflow_provider_flux2.image_header import data_uri_size
from airflow_provider_flux2.megapixels import ASSUMED_REFERENCE_MP as ASSUMED_REFERENCE_MP
from airflow_provider_flux2.megapixels import MEGAPIXEL as MEGAPIXEL
from airflow_provider_flux2.megapixels import billed_megapixels as billed_megapixels
from airflow_provider_flux2.models import MODEL_IDS, Variant, for_route, is_edit_model, resolve_variant, target_model
from airflow_provider_flux2.money import cents as cents
from airflow_provider_flux2.money import format_usd
from airflow_provider_flux2.urls import is_storage_reference

if TYPE_CHECKING:
    from airflow_provider_flux2.models import FluxInput, ImageRecord, Run
    from airflow_provider_flux2.references import ReferenceResolver


@dataclass(frozen=True)
class Price:
    """Price of one model: the first megapixel, each further one (input references: ``extra_mp``).

    :param estimate: no Runflow page (or doctor's measurement) confirms it.
    :param ceiling: the highest ``(first_mp, extra_mp)`` any source names, where sources disagree;
        budgets and the balance check use it until the price is measured.
    :param per_image: billed one flat price per image, whatever its size and references.
    """

    first_mp: Decimal
    extra_mp: Decimal
    estimate: bool = False
    source: str = ""
    ceiling: tuple[Decimal, Decimal] | None = None
    per_image: bool = False

    def cost(self, megapixels: int, reference_mp: int = 0) -> Decimal:
        """Cost of one output of ``megapixels`` plus ``reference_mp`` of input reference images."""
        if self.per_image:
            return self.first_mp
        return self.first_mp + self.extra_mp * (megapixels - 1) + self.extra_mp * reference_mp

    def worst_cost(self, megapixels: int, reference_mp: int = 0) -> Decimal:
        """The cost at the highest price any source names (the cost itself once measured, or when no
        source names a higher one): what budgets and the balance check count."""
        cost = self.cost(megapixels, reference_mp)
        if not self.estimate or self.ceiling is None:
            return cost
        high = replace(self, first_mp=self.ceiling[0], extra_mp=self.ceiling[1], ceiling=None)
        return max(cost, high.cost(megapixels, reference_mp))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "first_mp": str(self.first_mp),
            "extra_mp": str(self.extra_mp),
            "estimate": self.estimate,
            "source": self.source,
        }
        if self.per_image:
            out["per_image"] = True
        if self.ceiling is not None:
            out["ceiling"] = [str(v) for v in self.ceiling]
        return out


#: The price table. Pro and flex are Runflow's published figures (the seed page, its flex page); max and
#: turbo have no Runflow figure, so they carry the best public numbers and are flagged as estimates;
#: klein 4B and 9B are Runflow's per-megapixel figures at the time of writing, also flagged as estimates.
DEFAULT_PRICES: dict[Variant, Price] = {
    Variant.PRO: Price(Decimal("0.030"), Decimal("0.015"), source="runflow.io flux-2-pro page"),
    Variant.FLEX: Price(Decimal("0.05"), Decimal("0.05"), source="runflow.io flux-2-flex page"),
    Variant.MAX: Price(Decimal("0.07"), Decimal("0.03"), estimate=True, source="Black Forest Labs list price (bfl.ai)"),
    Variant.TURBO: Price(Decimal("0.008"), Decimal("0.008"), estimate=True, source="fal.ai FLUX.2 turbo list price"),
    # Runflow's model page says $0.005/MP for 4B; its llms.txt says $0.014: budgets use the higher
    # figure (the ceiling) until a real run's ``cost`` measures it (``flux2 doctor --write-prices``).
    Variant.KLEIN_4B: Price(
        Decimal("0.005"),
        Decimal("0.005"),
        estimate=True,
        source="docs.runflow.io flux-2-klein-4b page ($0.014 in Runflow's llms.txt)",
        ceiling=(Decimal("0.014"), Decimal("0.014")),
    ),
    Variant.KLEIN_9B: Price(
        Decimal("0.006"), Decimal("0.006"), estimate=True, source="docs.runflow.io flux-2-klein-9b page"
    ),
}
#: The edit models' own rows (``models.EDIT_MODELS`` routes references to them), per their pages.
DEFAULT_EDIT_PRICES: dict[str, Price] = {
    # "$0.005/image ... per image, 1024x1024": flat, whatever the references.
    "black-forest-labs/flux-2-klein-4b/edit": Price(
        Decimal("0.005"),
        Decimal("0"),
        estimate=True,
        source="docs.runflow.io flux-2-klein-4b/edit page",
        per_image=True,
    ),
    # "$0.011/megapixel ... Per megapixel (input + output)".
    "black-forest-labs/flux-2-klein-9b/edit": Price(
        Decimal("0.011"), Decimal("0.011"), estimate=True, source="docs.runflow.io flux-2-klein-9b/edit page"
    ),
}


@dataclass(frozen=True)
class PriceTable:
    """Prices by variant (and by edit model); build one from a connection's ``prices`` extra with
    :meth:`with_overrides`."""

    prices: Mapping[Variant, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    edit_prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_EDIT_PRICES))

    def price(self, model: Variant | str | None) -> Price:
        """The price of a variant, or of the model a request was routed to (an edit model's own row;
        a recorded ``…/edit`` route without a row of its own is priced as its variant)."""
        if isinstance(model, str) and model.strip().lower() in self.edit_prices:
            return self.edit_prices[model.strip().lower()]
        return self.prices[resolve_variant(model)]

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> PriceTable:
        """Override prices, e.g. ``{"pro": {"first_mp": "0.03", "extra_mp": "0.015"}, "max": "0.08",
        "black-forest-labs/flux-2-klein-4b/edit": "0.005"}``.

        A single number sets both the first and the extra megapixel price (an edit model billed per
        image keeps its per-image rule). An overridden price is no longer an estimate.
        """
        if not overrides:
            return self
        prices, edits = dict(self.prices), dict(self.edit_prices)
        for name, value in overrides.items():
            key = str(name).strip().lower()
            base = edits[key] if key in edits else prices[resolve_variant(name)]
            if isinstance(value, Mapping):
                unknown = set(value) - {"first_mp", "extra_mp"}
                if unknown:
                    raise FluxValidationError(field=f"prices.{name}", value=value, allowed="keys first_mp and extra_mp")
                first = _decimal(value.get("first_mp", base.first_mp), f"prices.{name}.first_mp")
                extra = _decimal(value.get("extra_mp", base.extra_mp), f"prices.{name}.extra_mp")
            else:
                first = extra = _decimal(value, f"prices.{name}")
            if base.per_image:
                extra = Decimal("0")
            new = replace(base, first_mp=first, extra_mp=extra, estimate=False, source="connection override")
            if key in edits:
                edits[key] = new
            else:
                prices[resolve_variant(name)] = new
        return PriceTable(prices, edits)

    def as_dict(self) -> dict[str, Any]:
        out = {variant.model_id: price.as_dict() for variant, price in self.prices.items()}
        out.update({model: price.as_dict() for model, price in self.edit_prices.items()})
        return out


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, float):
        value = repr(value)  # 0.03 → "0.03", never the binary expansion
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise FluxValidationError(field=name, value=value, allowed="a decimal number of dollars") from None
    if not result.is_finite() or result < 0:
        raise FluxValidationError(field=name, value=value, allowed="a non-negative decimal number of dollars")
    return result


def to_usd(value: Any, name: str = "budget_usd") -> Decimal:
    """Parse a dollar amount (str, int, float or Decimal) exactly."""
    return _decimal(value, name)


#: Dollars as text with at least three decimals (``0.045``); one formatter for messages and tables.
usd = format_usd


def reference_megapixels(
    image_urls: Iterable[str] | None, sizes: Sequence[tuple[int, int] | None] | None = None
) -> int:
    """Billed megapixels of input reference images: each measured (``sizes``, read from the image
    header by :mod:`~airflow_provider_flux2.references`; data URIs) or assumed 1 MP."""
    total = 0
    for index, url in enumerate(image_urls or ()):
        size = sizes[index] if sizes is not None and index < len(sizes) else None
        size = size or data_uri_size(url)
        total += billed_megapixels(*size) if size else ASSUMED_REFERENCE_MP
    return total


@dataclass(frozen=True)
class ItemCost:
    """What one image should cost: at the table's price (``cost``) and at the highest price any source
    names (``worst``, what budgets count), on the model it is sent to (``model``)."""

    index: int
    model: str
    width: int
    height: int
    billed_mp: int
    reference_mp: int
    cost: Decimal
    worst: Decimal | None = None
    #: The price is an estimate (no Runflow page or measurement confirms it).
    estimated: bool = False
    #: References go to a model no page or doctor's record confirms takes them.
    unverified_route: bool = False

    @property
    def budgeted(self) -> Decimal:
        return self.cost if self.worst is None else self.worst


@dataclass(frozen=True)
class CostEstimate:
    """Per-image costs and their exact total."""

    items: tuple[ItemCost, ...]
    prices: PriceTable

    @property
    def total(self) -> Decimal:
        return sum((item.cost for item in self.items), Decimal("0"))

    @property
    def worst_total(self) -> Decimal:
        """The total at the highest price any source names: what a budget and the balance are checked against."""
        return sum((item.budgeted for item in self.items), Decimal("0"))

    @property
    def total_mp(self) -> int:
        return sum(item.billed_mp + item.reference_mp for item in self.items)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def estimated_models(self) -> list[str]:
        """Models whose price is only the table's estimate (sorted)."""
        return sorted({item.model for item in self.items if item.estimated})

    @property
    def unverified_routes(self) -> list[str]:
        """Models sent references without a page or a doctor's record saying they take them."""
        return sorted({item.model for item in self.items if item.unverified_route})

    def caveats(self) -> str:
        """`` · estimated price: … (budgeted at $X) · references unverified on …`` for a plan line."""
        text = ""
        if self.estimated_models:
            text += f" · estimated price: {', '.join(self.estimated_models)}"
            if self.worst_total != self.total:
                text += f" (budgeted at ${cents(self.worst_total)}, the highest published figure)"
        if self.unverified_routes:
            text += f" · references unverified on {', '.join(self.unverified_routes)} (run flux2 doctor)"
        return text

    def by_size(self) -> list[dict[str, Any]]:
        """Rows grouped by (model, size) for tables: count, MP per image, unit cost, subtotal."""
        groups: dict[tuple[str, int, int, int], list[ItemCost]] = {}
        for item in self.items:
            groups.setdefault((item.model, item.width, item.height, item.reference_mp), []).append(item)
        rows = []
        for (model, width, height, ref_mp), items in groups.items():
            rows.append(
                {
                    "model": model,
                    "width": width,
                    "height": height,
                    "count": len(items),
                    "billed_mp": items[0].billed_mp,
                    "reference_mp": ref_mp,
                    "unit_cost": items[0].cost,
                    "subtotal": sum((i.cost for i in items), Decimal("0")),
                    "estimated": items[0].estimated,
                }
            )
        return rows


def routed(
    model: Variant | str | None, request: FluxInput, routes: Mapping[str, str] | None = None
) -> tuple[str, FluxInput, bool]:
    """``(model id, request, verified)``: where ``request`` goes, and the request as that model takes it.

    A variant (or its short name) is routed by :func:`~airflow_provider_flux2.models.target_model`
    (references to the variant's edit model where one is documented or recorded); a full model id
    (``black-forest-labs/flux-2-klein-4b/edit``) is taken as the target it names.
    """
    name = model.strip().lower() if isinstance(model, str) else None
    if name is not None and (name in MODEL_IDS or is_edit_model(name) or name.endswith("/edit")):
        target, verified = name, True
    else:
        target, verified = target_model(resolve_variant(model), bool(request.image_urls), dict(routes or {}))
    return target, for_route(target, request), verified


def item_cost(
    model: Variant | str | None,
    request: FluxInput,
    table: PriceTable | None = None,
    index: int = 0,
    *,
    routes: Mapping[str, str] | None = None,
) -> ItemCost:
    """Price one request (its output size and any reference images) on the model it is sent to."""
    table = table or PriceTable()
    target, request, verified = routed(model, request, routes)
    mp = billed_megapixels(request.width, request.height)
    ref_mp = reference_megapixels(request.image_urls, request.reference_sizes)
    price = table.price(target)
    return ItemCost(
        index=index,
        model=target,
        width=request.width,
        height=request.height,
        billed_mp=mp,
        reference_mp=ref_mp,
        cost=price.cost(mp, ref_mp),
        worst=price.worst_cost(mp, ref_mp),
        estimated=price.estimate,
        unverified_route=not verified,
    )


PlanInput = Union["FluxInput", Mapping[str, Any]]
#: One item of a plan to price: an input, or a ``(model, input)`` pair.
PlanItem = Union[PlanInput, "tuple[Variant | str | None, PlanInput]"]


def estimate(
    requests: Iterable[PlanItem],
    table: PriceTable | None = None,
    *,
    model: Variant | str | None = None,
    references: ReferenceResolver | None = None,
    routes: Mapping[str, str] | None = None,
) -> CostEstimate:
    """Price a plan before anything is sent.

    Each item is a :class:`~airflow_provider_flux2.models.FluxInput` (priced for its variant, or
    ``model``), a mapping of generation parameters (``{"prompt": ..., "image_size": "1920x1080"}``,
    optionally with ``"model"``), or a ``(model, input)`` pair. Invalid parameters raise
    :class:`FluxValidationError` naming the item. Requests with reference images are priced on the
    model they are routed to (``routes``: the connection's ``edit_models`` record).

    Reference images are priced at their real size: a ``data:`` URI is decoded, and an ``s3://``
    object or a local file not measured yet is measured from its header through ``references``
    (a :class:`~airflow_provider_flux2.references.ReferenceResolver`; by default one with boto3's
    credential chain), one read per distinct reference. One that cannot be read raises
    :class:`FluxValidationError` naming ``requests[i].image_urls[j]``. ``http(s)`` references are
    not fetched: they are priced at the 1 MP minimum.
    """
    table = table or PriceTable()
    measuring = _Measuring(references)
    items = []
    for index, entry in enumerate(requests):
        variant, request = _plan_item(entry, model, index)
        request = measuring.measured(request, index)
        items.append(item_cost(variant, request, table, index, routes=routes))
    return CostEstimate(items=tuple(items), prices=table)


class _Measuring:
    """Measures a plan's unmeasured storage references, with one resolver made when first needed."""

    def __init__(self, resolver: ReferenceResolver | None) -> None:
        self.resolver = resolver

    def measured(self, request: FluxInput, index: int) -> FluxInput:
        from airflow_provider_flux2.references import ReferenceResolver

        sources = list(request.image_urls or [])
        if request.reference_sizes is not None or not any(is_storage_reference(s) for s in sources):
            return request
        if self.resolver is None:
            self.resolver = ReferenceResolver()
        try:
            return self.resolver.measured(request, sources)
        except FluxValidationError as error:
            raise FluxValidationError(
                field=f"requests[{index}].{error.field}",
                value=error.value,
                allowed=error.allowed,
                details=error.details,
            ) from None


def _plan_item(entry: Any, model: Variant | str | None, index: int) -> tuple[Variant | str, FluxInput]:
    """``(model, input)`` of one plan item: a variant, or the full model id it names (kept for routing)."""
    from airflow_provider_flux2.models import FluxInput, build_input

    if isinstance(entry, tuple) and len(entry) == 2:
        model, entry = entry
    if isinstance(entry, FluxInput):
        variant = resolve_variant(model or entry.variant)
        return (model if isinstance(model, str) and "/" in model else variant), entry
    if isinstance(entry, Mapping):
        fields = dict(entry)
        named = model or fields.pop("model", None)
        fields.pop("model", None)
        variant = resolve_variant(named)
        try:
            return (named if isinstance(named, str) and "/" in named else variant), build_input(variant, **fields)
        except FluxValidationError as error:
            field = f"requests[{index}].{error.field}"
            raise FluxValidationError(
                field=field, value=error.value, allowed=error.allowed, details=error.details
            ) from None
    raise FluxValidationError(
        field=f"requests.{index}",
        value=entry,
        allowed="a FluxInput, a mapping of generation parameters, or a (model, input) pair",
    )


@dataclass(frozen=True)
class Budget:
    """A spending limit; :meth:`check` refuses a plan over it, naming the estimate and the limit."""

    limit: Decimal
    scope: str = "task"

    def __post_init__(self) -> None:
        if not isinstance(self.limit, Decimal):  # Budget("5.00") or Budget(5) work as Budget.of does
            object.__setattr__(self, "limit", to_usd(self.limit))

    @classmethod
    def of(cls, limit: Any, scope: str = "task") -> Budget | None:
        """A budget from a user value, or ``None`` when no limit is set."""
        if limit is None or limit == "":
            return None
        return cls(to_usd(limit), scope)

    def check(self, amount: Decimal | CostEstimate, *, spent: Decimal = Decimal("0")) -> None:
        """Raise :class:`BudgetExceededError` if ``spent`` plus ``amount`` is over the limit."""
        images = amount.count if isinstance(amount, CostEstimate) else 0
        # A plan counts at the highest price any source names until the price is measured.
        planned = amount.worst_total if isinstance(amount, CostEstimate) else amount
        if spent + planned > self.limit:
            raise BudgetExceededError(estimate=spent + planned, limit=self.limit, scope=self.scope, images=images)

    def remaining(self, spent: Decimal) -> Decimal:
        return max(Decimal("0"), self.limit - spent)


# --------------------------------------------------------------------------------------------------
# What an image cost: the one place that decides it
# --------------------------------------------------------------------------------------------------


def image_cost(estimate: ItemCost, run: Run) -> tuple[Decimal, Decimal | None]:
    """``(cost, api_cost)`` of one finished run: what the API billed when it says, the estimate otherwise.

    A run that did not succeed costs nothing (the API does not bill failed runs).
    """
    from airflow_provider_flux2.models import RunStatus

    api_cost = run.cost  # checked once, when the run was read (models.parse_money)
    if run.status_code != RunStatus.SUCCEEDED:
        return Decimal("0"), api_cost
    return (api_cost if api_cost is not None else estimate.cost), api_cost


#: Record statuses whose runs the API has not billed (or not yet), whatever ``cost_usd`` says.
UNBILLED_STATUSES = frozenset({"failed", "pending"})


#: The failure code of a run that finished (and billed) at the API but whose image could not be stored.
NOT_STORED = "NOT_STORED"


def billed_cost(record: ImageRecord) -> Decimal:
    """What one image's record says it cost: its ``cost_usd`` (decided by :func:`image_cost`), or nothing
    when its run was not billed (failed, or never sent). A ``pending`` image the API finished but that
    could not be stored (:data:`NOT_STORED`) was billed."""
    if record.status in UNBILLED_STATUSES and record.failure_code != NOT_STORED:
        return Decimal("0")
    return Decimal(record.cost_usd)


def billed_total(records: Iterable[ImageRecord]) -> tuple[Decimal, int]:
    """``(dollars, megapixels)`` the records say were billed: the sum of their :func:`billed_cost`, and the
    megapixels of those that cost something."""
    spent, megapixels = Decimal("0"), 0
    for record in records:
        cost = billed_cost(record)
        spent += cost
        megapixels += record.billed_mp if cost > 0 else 0
    return spent, megapixels
