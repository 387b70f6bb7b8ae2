"""FluxPlanNightOperator: one budget for a night split across mapped tasks.

``budget_usd`` of a generate task caps that task; a night of ten shards needs one figure. This step
prices every image of the night, checks the night's budget and the organisation's credit balance, and
fails before any shard starts; it returns one entry per shard (its prompts and its share of the budget)
for ``FluxGenerateImageOperator.partial(...).expand_kwargs(plan.output)``::

    plan = FluxPlanNightOperator(task_id="plan", prompts=prompts, shards=10, budget_usd="350", image_size="square_hd")
    FluxGenerateImageOperator.partial(
        task_id="generate", image_size="square_hd", max_in_flight=8, pool="flux2_api", pool_slots=8, deferrable=True
    ).expand_kwargs(plan.output)

Each shard's share is its own worst-case estimate plus its part of the night's slack, so every shard
fits its own check and the shares never add up to more than the night's budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_FLOOR, Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_flux2.arguments import check_int, check_operator_arguments, is_templated
from airflow_provider_flux2.exceptions import FluxValidationError, InsufficientBalanceError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import merge_item
from airflow_provider_flux2.models import GENERATION_PARAMS, resolve_variant
from airflow_provider_flux2.pricing import Budget, CostEstimate, cents, estimate, usd

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The precision of a shard's share of the night's budget (a tenth of a cent, as prices are quoted).
SHARE_STEP = Decimal("0.001")


class FluxPlanNightOperator(BaseOperator):
    """Price a night's images, check its budget and the balance, and split it into shards.

    :param prompts: the night's prompts (strings, or dicts with ``prompt`` and per-item keys, as the
        generate operator takes them).
    :param shards: how many mapped tasks share the night (or give ``shard_size``).
    :param shard_size: images per shard, instead of ``shards``.
    :param budget_usd: the night's budget: the plan is refused over it, and each shard carries its share.
    :param model: the night's model (default: the connection's); items may name their own.
    :param flux_conn_id: the ``flux2`` connection (prices and the balance).
    :param insufficient_balance_action: ``fail`` (default) or ``warn`` when the night costs more than
        the organisation's credit balance.
    :param kwargs: the generation parameters the shards will use (``image_size``, ``output_format``…),
        for pricing; pass the same ones to the generate operator's ``partial``.
    """

    template_fields: Sequence[str] = ("prompts", "shards", "shard_size", "budget_usd", "model")
    template_fields_renderers = {"prompts": "json"}
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        prompts: Any,
        shards: int | None = None,
        shard_size: int | None = None,
        budget_usd: str | float | Decimal | None = None,
        model: str | None = None,
        flux_conn_id: str = FluxHook.default_conn_name,
        insufficient_balance_action: str = "fail",
        **kwargs: Any,
    ) -> None:
        params = {name: kwargs.pop(name) for name in GENERATION_PARAMS if name in kwargs}
        super().__init__(**kwargs)
        self.prompts = prompts
        self.shards = shards
        self.shard_size = shard_size
        self.budget_usd = budget_usd
        self.model = model
        self.flux_conn_id = flux_conn_id
        self.insufficient_balance_action = insufficient_balance_action
        self.params_for_pricing = params
        if (shards is None) == (shard_size is None):
            raise FluxValidationError(field="shards/shard_size", value=None, allowed="exactly one of them")
        self._check_shards()
        if insufficient_balance_action not in ("fail", "warn"):
            raise FluxValidationError(
                field="insufficient_balance_action", value=insufficient_balance_action, allowed="fail | warn"
            )
        check_operator_arguments(self)

    def _check_shards(self, *, rendered: bool = False) -> None:
        for name, high in (("shards", 10_000), ("shard_size", 100_000)):
            value = getattr(self, name)
            if value is not None and (rendered or not is_templated(value)):
                check_int(name, value, 1, high)

    @cached_property
    def hook(self) -> FluxHook:
        return FluxHook(self.flux_conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        check_operator_arguments(self, rendered=True)
        self._check_shards(rendered=True)
        prompts = list(self.prompts or [])
        if not prompts or is_templated(prompts):
            raise FluxValidationError(field="prompts", value=self.prompts, allowed="a non-empty list of prompts")
        model = resolve_variant(self.model) if self.model else self.hook.default_model
        night = self._price(prompts, model)
        budget = Budget.of(self.budget_usd)
        if budget is not None:
            Budget(budget.limit, scope="night").check(night.worst_total)
        balance = self.hook.get_balance()
        shards = self._shards(prompts)
        self.log.info("%s", self._line(shards, night, budget, balance))
        if balance is not None and night.worst_total > balance:
            error = InsufficientBalanceError(estimate=night.worst_total, balance=balance, images=len(prompts))
            if self.insufficient_balance_action == "fail":
                raise error
            self.log.warning("%s (going on: insufficient_balance_action='warn')", error)
        estimates = [self._price(shard, model) for shard in shards]
        out = []
        for shard, priced in zip(shards, estimates, strict=True):
            entry: dict[str, Any] = {"prompts": shard}
            if budget is not None:
                entry["budget_usd"] = str(_share(priced.worst_total, night.worst_total, budget.limit))
            out.append(entry)
        return out

    def _price(self, prompts: list[Any], model: Any) -> CostEstimate:
        items = [merge_item(entry, self.params_for_pricing)[0] for entry in prompts]
        return estimate(items, self.hook.prices, model=model, routes=self.hook.config.edit_models)

    def _shards(self, prompts: list[Any]) -> list[list[Any]]:
        count = self.shards if self.shards is not None else math.ceil(len(prompts) / (self.shard_size or 1))
        count = max(1, min(count, len(prompts)))
        size = math.ceil(len(prompts) / count)
        return [prompts[i : i + size] for i in range(0, len(prompts), size)]

    def _line(
        self, shards: list[list[Any]], night: CostEstimate, budget: Budget | None, balance: Decimal | None
    ) -> str:
        """``Night plan: 10 shards × 1,000 images × $0.030 = $300.00 · budget $350.00 · balance $1,234.00``."""
        sizes = sorted({len(s) for s in shards}, reverse=True)
        per = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[-1]:,}–{sizes[0]:,}"
        rows = night.by_size()
        prices = (
            f"${usd(rows[0]['unit_cost'])}"
            if len(rows) == 1
            else "(" + " + ".join(f"{r['count']:,} × ${usd(r['unit_cost'])}" for r in rows) + ")"
        )
        count = sum(len(s) for s in shards)
        line = (
            f"Night plan: {len(shards)} shard(s) × {per} image(s) × {prices} = ${cents(night.total)} "
            f"for {count:,} images"
        )
        line += f" · budget ${cents(budget.limit)}" if budget is not None else " · no budget"
        if balance is not None:
            line += f" · balance ${cents(balance)}"
        return line + night.caveats()


def _share(shard_worst: Decimal, night_worst: Decimal, limit: Decimal) -> Decimal:
    """A shard's budget: its own worst case plus its part of the slack, rounded down (never over the night)."""
    if night_worst <= 0:
        return limit.quantize(SHARE_STEP, rounding=ROUND_FLOOR)
    slack = (limit - night_worst) * shard_worst / night_worst
    return (shard_worst + slack).quantize(SHARE_STEP, rounding=ROUND_FLOOR).max(shard_worst)


__all__ = ["FluxPlanNightOperator"]
