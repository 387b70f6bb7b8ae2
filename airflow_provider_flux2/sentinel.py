"""Runflow Sentinel (image evaluations) without I/O: build the requests, parse the answers, read the price.

Sentinel scores an image against a task and returns a verdict (docs.runflow.io: concepts/evaluations,
guides/evaluate-an-image, api-reference/evaluations):

* ``POST /v1/evaluations`` with ``generated_image_url`` (an HTTPS URL, ``runflow://assets/{uuid}`` or a
  ``data:`` URI) and ``task_type`` (the only two required fields), ``task_description``,
  ``generation_prompt``, up to four ``reference_images`` (``{url, kind, description}``), ``run_id``,
  ``client_ref``, ``job_class`` and ``callback_url``, under an ``Idempotency-Key`` so a retried submit
  is not billed twice → 202 ``{id, status_code: "pending", job_class_code, client_ref}``;
* ``GET /v1/evaluations/{id}``: ``pending → running → completed | failed``; a completed evaluation
  carries ``overall_passed`` (bool or null), ``weighted_pass_rate`` (0–1 or null), ``top_issues``,
  ``top_strengths`` and ``cost`` (a decimal string, "set only once a billable terminal state is
  reached"); a failed one its ``failure_code``;
* ``GET /v1/evaluations/job-classes``: the job classes and their prices ("today standard is the only
  active class"; the price is frozen onto an evaluation when it is submitted).

Read tolerantly, write exactly: the request carries only the documented fields we were given; the
answers are read for what the provider needs. The job-classes page shows no response shape, so
:func:`job_class_price` reads the usual ones **[choice]**.

The window (``window.py``) waits for evaluations as it waits for runs: :meth:`Evaluation.as_run`
states an evaluation's progress in a run's vocabulary (``pending`` is ``queued``, ``completed`` is
``succeeded``), so one state machine, one trigger and one worker loop serve both.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airflow_provider_flux2.exceptions import FluxAPIError, FluxValidationError
from airflow_provider_flux2.models import Run, RunStatus, parse_money
from airflow_provider_flux2.protocol import MAX_CLIENT_REF, ApiRequest
from airflow_provider_flux2.urls import is_valid_host, reference_kind

#: The job class evaluations are sent under (documented default; the only active one today).
DEFAULT_JOB_CLASS = "standard"
#: At most this many reference images per evaluation (guides/evaluate-an-image).
MAX_REFERENCE_IMAGES = 4
#: Seconds an evaluation is expected to take, for the poll schedule ("usually tens of seconds").
EXPECTED_SECONDS = 30.0
#: Where the verdict's lists are cut, so a record (and XCom) stays small whatever the API sends.
MAX_LISTED = 10
MAX_LABEL = 300

#: An evaluation's lifecycle in a run's vocabulary, for the window (unknown: not finished).
_AS_RUN = {
    "pending": RunStatus.QUEUED,
    "queued": RunStatus.QUEUED,
    "running": RunStatus.RUNNING,
    "completed": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "canceled": RunStatus.CANCELED,
    "cancelled": RunStatus.CANCELED,
}
_ASSET = re.compile(r"^runflow://assets/[0-9A-Za-z-]+$")


# --------------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------------


def body_hash(body: Mapping[str, Any]) -> str:
    """A stable hash of an evaluation request as written (images as stored, not as signed)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def evaluation_key(identity: Mapping[str, Any], index: int, attempt: int, request_hash: str) -> str:
    """The Idempotency-Key of one image's evaluation: its task's Airflow identity (dag, task, run, map
    index), the image (index and regeneration attempt) and the request.

    A retried or cleared task asks again under the same key and the API replays the evaluation it
    already made (and billed) instead of making another; a regenerated image (a new attempt) or a
    changed request (another task description) gets a new key instead of a 409.
    """
    parts = [str(identity.get(k, "")) for k in ("dag_id", "task_id", "run_id", "map_index")]
    digest = hashlib.sha256("\x1f".join([*parts, f"{index}/{attempt}", "sentinel", request_hash]).encode())
    return f"flux2-eval-{digest.hexdigest()[:48]}"


def evaluation_ref(identity: Mapping[str, Any], index: int, attempt: int, request_hash: str) -> str:
    """A readable ``client_ref`` (≤255 chars): ``dag/run/task/map/index.attempt/sentinel/<hash>``."""
    parts = [str(identity.get(k, "")) for k in ("dag_id", "run_id", "task_id", "map_index")]
    tail = f"/{index}.{attempt}/sentinel/{request_hash[:12]}"
    return "/".join(parts)[: MAX_CLIENT_REF - len(tail)] + tail


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def image_source_problem(url: Any) -> str | None:
    """Why ``url`` cannot stand in an evaluation request: an http(s) URL with a valid host, a
    ``runflow://assets/{uuid}``, a ``data:image/`` URI, or a local file (inlined when it is sent)."""
    if not isinstance(url, str) or not url:
        return "a URL"
    if url.startswith("data:image/"):
        return None if "," in url else "a data: URI needs a comma before its payload"
    if _ASSET.match(url):
        return None
    kind = reference_kind(url)
    if kind == "file":
        return None if not url.startswith("file://") or url.startswith("file:///") else "file:///absolute/path"
    if kind == "s3":
        return "an s3:// object presigned first (the API fetches URLs)"
    if kind == "url":
        try:
            host = urlsplit(url).hostname
        except ValueError as error:
            return f"not a URL ({error})"
        return None if is_valid_host(host) else f"an http(s) URL needs a valid host (got {host or 'none'!r})"
    return "an https:// URL, runflow://assets/{uuid}, a data:image/ URI or a local file"


