"""Regeneration, planned without I/O: which failed images to make again, with which seeds, at what price.

:func:`plan_regeneration` is pure. It prices every regeneration with the same table as the original
plan and checks the budget — spent so far plus the plan — raising
:class:`~airflow_provider_flux2.exceptions.BudgetExceededError` before anything is sent. The caller
(an operator, or a ``@task``) submits the plan through the hook and folds the new records back in
with :func:`supersede`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.pricing import (
    Budget,
    CostEstimate,
    ItemCost,
    PriceTable,
    billed_cost,
    reference_megapixels,
    to_usd,
    usd,
)
from airflow_provider_flux2.quality.suite import failed_checks

#: ``failure_code`` of an image dropped for failing its checks (by the drop policy, or superseded).
QUALITY_FAILURE_CODE = "QUALITY_CHECK_FAILED"
_SEEDS = 2**32


def regeneration_seed(record: ImageRecord, attempt: int) -> int:
    """The seed of ``attempt`` for ``record``'s image, derived from (index, prompt, previous seed, attempt).

    Deterministic on purpose: a retried task plans the same seeds, so its requests — and their
    idempotency keys — are the same, and the API replays the runs already paid for instead of
    billing them again.
    """
    material = f"{record.index}\x1f{record.prompt}\x1f{record.seed}\x1f{attempt}".encode()
    seed = int.from_bytes(hashlib.sha256(material).digest()[:4], "big")
    return seed if seed != record.seed else (seed + 1) % _SEEDS


@dataclass(frozen=True)
class Regeneration:
    """One image to make again.

    :param index: the image's place in the batch (kept by the new image).
    :param attempt: the new image's attempt number (2 for the first regeneration).
    :param seed: the new seed.
    :param params: the original generation parameters with the new seed, ready for the hook.
    :param cost: what the new image will cost.
    :param replaces: the run id (or URI) of the image it replaces.
    :param failed_checks: why the image is being replaced.
    """

    index: int
    attempt: int
    seed: int
    previous_seed: int | None
    model: str
    prompt: str
    params: dict[str, Any]
    cost: Decimal
    replaces: str | None
    failed_checks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "attempt": self.attempt,
            "seed": self.seed,
            "previous_seed": self.previous_seed,
            "model": self.model,
            "prompt": self.prompt,
            "params": self.params,
            "cost_usd": usd(self.cost),
            "replaces": self.replaces,
            "failed_checks": list(self.failed_checks),
        }


@dataclass(frozen=True)
class RegenerationPlan:
    """The priced plan: what to regenerate, what cannot be (out of attempts), and the money.

    :param items: the regenerations, in batch order.
    :param exhausted: indices of failed images that have used all their regenerations.
    :param estimate: the plan priced image by image (its ``total`` is the plan's cost).
    :param spent: what the batch had cost before this plan.
    """

    items: tuple[Regeneration, ...]
    exhausted: tuple[int, ...]
    estimate: CostEstimate
    spent: Decimal
    budget: Decimal | None = field(default=None)

    @property
    def total(self) -> Decimal:
        return self.estimate.total

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for XCom and logs (money as decimal strings)."""
        return {
            "items": [item.as_dict() for item in self.items],
            "exhausted": list(self.exhausted),
            "count": len(self.items),
            "total_cost_usd": usd(self.total),
            "spent_usd": usd(self.spent),
            "budget_usd": None if self.budget is None else usd(self.budget),
        }


def plan_regeneration(
    records: Sequence[ImageRecord],
    *,
    max_regenerations: int,
    budget: Budget | None = None,
    spent: Decimal | str | None = None,
    prices: PriceTable | None = None,
) -> RegenerationPlan:
    """Plan new attempts for the checked images that failed, within ``max_regenerations`` and the budget.

    :param records: the whole batch after checking (only ``succeeded`` records with a failed check are planned).
    :param max_regenerations: how many times one image may be made again (0: never).
    :param budget: the task's budget; ``spent`` plus the plan must fit in it.
    :param spent: what the task has spent so far (default: the billed cost of ``records``, dropped ones included).
    :param prices: the price table the batch was planned with (default: the built-in table).
    :raises BudgetExceededError: the plan does not fit in the budget; nothing should be sent.
    """
    if isinstance(max_regenerations, bool) or not isinstance(max_regenerations, int) or max_regenerations < 0:
        raise FluxValidationError(field="max_regenerations", value=max_regenerations, allowed="an integer >= 0")
    table = prices or PriceTable()
    failing = [r for r in records if r.status == "succeeded" and failed_checks(r)]
    planned = [r for r in failing if r.attempt - 1 < max_regenerations]
    exhausted = tuple(r.index for r in failing if r.attempt - 1 >= max_regenerations)
    items = tuple(_regeneration(record, table) for record in planned)
    estimate = CostEstimate(
        items=tuple(_item_cost(record, item.cost) for record, item in zip(planned, items, strict=True)), prices=table
    )
    already = sum((billed_cost(r) for r in records), Decimal("0")) if spent is None else to_usd(spent, "spent")
    if budget is not None and items:
        budget.check(estimate, spent=already)
    return RegenerationPlan(
        items=items, exhausted=exhausted, estimate=estimate, spent=already, budget=budget.limit if budget else None
    )


def _regeneration(record: ImageRecord, table: PriceTable) -> Regeneration:
    attempt = record.attempt + 1
    seed = regeneration_seed(record, attempt)
    ref_mp = _reference_mp(record)
    return Regeneration(
        index=record.index,
        attempt=attempt,
        seed=seed,
        previous_seed=record.seed,
        model=record.model,
        prompt=record.prompt,
        params={**record.params, "seed": seed},
        cost=table.price(record.model).cost(record.billed_mp, ref_mp),
        replaces=record.run_id or record.uri,
        failed_checks=tuple(v.check for v in failed_checks(record)),
    )


def _item_cost(record: ImageRecord, cost: Decimal) -> ItemCost:
    return ItemCost(
        index=record.index,
        model=record.model,
        width=record.width,
        height=record.height,
        billed_mp=record.billed_mp,
        reference_mp=_reference_mp(record),
        cost=cost,
    )


def _reference_mp(record: ImageRecord) -> int:
    """The references' megapixels as measured when the image was planned (s3:// and local files
    are measured from their header then), else as :func:`reference_megapixels` prices them."""
    recorded = record.extra.get("references")
    if isinstance(recorded, list) and recorded:
        return sum(int(entry.get("billed_mp") or 1) for entry in recorded)
    return reference_megapixels(record.params.get("image_urls"))


def supersede(records: Sequence[ImageRecord], replacements: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Fold regenerated images into the batch.

    Each replacement takes the place of the live (``succeeded``) image with its index: that one is
    kept, marked ``dropped`` — it was paid for, so the manifest still counts it — and the replacement
    is appended with ``attempt`` one higher and ``regenerated_from`` pointing at it. Appending keeps
    batch order meaningful for the near-duplicate check: a new image is judged against the ones
    already kept.

    :raises ValueError: a replacement has no live image to replace.
    """
    batch = list(records)
    live = {r.index: pos for pos, r in enumerate(batch) if r.status == "succeeded"}
    for new in replacements:
        if new.index not in live:
            raise ValueError(f"No image with index {new.index} to replace (it is not in the batch, or not succeeded)")
        pos = live.pop(new.index)
        old = batch[pos]
        reasons = ", ".join(v.check for v in failed_checks(old)) or "replaced"
        batch[pos] = old.model_copy(
            update={
                "status": "dropped",
                "failure_code": QUALITY_FAILURE_CODE,
                "failure_message": f"failed {reasons}; replaced by attempt {old.attempt + 1}",
            }
        )
        batch.append(new.model_copy(update={"attempt": old.attempt + 1, "regenerated_from": old.run_id or old.uri}))
    return batch
