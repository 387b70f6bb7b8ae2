"""Typed errors. Each one says what happened, with the ids and figures needed to act on it.

None of them ever carries the API key: messages are built from the status, the API's code and
message, the request and run ids, and our own figures.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from airflow_provider_flux2.money import format_usd as format_usd


class FluxError(Exception):
    """Base class of every error this provider raises."""


class FluxValidationError(FluxError, ValueError):
    """A parameter is not allowed; raised before any money is spent (or mapped from the API's 422).

    :param field: dotted name of the offending field (``image_size.width``).
    :param value: the value that was given.
    :param allowed: what would have been accepted.
    :param details: every error found, when there were several.
    """

    def __init__(
        self,
        *,
        field: str,
        value: Any,
        allowed: str,
        details: list[dict[str, Any]] | None = None,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        api_message: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.details = details or [{"field": field, "value": value, "allowed": allowed}]
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.api_message = api_message
        text = f"Invalid {field}: {_short(value)} is not allowed; expected {allowed}"
        if len(self.details) > 1:
            text += f" (and {len(self.details) - 1} more: {', '.join(d['field'] for d in self.details[1:])})"
        if status_code is not None:
            if details is None and value is None and field == "input" and api_message:
                text = api_message  # the API named no field: its own words are the whole story
            else:
                text += f" — API says: {api_message}" if api_message else ""
            text = f"HTTP {status_code} {code or 'VALIDATION_ERROR'}: {text} [request id {request_id or 'unknown'}]"
        super().__init__(text)


class FluxConnectionNotFoundError(FluxValidationError):
    """The Airflow connection does not exist where this process looks (permanent: never retried)."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        super().__init__(
            field="flux_conn_id",
            value=conn_id,
            allowed=(
                "the id of a defined Airflow connection of type flux2 (looked in "
                f"AIRFLOW_CONN_{conn_id.upper()}, the secrets backends and the metadata DB)"
            ),
        )


