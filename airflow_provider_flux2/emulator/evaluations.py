"""Sentinel in the emulator: evaluations of images, decided when they are submitted, in the documented shapes.

An evaluation's whole future is fixed when it is created, as a run's is: when it starts and ends (the
profile's latency, or ``evaluation_seconds``) and its verdict. The verdict is deterministic: from the
image's statistics (a blank or near-uniform image fails) and a hash of the image and the prompt (an
ordinary image passes with a score of 0.70–0.97), unless

* the ``task_description`` or ``generation_prompt`` holds the ``sentinel_fail_marker``
  (``SENTINEL_FAIL`` by default): the verdict fails;
* they hold the marker followed by ``_ONCE`` (``SENTINEL_FAIL_ONCE``): the first image evaluated for
  that prompt fails, and so does that same image evaluated again; a different image (a regeneration)
  passes;
* a fault fires on ``create_evaluation``: ``low_score`` (a failing verdict with that score) or
  ``run_failure`` (the evaluation ends ``failed`` with the fault's code).

A completed evaluation is billed the configured ``evaluation_price_usd`` (failed ones are not); the
ledger lists it with ``kind: "evaluation"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_provider_flux2.emulator.config import EmulatorConfig
from airflow_provider_flux2.emulator.faults import Fault
from airflow_provider_flux2.pricing import usd

#: The job classes the emulator sells (Runflow: "today standard is the only active class").
JOB_CLASSES = ("standard",)
#: Seconds an evaluation spends ``pending`` and ``running`` per profile (before ``time_scale``).
_TIMES = {"fast": ((0.005, 0.015), (0.02, 0.05)), "realistic": ((1.0, 3.0), (15.0, 40.0))}
#: An image whose grey levels spread less than this (standard deviation, 0–255) is blank.
BLANK_STDDEV = 4.0
#: The most image bytes the emulator reads to judge one image.
MAX_IMAGE_BYTES = 32 * 1024 * 1024

_STRENGTHS = ("clean composition", "faithful colours", "sharp product detail", "even lighting", "on-brief styling")
_ISSUES = ("slight edge halo", "busy background", "soft focus on the subject", "colour cast", "tight crop")


@dataclass(frozen=True)
class ImageStats:
    """What the emulator measures of an image: its size and how its grey levels spread."""

    width: int
    height: int
    mean: float
    stddev: float
    digest: str

    @property
    def blank(self) -> bool:
        return self.stddev < BLANK_STDDEV


def image_stats(data: bytes) -> ImageStats | None:
    """Measure image bytes (``None`` when they are not an image Pillow reads within its bomb guard)."""
    from PIL import Image, ImageStat

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > (Image.MAX_IMAGE_PIXELS or 2**31):
                return None
            opened.draft("L", (128, 128))
            grey = opened.convert("L").resize((64, 64))
            stat = ImageStat.Stat(grey)
            return ImageStats(
                width=opened.width,
                height=opened.height,
                mean=float(stat.mean[0]),
                stddev=float(stat.stddev[0]),
                digest=hashlib.sha256(data).hexdigest(),
            )
    except Exception:  # hostile or truncated bytes fail in many ways: not an image
        return None


def data_uri_bytes(url: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URI (``None`` when it is not one)."""
    header, _, payload = url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    """How an evaluation ends, decided when it is created."""

    overall_passed: bool | None = None
    score: float | None = None
    top_issues: tuple[str, ...] = ()
    top_strengths: tuple[str, ...] = ()
    failure_code: str | None = None
    failure_message: str | None = None

    @property
    def completed(self) -> bool:
        return self.failure_code is None


def decide_verdict(
    config: EmulatorConfig,
    *,
    task_type: str,
    texts: list[str],
    stats: ImageStats | None,
    fault: Fault | None,
    failed_before: bool,
    problem: str | None = None,
) -> Verdict:
    """The verdict of one evaluation.

    :param texts: the ``generation_prompt`` and ``task_description`` (where the markers are looked for).
    :param stats: the image as measured (``None``: not fetched, judged from the prompt alone).
    :param fault: the fault that fired on ``create_evaluation`` for it, if any.
    :param failed_before: a ``SENTINEL_FAIL_ONCE`` image already failed (this one, or the first for its prompt).
    :param problem: why the image could not be read (the evaluation fails: ``IMAGE_UNREADABLE``).
    """
    if problem is not None:
        return Verdict(failure_code="IMAGE_UNREADABLE", failure_message=problem)
    if fault is not None and fault.kind == "run_failure":
        return Verdict(failure_code=str(fault.params["code"]), failure_message=str(fault.params["message"]))
    digest = hashlib.sha256("\x1f".join([task_type, *texts, stats.digest if stats else ""]).encode()).digest()
    rng = random.Random(digest)
    score = round(0.70 + rng.random() * 0.27, 3)
    strengths = tuple(rng.sample(_STRENGTHS, 2))
    minor = (rng.choice(_ISSUES),) if score < 0.85 else ()
    marker = config.sentinel_fail_marker.lower()
    text = " ".join(texts).lower()
    if fault is not None and fault.kind == "low_score":
        low = float(fault.params["score"])
        return Verdict(False, low, ("below the quality bar (emulated low score)", *minor), strengths[:1])
    if stats is not None and stats.blank:
        return Verdict(False, 0.08, ("blank or near-uniform image", "subject missing"), ())
    if f"{marker}_once" in text and failed_before:
        return Verdict(
            False, 0.41, ("off-brief: the subject does not match the task (SENTINEL_FAIL_ONCE)",), strengths[:1]
        )
    if marker in text and f"{marker}_once" not in text:
        return Verdict(False, 0.33, ("off-brief: the subject does not match the task (SENTINEL_FAIL)",), strengths[:1])
    return Verdict(True, score, minor, strengths)