def evaluation_body(
    *,
    generated_image_url: str,
    task_type: str,
    task_description: str | None = None,
    generation_prompt: str | None = None,
    reference_images: Sequence[Mapping[str, Any]] = (),
    run_id: str | None = None,
    client_ref: str | None = None,
    job_class: str | None = DEFAULT_JOB_CLASS,
    callback_url: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/evaluations``, exactly as documented: given fields only, checked first.

    :raises FluxValidationError: naming the field (before anything is sent).
    """
    problem = image_source_problem(generated_image_url)
    if problem is not None:
        raise FluxValidationError(field="generated_image_url", value=_shown(generated_image_url), allowed=problem)
    if not isinstance(task_type, str) or not task_type.strip():
        raise FluxValidationError(field="task_type", value=task_type, allowed="a non-empty task type, e.g. 'product'")
    if len(reference_images) > MAX_REFERENCE_IMAGES:
        raise FluxValidationError(
            field="reference_images", value=len(reference_images), allowed=f"at most {MAX_REFERENCE_IMAGES} images"
        )
    body: dict[str, Any] = {"generated_image_url": generated_image_url, "task_type": task_type.strip()}
    optional = {
        "task_description": task_description,
        "generation_prompt": generation_prompt,
        "run_id": run_id,
        "client_ref": client_ref[:MAX_CLIENT_REF] if client_ref else None,
        "job_class": job_class,
        "callback_url": callback_url,
    }
    body.update({k: v for k, v in optional.items() if v not in (None, "")})
    references = []
    for i, reference in enumerate(reference_images):
        url = reference.get("url")
        problem = image_source_problem(url)
        if problem is not None:
            raise FluxValidationError(field=f"reference_images[{i}].url", value=_shown(url), allowed=problem)
        entry = {"url": url}
        entry.update({k: str(reference[k]) for k in ("kind", "description") if reference.get(k) not in (None, "")})
        references.append(entry)
    if references:
        body["reference_images"] = references
    return body


def image_urls(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, url)`` of every image an evaluation request names (the image, then its references)."""
    found = [("generated_image_url", str(body.get("generated_image_url") or ""))]
    for i, reference in enumerate(body.get("reference_images") or []):
        if isinstance(reference, Mapping):
            found.append((f"reference_images[{i}].url", str(reference.get("url") or "")))
    return found


def with_image_urls(body: Mapping[str, Any], convert: Callable[[str, str], str]) -> dict[str, Any]:
    """``body`` with each image URL passed through ``convert(url, field)`` (e.g. a local file inlined)."""
    out = dict(body)
    out["generated_image_url"] = convert(str(body.get("generated_image_url") or ""), "generated_image_url")
    if body.get("reference_images"):
        out["reference_images"] = [
            {**reference, "url": convert(str(reference.get("url") or ""), f"reference_images[{i}].url")}
            for i, reference in enumerate(body["reference_images"])
        ]
    return out


def create_evaluation(body: Mapping[str, Any], *, idempotency_key: str) -> ApiRequest:
    """``POST /v1/evaluations`` under the evaluation's own ``Idempotency-Key``."""
    return ApiRequest("POST", "/v1/evaluations", json=dict(body), headers={"Idempotency-Key": idempotency_key})


def get_evaluation(evaluation_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/evaluations/{evaluation_id}", run_id=evaluation_id)


def get_job_classes() -> ApiRequest:
    return ApiRequest("GET", "/v1/evaluations/job-classes", list_ok=True)


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------


class Evaluation(BaseModel):
    """An evaluation object (the create's 202, or ``GET /v1/evaluations/{id}``), read tolerantly.

    Unknown fields are ignored; ``status_code`` is an open string (an unknown one is "not finished");
    ``weighted_pass_rate`` is a number or numeric text; ``cost`` a decimal string or a number.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    status_code: str = "unknown"
    job_class_code: str | None = None
    overall_passed: bool | None = None
    weighted_pass_rate: Decimal | None = None
    top_issues: list[str] = Field(default_factory=list)
    top_strengths: list[str] = Field(default_factory=list)
    cost: Decimal | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    client_ref: str | None = None
    run_id: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    created_at: str | None = None
    request_id: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("status_code", mode="before")
    @classmethod
    def _status(cls, value: Any) -> str:
        return value.strip().lower() if isinstance(value, str) and value.strip() else "unknown"

    @field_validator("overall_passed", mode="before")
    @classmethod
    def _passed(cls, value: Any) -> bool | None:
        return value if isinstance(value, bool) else None

    @field_validator("weighted_pass_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Decimal | None:
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            return None
        try:
            rate = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except InvalidOperation:
            return None
        return rate if rate.is_finite() else None

    @field_validator("top_issues", "top_strengths", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> list[str]:
        if not isinstance(value, list):
            return []
        return [_label(item) for item in value if _label(item)][:MAX_LISTED]

    @field_validator("cost", mode="before")
    @classmethod
    def _cost(cls, value: Any) -> Decimal | None:
        return parse_money(value)

    @field_validator(
        "job_class_code",
        "failure_code",
        "failure_message",
        "client_ref",
        "run_id",
        "submitted_at",
        "completed_at",
        "created_at",
        "request_id",
        mode="before",
    )
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None

    @property
    def run_status(self) -> RunStatus:
        """The status in a run's vocabulary: ``pending`` → queued, ``completed`` → succeeded, …"""
        return _AS_RUN.get(self.status_code, RunStatus.UNKNOWN)

    @property
    def terminal(self) -> bool:
        return self.run_status.terminal

    @property
    def completed(self) -> bool:
        return self.run_status == RunStatus.SUCCEEDED

    def as_run(self) -> Run:
        """The evaluation as the window reads a run: its id, progress, billed cost and failure code."""
        return Run(
            id=self.id,
            status_code=self.run_status,
            cost=self.cost,
            failure_code=self.failure_code,
            failure_message=self.failure_message,
            completed_at=self.completed_at,
            request_id=self.request_id,
        )


def _label(item: Any) -> str:
    """One issue or strength as short text: a string, or an object's label/name/detail."""
    if isinstance(item, str):
        return item.strip()[:MAX_LABEL]
    if isinstance(item, Mapping):
        for key in ("label", "name", "title", "detail", "subcategory", "category"):
            if isinstance(item.get(key), str) and item[key].strip():
                return item[key].strip()[:MAX_LABEL]
    return ""


def parse_evaluation(data: Any) -> Evaluation:
    """An evaluation object; anything unreadable is a typed error naming the response's request id."""
    request_id = data.get("request_id") if isinstance(data, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    if not isinstance(data, dict):
        raise FluxAPIError(status_code=200, code="BAD_RESPONSE", message="expected an evaluation object")
    try:
        return Evaluation.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc") or ()) or "evaluation"
        code = "BAD_COST" if where == "cost" else "BAD_RESPONSE"
        raise FluxAPIError(
            status_code=200,
            code=code,
            message=f"unreadable evaluation object: {where}: {first['msg']}",
            request_id=request_id,
            run_id=data.get("id") if isinstance(data.get("id"), str) else None,
        ) from None


#: Where a job class's code and its price may stand (the page shows no response shape) [choice].
_CODE_KEYS = ("code", "job_class_code", "job_class", "name", "id", "slug")
_PRICE_KEYS = ("price", "price_usd", "unit_price", "price_per_evaluation", "cost", "credits", "amount")
_LIST_KEYS = ("items", "data", "job_classes", "results")


def job_class_price(data: Any, job_class: str = DEFAULT_JOB_CLASS) -> Decimal | None:
    """The price of one evaluation of ``job_class`` from ``GET /v1/evaluations/job-classes``, or ``None``.

    Read tolerantly: the classes as a list, or under ``items``/``data``/``job_classes``, or as an object
    keyed by code; each class's code under ``code``/``job_class_code``/``name``…, its price a decimal
    string or number under ``price``/``price_usd``/``unit_price``… (or ``{"amount": …}``). A class marked
    inactive is not priced.
    """
    entries: Any = data
    if isinstance(data, Mapping):
        entries = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)), None)
        if entries is None:  # {"standard": {...}} or {"standard": "0.01"}
            entries = [
                {"code": code, **(value if isinstance(value, Mapping) else {"price": value})}
                for code, value in data.items()
            ]
    if not isinstance(entries, list):
        return None
    wanted = job_class.strip().lower()
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        codes = {str(entry[k]).strip().lower() for k in _CODE_KEYS if isinstance(entry.get(k), str)}
        if wanted not in codes or entry.get("is_active") is False or entry.get("active") is False:
            continue
        for key in _PRICE_KEYS:
            value = entry.get(key)
            if isinstance(value, Mapping):
                value = value.get("amount", value.get("value"))
            try:
                price = parse_money(value)
            except ValueError:
                price = None
            if price is not None:
                return price
    return None


def _shown(value: Any) -> Any:
    """A value fit for an error message: a ``data:`` URI cut short, a URL without its query."""
    if isinstance(value, str) and value.startswith("data:"):
        return value[:40] + "…"
    if isinstance(value, str) and "?" in value:
        return value.split("?", 1)[0]
    return value


__all__ = [
    "DEFAULT_JOB_CLASS",
    "EXPECTED_SECONDS",
    "MAX_REFERENCE_IMAGES",
    "Evaluation",
    "body_hash",
    "create_evaluation",
    "evaluation_body",
    "evaluation_key",
    "evaluation_ref",
    "get_evaluation",
    "get_job_classes",
    "image_source_problem",
    "image_urls",
    "job_class_price",
    "parse_evaluation",
    "with_image_urls",
]