class FluxAPIError(FluxError):
    """The API answered with an error envelope ``{"code", "message", "errors"}``."""

    def __init__(
        self,
        *,
        status_code: int,
        code: str | None,
        message: str | None,
        request_id: str | None = None,
        run_id: str | None = None,
        errors: list[Any] | None = None,
        hint: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code or "UNKNOWN"
        self.api_message = message or ""
        self.request_id = request_id
        self.run_id = run_id
        self.errors = errors
        self.hint = hint
        super().__init__(self._text())

    def _text(self) -> str:
        ids = f"request id {self.request_id or 'unknown'}"
        if self.run_id:
            ids += f", run {self.run_id}"
        text = f"HTTP {self.status_code} {self.code}: {self.api_message or '(no message)'} [{ids}]"
        if self.hint:
            text += f". {self.hint}"
        return text

    def with_hint(self, hint: str) -> FluxAPIError:
        """Add advice (e.g. which Airflow connection to fix) to the message."""
        self.hint = hint
        self.args = (self._text(),)
        return self


class FluxAuthError(FluxAPIError):
    """401/403: the key is missing, wrong, or not allowed to do this."""


class FluxInsufficientCreditError(FluxAPIError):
    """402: the account has no credit left."""


class FluxNotFoundError(FluxAPIError):
    """404: no such run or batch (or the model does not exist)."""


class FluxConflictError(FluxAPIError):
    """409: "usually a duplicate create or a race" (Runflow's errors page). A create racing an earlier
    one under the same Idempotency-Key is sent again by the hook (the same key: replayed, never billed
    twice); a 409 that outlasts those tries means the key was used before with a different body."""


class FluxRateLimitError(FluxAPIError):
    """429: too many requests; ``retry_after`` holds the API's advice in seconds, when given."""

    def __init__(self, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(**kwargs)


class FluxServerError(FluxAPIError):
    """5xx: the API failed; retried with backoff, raised once the attempts are spent."""


class FluxConnectionError(FluxError):
    """The API could not be reached (connect/read error or timeout) after every attempt."""

    def __init__(self, message: str, *, attempts: int, url: str) -> None:
        self.attempts = attempts
        self.url = url
        super().__init__(f"{message} ({url}, {attempts} attempt{'s' if attempts != 1 else ''})")


class FluxRunFailedError(FluxError):
    """A run ended ``failed`` or ``canceled``; failed runs are not billed."""

    def __init__(
        self,
        *,
        run_id: str,
        status: str,
        failure_code: str | None,
        failure_message: str | None,
        stage: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.status = status
        self.failure_code = failure_code
        self.failure_message = failure_message
        self.stage = stage
        where = f" at stage {stage}" if stage else ""
        super().__init__(
            f"Run {run_id} {status}{where}: {failure_code or 'UNKNOWN'} — {failure_message or '(no message)'}"
        )


class FluxModerationError(FluxRunFailedError):
    """The content was moderated (``CONTENT_MODERATED``, or the NSFW flag on the output)."""


class FluxTimeoutError(FluxError):
    """Runs did not finish before the deadline."""

    def __init__(self, message: str, *, run_ids: list[str] | None = None) -> None:
        self.run_ids = run_ids or []
        super().__init__(message)


class FluxRequestTimeoutError(FluxConnectionError, FluxTimeoutError):
    """Every attempt of one request timed out (the API stalled): both a connection and a timeout error."""


class FluxImageError(FluxError):
    """Downloaded bytes are not the image that was asked for (size, format, too large, undecodable)."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(f"{message} (run {run_id})" if run_id else message)


class FluxStorageError(FluxError):
    """An object could not be stored: the store's own retries are spent (S3: the AWS SDK's retry mode),
    or waiting would not help (access denied, a full disk). Never retried by the provider itself; what
    was stored before stays stored and recorded, so a retry of the task stores only what is missing.

    :param uri: the object that was not stored.
    :param code: the store's reason in one word (``SlowDown``, ``AccessDenied``, ``ENOSPC``).
    :param bucket: the S3 bucket; ``key`` the object's key in it.
    :param free_bytes: free space on a local volume, when it is full.
    """

    def __init__(
        self,
        message: str,
        *,
        uri: str,
        code: str,
        bucket: str | None = None,
        key: str | None = None,
        free_bytes: int | None = None,
    ) -> None:
        self.uri = uri
        self.code = code
        self.bucket = bucket
        self.key = key
        self.free_bytes = free_bytes
        super().__init__(message)


class FluxQualityError(FluxError):
    """Images failed their quality checks under the ``fail`` policy (or ran out of regenerations).

    :param failures: one entry per failed image: ``{"index", "run_id", "checks": [{"check", "reason"}]}``.
    :param total: how many images were checked.
    """

    def __init__(self, failures: list[dict[str, Any]], *, total: int) -> None:
        self.failures = failures
        self.total = total
        shown = "; ".join(
            f"#{f['index']} " + ", ".join(f"{c['check']} ({c['reason']})" for c in f["checks"]) for f in failures[:5]
        )
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} of {total} images failed quality checks: {shown}{more}")


class FluxPassRateError(FluxQualityError):
    """Fewer images passed the quality step than its ``min_pass_rate`` asks (raised after the records
    and the summary were written, so what was kept and what it cost stay on record).

    :param failures: one entry per image that did not pass, as for :class:`FluxQualityError`.
    :param total: images the step was given (one per catalogue item, whatever its attempts).
    :param passed: images that passed.
    :param min_pass_rate: the share asked for, ``0..1``.
    """

    def __init__(self, failures: list[dict[str, Any]], *, total: int, passed: int, min_pass_rate: Decimal) -> None:
        super().__init__(failures, total=total)
        self.passed = passed
        self.min_pass_rate = min_pass_rate
        shown = "; ".join(
            f"#{f['index']} " + ", ".join(f"{c['check']} ({c['reason']})" for c in f["checks"]) for f in failures[:5]
        )
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        self.args = (
            f"{passed} of {total} images passed the quality step ({percent(Decimal(passed) / total)}), below "
            f"min_pass_rate {percent(min_pass_rate)}: {shown}{more}",
        )


def percent(share: Decimal) -> str:
    """``0.9`` → ``"90%"``; ``0.875`` → ``"87.5%"``."""
    value = (share * 100).quantize(Decimal("0.1"))
    return f"{value.normalize():f}%"


class BudgetExceededError(FluxError):
    """A plan costs more than its budget; raised before the first submit."""

    def __init__(self, *, estimate: Decimal, limit: Decimal, scope: str = "task", images: int = 0) -> None:
        self.estimate = estimate
        self.limit = limit
        self.scope = scope
        self.images = images
        count = f" for {images} image{'s' if images != 1 else ''}" if images else ""
        super().__init__(
            f"Estimated cost ${format_usd(estimate)}{count} exceeds the {scope} budget of ${format_usd(limit)}; "
            "nothing was submitted"
        )


class InsufficientBalanceError(BudgetExceededError):
    """A plan costs more than the organisation's credit balance (``GET /v1/billing/balance``); raised
    before the first submit, so a night never dies half-way on 402 ``INSUFFICIENT_CREDIT``."""

    def __init__(self, *, estimate: Decimal, balance: Decimal, images: int = 0) -> None:
        self.balance = balance
        FluxError.__init__(
            self,
            f"The plan costs up to ${format_usd(estimate)} for {images} image(s), more than the organisation's "
            f"credit balance of ${format_usd(balance)}; nothing was submitted. Top up the balance, plan fewer "
            "images, or set insufficient_balance_action='warn'",
        )
        self.estimate = estimate
        self.limit = balance
        self.scope = "balance"
        self.images = images


class RunningBudgetError(FluxError):
    """Submissions stopped mid-task: what the API reported spent, plus what was in flight, plus the next
    submission would have passed the budget (the API billed more than the price table said)."""

    def __init__(self, *, committed: Decimal, next_cost: Decimal, limit: Decimal, not_sent: int) -> None:
        self.committed = committed
        self.next_cost = next_cost
        self.limit = limit
        self.not_sent = not_sent
        super().__init__(
            f"Stopped submitting: ${format_usd(committed)} spent or in flight plus ${format_usd(next_cost)} for the "
            f"next submission would pass the task budget of ${format_usd(limit)}; {not_sent} image(s) were not "
            "sent, the others are stored. Raise budget_usd, or set on_budget_stop='record' to accept this"
        )


class BudgetOverrunError(BudgetExceededError):
    """The cost the API reports is over the budget (the API billed more than estimated)."""

    def __init__(self, *, reported: Decimal, limit: Decimal, scope: str = "task", run_id: str | None = None) -> None:
        self.reported = reported
        self.run_id = run_id
        FluxError.__init__(
            self,
            f"The API reports a cost of ${format_usd(reported)}"
            + (f" for run {run_id}" if run_id else "")
            + f", over the {scope} budget of ${format_usd(limit)}; nothing more is submitted or stored",
        )
        self.estimate, self.limit, self.scope, self.images = reported, limit, scope, 1


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