def evaluation_phases(config: EmulatorConfig, rng: random.Random) -> tuple[float, float]:
    """Seconds ``pending`` and ``running``: ``evaluation_seconds`` (10% pending) or the profile's, scaled."""
    if config.evaluation_seconds is not None:
        return config.evaluation_seconds * 0.1, config.evaluation_seconds * 0.9
    pending, running = _TIMES.get(config.profile, _TIMES["fast"])
    return rng.uniform(*pending) * config.time_scale, rng.uniform(*running) * config.time_scale


@dataclass
class EvaluationRecord:
    """One evaluation: what was asked, when it runs, how it ends, and its price."""

    id: str
    body: dict[str, Any]
    created: float
    start: float
    end: float
    verdict: Verdict
    price: Decimal
    job_class: str
    idempotency_key: str | None = None
    stats: ImageStats | None = None
    fault: Fault | None = None
    echo_url: str = ""
    references: list[dict[str, Any]] = field(default_factory=list)

    @property
    def client_ref(self) -> str | None:
        value = self.body.get("client_ref")
        return value if isinstance(value, str) else None

    @property
    def prompt(self) -> str:
        return " ".join(str(self.body.get(k) or "") for k in ("generation_prompt", "task_description"))

    def status(self, now: float) -> str:
        if now < self.start:
            return "pending"
        if now < self.end:
            return "running"
        return "completed" if self.verdict.completed else "failed"

    def billed(self, now: float) -> bool:
        return self.verdict.completed and now >= self.end


def evaluation_object(record: EvaluationRecord, now: float, iso: Callable[[float], str], org_id: str) -> dict[str, Any]:
    """An evaluation as ``GET /v1/evaluations/{id}`` shows it at ``now``, in the API reference's shape.

    ``cost`` is set only once a billable terminal state is reached (a completed evaluation); the
    verdict fields are null until then. A ``data:`` image is shown as the asset the API keeps of it.
    """
    status = record.status(now)
    done = status in ("completed", "failed")
    completed = status == "completed"
    verdict = record.verdict
    body = record.body
    return {
        "id": record.id,
        "org_id": org_id,
        "run_id": body.get("run_id"),
        "target_type_code": "image",
        "model_id": None,
        "flow_id": None,
        "comfyui_workflow_id": None,
        "status_code": status,
        "job_class_code": record.job_class,
        "task_type": body.get("task_type"),
        "task_description": body.get("task_description"),
        "generation_prompt": body.get("generation_prompt"),
        "generated_image_url": record.echo_url,
        "input_attributes": body.get("input_attributes") or {},
        "evaluation_instructions": body.get("evaluation_instructions"),
        "reference_images": record.references,
        "overall_passed": verdict.overall_passed if completed else None,
        "weighted_pass_rate": verdict.score if completed else None,
        "override_reason": None,
        "top_issues": list(verdict.top_issues) if completed else [],
        "top_strengths": list(verdict.top_strengths) if completed else [],
        "check_summary": {},
        "analysis_modules_executed": 3 if completed else 0,
        "primary_action_code": ("accept" if verdict.overall_passed else "regenerate") if completed else None,
        "parent_evaluation_id": None,
        "attempt_number": 1,
        "superseded_at": None,
        "eval_duration_ms": round((record.end - record.start) * 1000) if done else None,
        "feedback_is_positive": None,
        "feedback_reason": None,
        "created_at": iso(record.created),
        "updated_at": iso(min(now, record.end) if done else max(record.created, min(now, record.start))),
        "client_ref": record.client_ref,
        "submitted_at": iso(record.created),
        "completed_at": iso(record.end) if done else None,
        "callback_url": body.get("callback_url"),
        "cost": usd(record.price) if completed else None,
        "failure_code": verdict.failure_code if done else None,
        "failure_message": verdict.failure_message if done else None,
        "links": {},
    }


def job_classes_object(config: EmulatorConfig) -> dict[str, Any]:
    """``GET /v1/evaluations/job-classes``: each class with its price (a decimal string)."""
    return {
        "items": [
            {
                "code": code,
                "name": code.title(),
                "description": "Several judges; a verdict in tens of seconds",
                "price": usd(config.evaluation_price_usd),
                "currency_code": "USD",
                "is_active": True,
            }
            for code in JOB_CLASSES
        ]
    }


def statuses_object() -> dict[str, Any]:
    """``GET /v1/evaluations/statuses``: the status reference."""
    meaning = {
        "pending": "Accepted by Runflow, not yet picked up for processing.",
        "running": "Being evaluated.",
        "completed": "Terminal. A verdict was produced.",
        "failed": "Terminal. See failure_code for why.",
    }
    return {
        "items": [
            {"code": code, "description": text, "is_terminal": code in ("completed", "failed")}
            for code, text in meaning.items()
        ]
    }


def reference_echo(references: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """References as the API shows them back (a ``data:`` image as an asset reference)."""
    return [{**dict(ref), "url": asset_url(str(ref.get("url") or ""))} for ref in references]


def asset_url(url: str) -> str:
    """A ``data:`` image becomes the ``runflow://assets/{uuid}`` the API keeps of it; a URL is shown as sent."""
    if not url.startswith("data:"):
        return url
    return f"runflow://assets/{uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(url.encode()).hexdigest())}"
