"""``flux2 doctor``: prove every path the provider uses against a connection's API, under one spend cap.

No machine that builds this provider reaches the real Runflow API, and the protocol has points marked
**[choice]**. The doctor asks the API itself, step by step, and says for each step what was expected,
what was seen and what it cost:

* free: health, auth (a wrong key, then yours), that each variant is served, validation, the balance;
* paid, each counted at its worst case *before* it is sent and never past ``max_spend`` (a step that
  would pass it is skipped and listed): one run of the default model (its cost, the output shape the
  parser reads, the output URL's expiry, idempotency and the 409), a 1920×1080 run billed at the
  seed's $0.045 (the extra-megapixel rate and the rounding), a real 2-item batch read back through
  the provider's own parsers (the batch, then ``/items`` one item a page, following the cursor), one
  1 MP run of every variant named, one edit with a small reference per variant checked (which model
  accepted it, and what it billed), and the first run's create re-sent later (a replay, not a run);
* with ``--sentinel``: the Sentinel job classes and their price (free), then one evaluation of a small
  image (``POST /v1/evaluations`` as the quality step builds it, replayed under its key, awaited to its
  end and its cost compared with the price), counted at that price before it is sent.

Every step is reported even when an earlier one deviates; only an unreachable API or a refused key
stops it. Requests are built and parsed by :mod:`~airflow_provider_flux2.protocol` (the code a DAG
runs); only the sending is the doctor's own, so it can look at raw statuses and headers. The API key
is never printed, written to the report, or echoed from a server's message.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx

import airflow_provider_flux2.hooks.transport as transport
from airflow_provider_flux2 import protocol, sentinel
from airflow_provider_flux2.exceptions import FluxError
from airflow_provider_flux2.image_header import header_size
from airflow_provider_flux2.models import (
    EDIT_MODELS,
    FLAT_EDIT_SIZE,
    FluxInput,
    Run,
    RunStatus,
    Variant,
    build_input,
    for_route,
    resolve_variant,
)
from airflow_provider_flux2.pricing import PriceTable, billed_megapixels, usd

Status = Literal["PASS", "FAIL", "WARN", "SKIP"]

#: The cheapest size the API takes: every preset is one megapixel, ``square`` has the fewest bytes.
CHEAPEST_SIZE = "square"
CHEAPEST_SIDES = (512, 512)
#: The seed page's second row: 1920×1080 is 2 MP, $0.030 + $0.015 on FLUX 2 [pro].
SEED_SIZE = (1920, 1080)
DEFAULT_MAX_SPEND = Decimal("0.50")
#: ``--all-models`` prices and edit-checks six variants: about $0.56 at the table's prices.
ALL_MODELS_MAX_SPEND = Decimal("1.00")
#: How long after the first run its create is sent again (the replay must still be a replay).
DEFAULT_REPLAY_AFTER = 60.0
#: An output URL must stay valid at least this long for the provider to fetch it after completion.
MIN_URL_TTL = 60.0
#: Bounds of every call the doctor makes.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
MAX_429_RETRIES = 3
MAX_RETRY_AFTER_WAIT = 10.0
_BAD_KEY = "rf_doctor_deliberately_invalid_key"
_INVALID_SIZE = "flux2_doctor_invalid_size"
_PROMPT = "flux2 doctor: a small red cube on a white table"
#: Statuses that end a run, as the provider reads them.


@dataclass
class Check:
    """One step of the report: what was expected, what was seen, the verdict and what it cost."""

    name: str
    status: Status
    expected: str
    seen: str
    request_id: str | None = None
    cost_usd: str | None = None

    def line(self) -> str:
        rid = f" [request id {self.request_id}]" if self.request_id else ""
        cost = f" (cost ${self.cost_usd})" if self.cost_usd is not None else ""
        return f"{self.status} {self.name:<16} expected {self.expected}; seen {self.seen}{rid}{cost}"


@dataclass
class DoctorReport:
    base_url: str
    model: str
    max_spend_usd: str
    started_at: str
    checks: list[Check] = field(default_factory=list)
    committed_usd: str = "0"
    spent_usd: str = "0"
    conn_id: str | None = None
    #: Prices measured by paid runs, in the connection's ``prices`` extra format.
    measured_prices: dict[str, Any] = field(default_factory=dict)
    #: Where each checked variant's reference images were accepted (the ``edit_models`` extra format).
    edit_models: dict[str, str] = field(default_factory=dict)
    #: Paid steps not sent because they could have passed ``max_spend``.
    skipped: list[str] = field(default_factory=list)
    #: One Sentinel evaluation's price as the job classes list it (``--sentinel``).
    sentinel_price_usd: str | None = None

    @property
    def passed(self) -> bool:
        return not any(check.status == "FAIL" for check in self.checks)

    @property
    def deviations(self) -> list[Check]:
        return [check for check in self.checks if check.status == "FAIL"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "deviations": [c.name for c in self.deviations]}


@dataclass
class _Answer:
    status: int
    headers: httpx.Headers
    body: Any
    text: str

    @property
    def request_id(self) -> str | None:
        return protocol.request_id_of(self.headers)

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def locs(self) -> list[list[Any]]:
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        return [list(e["loc"]) for e in errors or [] if isinstance(e, dict) and isinstance(e.get("loc"), list)]

    def brief(self) -> str:
        return f"{self.status} {self.code or _short(self.text)}"


class _Stop(Exception):
    """The API is unreachable or refuses the key: nothing else can be learned."""


class Doctor:
    """Runs the checks against one API endpoint.

    :param base_url: the API (the connection's host).
    :param api_key: the key to check; never printed.
    :param prices: the price table the provider would use (the connection's overrides applied).
    :param model: the variant of the main paid run (the connection's default model).
    :param models: more variants to price with one 1 MP run and one edit each (``--model``/``--all-models``).
    :param max_spend: dollars the doctor may commit at worst; a step that could pass it is skipped.
    :param timeout: per-request timeout, seconds (each connect, read, write).
    :param request_deadline: the most one exchange may take in all, seconds (the connection's extra).
    :param run_timeout: how long a paid run may take, seconds.
    :param replay_after: seconds after the first run its create is sent again.
    :param sleep: how to wait (tests pass a fast one).
    :param sentinel: also check Sentinel: its job classes, then one paid evaluation.
    :param sentinel_price: the connection's ``sentinel_price_usd`` (what the quality step would plan with).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        prices: PriceTable | None = None,
        model: Variant | str | None = None,
        models: list[Variant | str] | None = None,
        organization_id: str | None = None,
        max_spend: Decimal = DEFAULT_MAX_SPEND,
        timeout: float = 30.0,
        request_deadline: float = 120.0,
        run_timeout: float = 180.0,
        replay_after: float = DEFAULT_REPLAY_AFTER,
        max_download_bytes: int = 64 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
        sentinel: bool = False,
        sentinel_price: Decimal | None = None,
    ) -> None:
        self.sentinel = sentinel
        self.sentinel_price = sentinel_price
        self._listed_price: Decimal | None = None
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._org = organization_id
        self.prices = prices or PriceTable()
        self.model = resolve_variant(model)
        extra = [resolve_variant(m) for m in models or []]
        self.models = [v for v in dict.fromkeys(extra) if v is not self.model]
        self.max_spend = max_spend
        self.timeout = timeout
        self.request_deadline = request_deadline
        self.run_timeout = run_timeout
        self.replay_after = replay_after
        self.max_download_bytes = max_download_bytes
        self._sleep = sleep
        self.committed = Decimal("0")
        self.spent = Decimal("0")
        self.rate_limits: list[tuple[str, str | None]] = []  # (what, Retry-After) of every 429 seen
        self._report: DoctorReport | None = None
        # The first paid run: its create is re-sent later (``idempotency later``).
        self._first: protocol.ApiRequest | None = None
        self._first_id = ""
        self._first_at = 0.0
        self._first_worst = Decimal("0")
        self._batches_served = False

    # -- sending ---------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return str(protocol.redact(text, [self._key]))

    def _send(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> _Answer:
        """One call, bounded in time and bytes; a 429 waits its ``Retry-After`` (capped) and retries."""
        auth = protocol.auth_headers(key if key is not None else self._key, self._org)
        attempt = 0
        while True:
            # The provider's own transport: the whole exchange within the connection's request_deadline,
            # the body capped after decompression (what the hook does, with the answer kept whatever it is).
            with (
                transport.deadline(self.request_deadline),
                client.stream(method, path, json=json_body, headers={**auth, **(headers or {})}) as response,
            ):
                try:
                    raw = transport.read_body(response, MAX_RESPONSE_BYTES)
                except protocol.BodyTooLargeError:
                    raise FluxError(f"{method} {path}: response over {MAX_RESPONSE_BYTES} bytes") from None
                except protocol.BodyDecodingError as error:
                    raise FluxError(f"{method} {path}: {error}") from None
            text = self._redact(raw.decode("utf-8", "replace"))
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = None
            answer = _Answer(response.status_code, response.headers, body, text)
            if answer.status != 429:
                return answer
            retry_after = response.headers.get("retry-after")
            self.rate_limits.append((f"{method} {path}", retry_after))
            if attempt == MAX_429_RETRIES:
                return answer
            wait = protocol.parse_retry_after(retry_after)
            self._sleep(min(MAX_RETRY_AFTER_WAIT, wait if wait is not None else 2.0**attempt))
            attempt += 1

    def _request(self, client: httpx.Client, built: protocol.ApiRequest) -> _Answer:
        return self._send(client, built.method, built.path, json_body=built.json, headers=built.headers)

    def _affordable(self, amount: Decimal) -> bool:
        return self.committed + amount <= self.max_spend

    def _skip(self, name: str, what: str, amount: Decimal) -> Check:
        left = max(Decimal("0"), self.max_spend - self.committed)
        if self._report is not None:
            self._report.skipped.append(name)
        return Check(
            name,
            "SKIP",
            what,
            f"not sent: it costs up to ${usd(amount)}; --max-spend ${usd(self.max_spend)} leaves ${usd(left)}",
        )

    # -- the checks ------------------------------------------------------------------------------

    def run(self, *, echo: Callable[[Check], None] | None = None, conn_id: str | None = None) -> DoctorReport:
        report = self._report = DoctorReport(
            base_url=self.base_url,
            model=self.model.model_id,
            max_spend_usd=usd(self.max_spend),
            started_at=datetime.now(timezone.utc).isoformat(),
            conn_id=conn_id,
        )

        def add(checks: Check | list[Check]) -> None:
            for check in checks if isinstance(checks, list) else [checks]:
                report.checks.append(check)
                if echo is not None:
                    echo(check)

        limits = httpx.Timeout(self.timeout)
        with transport.client(base_url=self.base_url, timeout=limits, follow_redirects=False) as client:
            try:
                health = self._health(client)
                add(health)
                if health.seen.startswith("no answer"):
                    raise _Stop(health.seen)
                auth = self._auth(client)
                add(auth)
                if auth[-1].seen.endswith("(the key was refused)"):
                    raise _Stop("the key was refused")
                for name, step in self._steps(client):
                    add(self._guarded(name, step))
                add(self._retry_after())
            except _Stop as stop:
                add(Check("stopped", "FAIL", "a reachable API that accepts the key", f"{stop}; nothing else was tried"))
        report.committed_usd = usd(self.committed)
        report.spent_usd = usd(self.spent)
        return report

    def _steps(self, client: httpx.Client) -> list[tuple[str, Callable[[], Check | list[Check]]]]:
        """Every step after auth, in order: the free ones, then the paid ones, cheapest proof first."""
        checked = [self.model, *self.models]
        judged: list[tuple[str, Callable[[], Check | list[Check]]]] = [
            ("sentinel price", lambda: self._sentinel_price(client)),
            ("sentinel", lambda: self._evaluate(client)),
        ]
        return [
            *((f"model {v.value}", lambda v=v: self._variant(client, v)) for v in Variant),
            ("validation", lambda: self._validation(client)),
            ("balance", lambda: self._balance(client)),
            ("run", lambda: self._real_run(client)),
            ("cost 1920x1080", lambda: self._seed_price(client)),
            ("batches", lambda: self._batches(client)),
            ("batch read-back", lambda: self._batch_read_back(client)),
            *((f"price {v.value}", lambda v=v: self._price(client, v)) for v in self.models),
            *((f"edit {v.value}", lambda v=v: self._edit(client, v)) for v in checked),
            ("idempotency later", lambda: self._replay_later(client)),
            *(judged if self.sentinel else []),
        ]

    def _guarded(self, name: str, step: Callable[[], Check | list[Check]]) -> Check | list[Check]:
        """One step; an API that stops answering fails that step, and the next ones are still tried."""
        try:
            return step()
        except (httpx.HTTPError, FluxError) as error:
            seen = self._redact(f"{type(error).__name__}: {error}")
            return Check(name, "FAIL", "an answer to every request, in time and bounded", seen)

    def _health(self, client: httpx.Client) -> Check:
        expected = "2xx from /v1/health without a key"
        try:
            response = client.get("/v1/health")
        except httpx.HTTPError as error:
            return Check("health", "FAIL", expected, f"no answer from {self.base_url} ({type(error).__name__})")
        body = _json_or_text(response)
        seen = f"{response.status_code} {_short(body)}"
        rid = protocol.request_id_of(response.headers)
        if not 200 <= response.status_code < 300:
            return Check("health", "FAIL", expected, seen, rid)
        if not protocol.health_ok(body):
            return Check("health", "FAIL", expected, seen + " (the body says the API is not ok)", rid)
        known = isinstance(body, dict) and (body.get("status") == "ok" or body.get("ok") is True)
        if not known:  # undocumented body: the provider reads any 2xx that does not say otherwise
            return Check("health", "WARN", expected, seen + ' (neither {"status": "ok"} nor {"ok": true})', rid)
        return Check("health", "PASS", expected, seen, rid)

    def _auth(self, client: httpx.Client) -> list[Check]:
        path = f"/v1/runs/{protocol.probe_run_id()}"
        bad = self._send(client, "GET", path, key=_BAD_KEY)
        checks = [
            Check(
                "auth: bad key",
                "PASS" if bad.status == 401 else "FAIL",
                "401 UNAUTHORIZED for a wrong key",
                bad.brief(),
                bad.request_id,
            )
        ]
        good = self._send(client, "GET", path)
        expected = "404 for an unknown run (key accepted)"
        if good.status in (401, 403):
            seen = f"{good.brief()} (the key was refused)"
            checks.append(Check("auth: your key", "FAIL", expected, seen, good.request_id))
            return checks
        status: Status = "PASS" if good.status == 404 else "FAIL"
        checks.append(Check("auth: your key", status, expected, good.brief(), good.request_id))
        return checks

    def _variant(self, client: httpx.Client, variant: Variant) -> Check:
        # No prompt and an impossible size: a 422 proves the model is served, and nothing can be billed.
        body = {"input": {"image_size": _INVALID_SIZE}}
        path = f"/v1/models/{variant.model_id}/runs"
        answer = self._send(client, "POST", path, json_body=body, headers=_fresh_key("variant"))
        name = f"model {variant.value}"
        expected = "422 (model served; the empty request refused)"
        if answer.status == 422:
            return Check(name, "PASS", expected, f"422 {answer.code}", answer.request_id)
        if answer.status == 403:
            return Check(name, "WARN", expected, f"403 {answer.code}: this key may not use it", answer.request_id)
        if answer.ok:
            self._count_unplanned()
        return Check(name, "FAIL", expected, answer.brief(), answer.request_id)

    def _validation(self, client: httpx.Client) -> Check:
        body = {"input": {"prompt": "flux2 doctor validation probe", "image_size": {"width": 99999, "height": 512}}}
        path = f"/v1/models/{self.model.model_id}/runs"
        answer = self._send(client, "POST", path, json_body=body, headers=_fresh_key("validation"))
        expected = "422 VALIDATION_ERROR with errors[].loc naming input.image_size, and no run"
        locs = answer.locs()
        names_field = any("image_size" in [str(p) for p in loc] for loc in locs)
        seen = f"{answer.status} {answer.code} errors[].loc={locs or None}"
        if answer.ok:
            self._count_unplanned()
            return Check("validation", "FAIL", expected, f"{seen}: a run was created", answer.request_id)
        if answer.status == 422 and names_field:
            return Check("validation", "PASS", expected, seen, answer.request_id)
        if answer.status == 422:
            seen += " (the field is not named: our errors fall back to the API's message)"
        return Check("validation", "FAIL", expected, seen, answer.request_id)

    def _balance(self, client: httpx.Client) -> Check:
        built = protocol.get_balance()
        answer = self._request(client, built)
        expected = '200 {"balance": "<decimal string>", ...} (plans are checked against it)'
        if answer.ok:
            balance = protocol.parse_balance(answer.body)
            if balance is None:
                return Check("balance", "FAIL", expected, f"{answer.status} {_short(answer.text)}", answer.request_id)
            return Check("balance", "PASS", expected, f"balance ${usd(balance)}", answer.request_id)
        # The provider goes on without it (and says so once): a deviation to know of, not a failure.
        return Check(
            "balance",
            "WARN",
            expected,
            f"{answer.brief()}: plans will not be checked against the balance",
            answer.request_id,
        )

    def _count_unplanned(self) -> None:
        """A request that should have been refused created a run: assume it is billed."""
        self.committed += self.prices.price(self.model).worst_cost(1)

    # -- paid runs -------------------------------------------------------------------------------

    def _create(self, client: httpx.Client, built: protocol.ApiRequest, worst: Decimal) -> _Answer:
        """Send a create whose worst case was counted; a refused one (no run) gives its money back."""
        self.committed += worst
        answer = self._request(client, built)
        if not answer.ok:
            self.committed -= worst
        return answer

    def _wait(self, client: httpx.Client, run_id: str) -> tuple[_Answer, Run | None]:
        """Poll a run until it ends (or ``run_timeout``); the last answer and the run as the provider reads it."""
        deadline = time.monotonic() + self.run_timeout
        answer = self._request(client, protocol.get_run(run_id))
        while answer.ok and not RunStatus.parse(_status(answer.body)).terminal and time.monotonic() < deadline:
            self._sleep(1.0)
            answer = self._request(client, protocol.get_run(run_id))
        return answer, (protocol.parse_run(answer.body) if answer.ok else None)

    def _bill(self, run: Run | None) -> Decimal | None:
        if run is not None and run.cost is not None:
            self.spent += run.cost
        return run.cost if run is not None else None

    def _real_run(self, client: httpx.Client) -> list[Check]:
        request = build_input(self.model, prompt=_PROMPT, image_size=CHEAPEST_SIZE, seed=7)
        price = self.prices.price(self.model)
        mp = billed_megapixels(*CHEAPEST_SIDES)
        estimate, worst = price.cost(mp), price.worst_cost(mp)
        where = f"{self.model.model_id}, {CHEAPEST_SIDES[0]}x{CHEAPEST_SIDES[1]} = {mp} MP"
        if not self._affordable(worst):
            return [self._skip(name, "one paid run", worst) for name in ("run", "idempotency")]
        self._first = protocol.create_run(
            self.model,
            request,
            idempotency_key=f"flux2-doctor-{uuid.uuid4().hex}",
            client_ref="flux2-doctor",
            metadata={"source": "flux2 doctor"},
        )
        first = self._create(client, self._first, worst)
        if not first.ok or not isinstance(first.body, dict) or not first.body.get("id"):
            self._first = None
            return [Check("run", "FAIL", "2xx with a run id", first.brief(), first.request_id)]
        self._first_id = str(first.body["id"])
        self._first_at = time.monotonic()
        self._first_worst = worst
        checks = self._idempotency(client, self._first, self._first_id, worst)
        checks.extend(self._outcome(client, self._first_id, estimate, where))
        return checks

    def _idempotency(
        self, client: httpx.Client, built: protocol.ApiRequest, run_id: str, worst: Decimal
    ) -> list[Check]:
        checks = []
        if self._affordable(worst):  # a deviating API could bill the replay
            again = self._create(client, built, worst)
            replay_id = again.body.get("id") if isinstance(again.body, dict) else None
            expected = f"2xx replaying run {run_id} (same key, same body)"
            if again.ok and replay_id == run_id:
                self.committed -= worst  # replayed: nothing more can be billed
                checks.append(Check("idempotency", "PASS", expected, f"{again.status}, run {replay_id}"))
            else:
                seen = f"{again.status} {again.code or ''} run {replay_id}".strip()
                if replay_id and replay_id != run_id:
                    seen += " (a second run: billed twice)"
                checks.append(Check("idempotency", "FAIL", expected, seen, again.request_id))
        else:
            checks.append(self._skip("idempotency", "a replay", worst))
        if self._affordable(worst):
            changed = dict(built.json or {})
            changed["input"] = {**changed["input"], "seed": 8}
            self.committed += worst
            conflict = self._send(client, built.method, built.path, json_body=changed, headers=built.headers)
            expected = "409 CONFLICT (same key, different body)"
            if conflict.status == 409:
                self.committed -= worst
                checks.append(Check("idempotency 409", "PASS", expected, f"409 {conflict.code}", conflict.request_id))
            else:
                seen = conflict.brief()
                if conflict.ok:
                    seen += " (accepted: a changed request under an old key is not refused)"
                else:
                    self.committed -= worst
                checks.append(Check("idempotency 409", "FAIL", expected, seen, conflict.request_id))
        else:
            checks.append(self._skip("idempotency 409", "a 409", worst))
        return checks

    def _outcome(self, client: httpx.Client, run_id: str, estimate: Decimal, where: str) -> list[Check]:
        answer, run = self._wait(client, run_id)
        status = _status(answer.body)
        if run is None or status != "succeeded":
            seen = f"{answer.status} status_code={status}"
            if isinstance(answer.body, dict) and answer.body.get("failure_code"):
                seen += f" {answer.body['failure_code']}: {answer.body.get('failure_message')}"
            return [
                Check("run", "FAIL", f"run {run_id} succeeded within {self.run_timeout:.0f} s", seen, answer.request_id)
            ]
        checks = [Check("run", "PASS", "succeeded", f"run {run_id} succeeded", answer.request_id)]
        checks.append(self._cost("cost", answer, run, estimate, where, self.model.value))
        checks.extend(self._output(answer))
        return checks

    def _cost(
        self,
        name: str,
        answer: _Answer,
        run: Run,
        estimate: Decimal,
        where: str,
        key: str,
        *,
        record: bool = True,
        reference_mp: int = 0,
    ) -> Check:
        """Compare the cost the API billed with the table's, and record it as measured (``record``: a run
        whose bill says what the model's price is, not one mixing in reference megapixels)."""
        expected = f"cost ${usd(estimate)} (our price table: {where})"
        cost = self._bill(run)
        if cost is None:
            raw = answer.body.get("cost") if isinstance(answer.body, dict) else None
            return Check(name, "FAIL", expected, f"cost {raw!r} (no decimal cost on the run)", answer.request_id)
        if record:
            self._measured(key, cost, run, reference_mp)
        status: Status = "PASS" if cost == estimate else "FAIL"
        raw = answer.body.get("cost") if isinstance(answer.body, dict) else None
        seen = f"cost ${usd(cost)} ({raw!r} on the wire)"
        if status == "FAIL":
            seen += f": set the connection's prices extra for {key} (flux2 doctor --write-prices), or report it"
        return Check(name, status, expected, seen, answer.request_id, cost_usd=usd(cost))

    def _measured(self, key: str, cost: Decimal, run: Run, reference_mp: int = 0) -> None:
        """Record a measured price in the ``prices`` extra format: a 1 MP run measures the first
        megapixel (and, where the table bills every megapixel alike, the others); a 2 MP run the extra one;
        an edit billed per megapixel of input and output, its rate (the bill over all its megapixels)."""
        if self._report is None:
            return
        prices = self._report.measured_prices
        price = self.prices.price(key if "/" in key else resolve_variant(key))
        width, height = _size_of(run)
        mp = billed_megapixels(width, height)
        if price.per_image:
            prices[key] = str(cost)
            return
        if reference_mp:
            if price.first_mp == price.extra_mp:  # every megapixel alike: the rate is the bill over them all
                rate = str(cost / (mp + reference_mp))
                prices[key] = {"first_mp": rate, "extra_mp": rate}
            return
        entry = dict(prices.get(key) or {})
        if mp == 1:
            entry["first_mp"] = str(cost)
            if price.first_mp == price.extra_mp:
                entry.setdefault("extra_mp", str(cost))
        elif mp > 1 and "first_mp" in entry:
            entry["extra_mp"] = str((cost - Decimal(entry["first_mp"])) / (mp - 1))
        prices[key] = entry

    def _output(self, answer: _Answer) -> list[Check]:
        raw = answer.body.get("output")
        expected = 'output {"outputs": [{"type": "image", "url", "content_type", "width", "height"}], "seed", ...}'
        run = protocol.parse_run(answer.body)
        images = run.output.images if run.output else []
        if not images:
            keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            seen = f"no image our parser can read (output keys: {keys})"
            return [Check("output shape", "FAIL", expected, seen, answer.request_id)]
        shape = next((k for k in ("outputs", "images", "image_urls") if isinstance(raw, dict) and raw.get(k)), "?")
        first = images[0]
        seen = f"{shape}[0]: content_type {first.content_type}, {first.width}x{first.height}"
        status: Status = "PASS"
        if shape != "outputs":
            status, seen = "WARN", seen + " (a documented alternate shape; the parser reads it)"
        if (first.width, first.height) not in ((None, None), CHEAPEST_SIDES):
            status, seen = "FAIL", seen + f" (asked {CHEAPEST_SIDES[0]}x{CHEAPEST_SIDES[1]})"
        return [Check("output shape", status, expected, seen, answer.request_id), self._download(first.url)]

    def _download(self, url: str) -> Check:
        expected = f"the image downloads without the API key, with an expiry of at least {MIN_URL_TTL:.0f} s"
        shown = url.split("?", 1)[0]  # the signature stays out of the report
        if url.startswith("data:"):
            return Check("output url", "WARN", expected, "a data: URI (sync mode?), no URL to expire")
        try:
            plain = transport.client(timeout=httpx.Timeout(self.timeout), follow_redirects=True)  # no API key
            with plain, transport.deadline(self.request_deadline), plain.stream("GET", url) as response:
                data = transport.read_body(response, self.max_download_bytes)
        except protocol.BodyTooLargeError:
            return Check("output url", "FAIL", expected, f"{shown}: over {self.max_download_bytes} bytes")
        except protocol.BodyDecodingError as error:
            return Check("output url", "FAIL", expected, f"{shown}: {error}")
        except httpx.HTTPError as error:
            return Check("output url", "FAIL", expected, f"{shown}: {type(error).__name__}")
        if response.status_code != 200:
            return Check("output url", "FAIL", expected, f"{shown}: HTTP {response.status_code}")
        size = header_size(data)
        ttl, source = url_ttl(url, response.headers)
        shown_size = f"{size[0]}x{size[1]}" if size else "not an image"
        seen = f"{response.status_code} {response.headers.get('content-type')} {shown_size}"
        if size is None or size != CHEAPEST_SIDES:
            return Check("output url", "FAIL", expected, seen)
        if ttl is None:
            return Check("output url", "WARN", expected, seen + "; no expiry in the headers or the URL")
        seen += f"; expires in {ttl:.0f} s ({source})"
        return Check("output url", "PASS" if ttl >= MIN_URL_TTL else "FAIL", expected, seen)

    def _seed_price(self, client: httpx.Client) -> Check:
        """1920×1080 on FLUX 2 [pro]: 2 MP, the seed's $0.045 (the extra-MP rate and the rounding up)."""
        size = f"{SEED_SIZE[0]}x{SEED_SIZE[1]}"
        return self._paid_run(client, "cost 1920x1080", Variant.PRO, size, SEED_SIZE, "one 2 MP run")

    def _batches(self, client: httpx.Client) -> Check:
        body = {"input": [{"image_size": _INVALID_SIZE, "client_ref": "flux2-doctor"}]}
        path = f"/v1/models/{self.model.model_id}/batches"
        answer = self._send(client, "POST", path, json_body=body, headers=_fresh_key("batch"))
        expected = "422 naming input.0 (batches served) or naming the model (not for it: single runs are used)"
        locs = answer.locs()
        seen = f"{answer.status} {answer.code} errors[].loc={locs or None}"
        self._batches_served = answer.status == 422 and any(loc[:2] == ["input", 0] for loc in locs)
        if self._batches_served:
            return Check("batches", "PASS", expected, seen + ": batches supported", answer.request_id)
        if answer.status == 422 and any("model" in [str(p) for p in loc] for loc in locs):
            return Check("batches", "PASS", expected, seen + ": not for this model, single runs", answer.request_id)
        if answer.ok:
            self._count_unplanned()
        return Check("batches", "FAIL", expected, seen, answer.request_id)

    def _batch_read_back(self, client: httpx.Client) -> Check:
        """A real 2-item batch, read back through the provider's parsers: the create, the batch's lean
        items until both end, then ``/items`` one item a page (the cursor followed), costs on both."""
        name = "batch read-back"
        expected = "a 2-item batch: run ids in order, items ended, /items read in two pages via next_pq, 2 costs"
        if not self._batches_served:
            return Check(name, "SKIP", expected, "not sent: the model serves no batches (see 'batches')")
        price = self.prices.price(self.model)
        worst = 2 * price.worst_cost(1)
        if not self._affordable(worst):
            return self._skip(name, "a 2-item batch", worst)
        items: list[tuple[FluxInput | protocol.WireInput, str]] = [
            (
                build_input(self.model, prompt=f"{_PROMPT}, view {i}", image_size=CHEAPEST_SIZE, seed=i),
                f"flux2-doctor-{i}",
            )
            for i in range(2)
        ]
        built = protocol.create_batch(self.model, items, idempotency_key=f"flux2-doctor-batch-{uuid.uuid4().hex}")
        created = self._create(client, built, worst)
        if not created.ok:
            return Check(name, "FAIL", expected, created.brief(), created.request_id)
        batch = protocol.parse_batch(created.body)
        run_ids = [i.run_id for i in sorted(batch.items, key=lambda i: i.sequence_index or 0)]
        if len(run_ids) != 2 or not all(run_ids):
            return Check(name, "FAIL", expected, f"batch {batch.id} lists run ids {run_ids}", created.request_id)
        deadline = time.monotonic() + self.run_timeout
        while not batch.terminal and time.monotonic() < deadline:
            self._sleep(1.0)
            answer = self._request(client, protocol.get_batch(batch.id))
            if not answer.ok:
                return Check(name, "FAIL", expected, f"GET batch: {answer.brief()}", answer.request_id)
            batch = protocol.parse_batch(answer.body)
        if not batch.terminal:
            return Check(name, "FAIL", expected, f"batch {batch.id} not ended in {self.run_timeout:.0f} s")
        pages, runs = 0, []
        request: protocol.ApiRequest | None = protocol.get_batch_items(batch.id, limit=1)
        seen_cursors: set[str] = set()
        while request is not None and pages < 4:
            answer = self._request(client, request)
            if not answer.ok:
                return Check(name, "FAIL", expected, f"GET items page {pages + 1}: {answer.brief()}", answer.request_id)
            page = protocol.parse_batch_items(answer.body)
            pages += 1
            runs.extend(page.runs)
            request = protocol.next_items_request(batch.id, page, seen_cursors)
        costs = [run.cost for run in runs]
        for run in runs:
            self._bill(run)
        shown = [str(c) if c is not None else None for c in costs]
        seen = f"batch {batch.id} status {batch.status_code!r}; {pages} page(s), runs {[r.id for r in runs]}"
        seen += f", costs {shown}"
        ok = [r.id for r in runs] == run_ids and pages == 2 and all(c is not None for c in costs)
        if ok and costs != [price.cost(1)] * 2:
            return Check(
                name,
                "FAIL",
                expected,
                seen + f" (the table says ${usd(price.cost(1))} each)",
                cost_usd=usd(sum((c for c in costs if c is not None), Decimal("0"))),
            )
        total = usd(sum((c for c in costs if c is not None), Decimal("0")))
        return Check(name, "PASS" if ok else "FAIL", expected, seen, cost_usd=total)

    def _price(self, client: httpx.Client, variant: Variant) -> Check:
        """One 1 MP run of a variant: what it really costs."""
        what = f"one 1 MP run of {variant.model_id}"
        return self._paid_run(client, f"price {variant.value}", variant, CHEAPEST_SIZE, CHEAPEST_SIDES, what)

    def _paid_run(
        self, client: httpx.Client, name: str, variant: Variant, size: str, sides: tuple[int, int], what: str
    ) -> Check:
        """One run of ``variant`` at ``size``, counted at its worst before it is sent, read to its end,
        its bill compared with the table's and recorded as measured."""
        price = self.prices.price(variant)
        mp = billed_megapixels(*sides)
        estimate, worst = price.cost(mp), price.worst_cost(mp)
        if not self._affordable(worst):
            return self._skip(name, what, worst)
        request = build_input(variant, prompt=_PROMPT, image_size=size, seed=7)
        built = protocol.create_run(variant, request, idempotency_key=f"flux2-doctor-{uuid.uuid4().hex}")
        created = self._create(client, built, worst)
        if not created.ok or not isinstance(created.body, dict) or not created.body.get("id"):
            return Check(name, "FAIL", "2xx with a run id", created.brief(), created.request_id)
        answer, run = self._wait(client, str(created.body["id"]))
        if run is None or _status(answer.body) != "succeeded":
            return Check(name, "FAIL", f"{what} succeeded", f"{answer.status} status_code={_status(answer.body)}")
        where = f"{variant.model_id}, {sides[0]}x{sides[1]} = {mp} MP" + (" (an estimate)" if price.estimate else "")
        return self._cost(name, answer, run, estimate, where, variant.value)

    def _edit(self, client: httpx.Client, variant: Variant) -> Check:
        """One small reference to each candidate model of ``variant`` in turn: the first that takes it is
        where references go (recorded), and its bill is compared with that model's price row."""
        name = f"edit {variant.value}"
        expected = (
            "a model of this variant takes a reference image (the first of: "
            + ", ".join(_edit_candidates(variant))
            + ")"
        )
        tried = []
        for target in _edit_candidates(variant):
            price = self.prices.price(target)
            request = for_route(
                target,
                build_input(variant, prompt=_PROMPT, image_size="square_hd", image_urls=[_small_reference()], seed=7),
            )
            mp = billed_megapixels(request.width, request.height)
            ref_mp = 1
            worst = price.worst_cost(mp, ref_mp)
            if not self._affordable(worst):
                return self._skip(name, f"one edit run on {target}", worst)
            built = protocol.create_run(target, request, idempotency_key=f"flux2-doctor-edit-{uuid.uuid4().hex}")
            created = self._create(client, built, worst)
            if not created.ok or not isinstance(created.body, dict) or not created.body.get("id"):
                tried.append(f"{target}: {created.brief()}")
                continue
            answer, run = self._wait(client, str(created.body["id"]))
            if run is None or _status(answer.body) != "succeeded":
                tried.append(f"{target}: accepted, ended {_status(answer.body)}")
                continue
            if self._report is not None:
                self._report.edit_models[variant.value] = target
            where = f"{target}, {mp} MP out + {ref_mp} MP reference"
            edit_model = target != variant.model_id
            key = target if edit_model else variant.value
            check = self._cost(
                name, answer, run, price.cost(mp, ref_mp), where, key, record=edit_model, reference_mp=ref_mp
            )
            check.seen = f"{target} took the reference; {check.seen}" + (
                f" (refused: {'; '.join(tried)})" if tried else ""
            )
            check.expected = expected + f"; {check.expected}"
            return check
        return Check(name, "FAIL", expected, "; ".join(tried) or "nothing tried")

    def _replay_later(self, client: httpx.Client) -> Check:
        """The first run's create again, ``replay_after`` seconds later: still a replay (same id, no charge)."""
        name = "idempotency later"
        first = self._first
        expected = f"the first run's create, re-sent {self.replay_after:.0f} s later, replayed (same run id)"
        if first is None:
            return Check(name, "SKIP", expected, "no first run to replay")
        if not self._affordable(self._first_worst):
            return self._skip(name, "a late replay", self._first_worst)
        wait = self.replay_after - (time.monotonic() - self._first_at)
        if wait > 0:
            self._sleep(wait)
        again = self._create(client, first, self._first_worst)
        replay_id = again.body.get("id") if isinstance(again.body, dict) else None
        if again.ok and replay_id == self._first_id:
            self.committed -= self._first_worst
            return Check(name, "PASS", expected, f"{again.status}, run {replay_id}", again.request_id)
        seen = f"{again.brief()} run {replay_id}"
        if replay_id and replay_id != self._first_id:
            seen += " (a second run: the API forgot the key; billed twice)"
        return Check(name, "FAIL", expected, seen, again.request_id)

    # -- Sentinel --------------------------------------------------------------------------------

    def _sentinel_price(self, client: httpx.Client) -> Check:
        """``GET /v1/evaluations/job-classes``: the standard class's price, read as the quality step reads it."""
        answer = self._request(client, sentinel.get_job_classes())
        expected = f"200 listing job class {sentinel.DEFAULT_JOB_CLASS!r} with a decimal price"
        if not answer.ok:
            hint = " (the quality step then needs the connection extra sentinel_price_usd)"
            return Check("sentinel price", "FAIL", expected, answer.brief() + hint, answer.request_id)
        price = sentinel.job_class_price(answer.body, sentinel.DEFAULT_JOB_CLASS)
        if price is None:
            seen = f"no price our reader finds in {_short(answer.body)} (set sentinel_price_usd on the connection)"
            return Check("sentinel price", "FAIL", expected, seen, answer.request_id)
        self._listed_price = price
        if self._report is not None:
            self._report.sentinel_price_usd = usd(price)
        seen = f"{sentinel.DEFAULT_JOB_CLASS}: ${usd(price)} per evaluation"
        if self.sentinel_price is not None and self.sentinel_price != price:
            seen += f" (the connection's sentinel_price_usd says ${usd(self.sentinel_price)}: plans use that)"
            return Check("sentinel price", "WARN", expected, seen, answer.request_id)
        return Check("sentinel price", "PASS", expected, seen, answer.request_id)

    def _evaluate(self, client: httpx.Client) -> list[Check]:
        """One evaluation of a small image, as the quality step sends it: accepted, replayed under its key,
        ended with a verdict, and billed the listed price."""
        price = self.sentinel_price if self.sentinel_price is not None else self._listed_price
        if price is None:
            return [Check("sentinel", "SKIP", "one evaluation", "not sent: no price known (see 'sentinel price')")]
        if not self._affordable(price):
            return [self._skip("sentinel", "one evaluation", price)]
        body = sentinel.evaluation_body(
            generated_image_url=_small_image(),
            task_type="product",
            task_description="flux2 doctor: a small test image",
            generation_prompt=_PROMPT,
            client_ref="flux2-doctor-sentinel",
        )
        built = sentinel.create_evaluation(body, idempotency_key=f"flux2-doctor-eval-{uuid.uuid4().hex}")
        expected = '2xx {"id", "status_code": "pending", ...} (202 documented)'
        first = self._create(client, built, price)
        evaluation_id = first.body.get("id") if isinstance(first.body, dict) else None
        if not first.ok or not evaluation_id:
            return [Check("sentinel", "FAIL", expected, first.brief(), first.request_id)]
        checks = [Check("sentinel", "PASS", expected, f"{first.status}, evaluation {evaluation_id}", first.request_id)]
        again = self._send(client, built.method, built.path, json_body=built.json, headers=built.headers)
        same = isinstance(again.body, dict) and again.body.get("id") == evaluation_id
        seen = f"{again.status}, evaluation {again.body.get('id') if isinstance(again.body, dict) else None}"
        checks.append(
            Check(
                "sentinel replay",
                "PASS" if again.ok and same else "FAIL",
                f"2xx replaying evaluation {evaluation_id} (same key, same body)",
                seen + ("" if same else " (a second evaluation: billed twice)"),
                again.request_id,
            )
        )
        if again.ok and not same:
            self.committed += price
        deadline = time.monotonic() + self.run_timeout
        answer = self._request(client, sentinel.get_evaluation(str(evaluation_id)))
        while answer.ok and not sentinel.parse_evaluation(answer.body).terminal and time.monotonic() < deadline:
            self._sleep(2.0)
            answer = self._request(client, sentinel.get_evaluation(str(evaluation_id)))
        expected = f"completed within {self.run_timeout:.0f} s with overall_passed and weighted_pass_rate"
        if not answer.ok:
            return [*checks, Check("sentinel verdict", "FAIL", expected, answer.brief(), answer.request_id)]
        evaluation = sentinel.parse_evaluation(answer.body)
        if not evaluation.completed:
            seen = f"status {evaluation.status_code}" + (
                f" {evaluation.failure_code}" if evaluation.failure_code else ""
            )
            return [*checks, Check("sentinel verdict", "FAIL", expected, seen, answer.request_id)]
        seen = f"overall_passed {evaluation.overall_passed}, weighted_pass_rate {evaluation.weighted_pass_rate}"
        seen += f", {len(evaluation.top_issues)} issue(s), {len(evaluation.top_strengths)} strength(s)"
        verdict: Status = "PASS" if evaluation.weighted_pass_rate is not None else "WARN"
        checks.append(Check("sentinel verdict", verdict, expected, seen, answer.request_id))
        expected = f"cost ${usd(price)} (the price the quality step plans with)"
        if evaluation.cost is None:
            checks.append(Check("sentinel cost", "FAIL", expected, "no decimal cost on the completed evaluation"))
            return checks
        self.spent += evaluation.cost
        status: Status = "PASS" if evaluation.cost == price else "FAIL"
        seen = f"cost ${usd(evaluation.cost)}" + (
            "" if status == "PASS" else ": set sentinel_price_usd on the connection"
        )
        checks.append(Check("sentinel cost", status, expected, seen, answer.request_id, cost_usd=usd(evaluation.cost)))
        return checks

    def _retry_after(self) -> Check:
        expected = "Retry-After (seconds or an HTTP date) on a 429"
        if not self.rate_limits:
            return Check("retry-after", "SKIP", expected, "no 429 during the checks")
        missing = [what for what, value in self.rate_limits if protocol.parse_retry_after(value) is None]
        seen = f"{len(self.rate_limits)} 429(s), values {[value for _, value in self.rate_limits]}"
        if missing:
            return Check("retry-after", "WARN", expected, seen + " (the provider backs off exponentially without it)")
        return Check("retry-after", "PASS", expected, seen)


def _edit_candidates(variant: Variant) -> list[str]:
    """Where a variant's references may go, most likely first: its documented edit model, else an
    ``…/edit`` model beside it, then the text-to-image model itself."""
    documented = EDIT_MODELS.get(variant)
    first = documented or f"{variant.model_id}/edit"
    return [first, variant.model_id]


def _small_image() -> str:
    """A 128×128 gradient PNG as a ``data:`` URI: something to judge that is not a blank image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").resize((128, 128)).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _small_reference() -> str:
    """A 64×64 PNG as a ``data:`` URI: the smallest reference any model bills (1 MP)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _status(body: Any) -> str | None:
    value = body.get("status_code") if isinstance(body, dict) else None
    return value.strip().lower() if isinstance(value, str) else None


def _size_of(run: Run) -> tuple[int, int]:
    from airflow_provider_flux2.models import DEFAULT_SIZE, size_of

    try:
        return size_of((run.input or {}).get("image_size") or DEFAULT_SIZE)
    except FluxError:
        return FLAT_EDIT_SIZE


def url_ttl(url: str, headers: httpx.Headers | dict[str, str]) -> tuple[float | None, str]:
    """Seconds an output URL stays valid, and where that was read; ``(None, "")`` when nothing says.

    Read from the URL's presigning parameters (S3 ``X-Amz-Date`` + ``X-Amz-Expires``, GCS
    ``X-Goog-Date`` + ``X-Goog-Expires``, CloudFront ``Expires``, Azure ``se``, the emulator's
    ``expires``), else from the download's ``Expires`` or ``Cache-Control: max-age`` headers.
    """
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    now = time.time()
    for prefix in ("x-amz", "x-goog"):
        if f"{prefix}-expires" in query and f"{prefix}-date" in query:
            try:
                signed = datetime.strptime(query[f"{prefix}-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                return signed.timestamp() + float(query[f"{prefix}-expires"]) - now, f"URL {prefix}-expires"
            except ValueError:
                pass
    for name in ("expires", "se"):
        if name in query:
            value = query[name]
            try:
                return float(value) - now, f"URL {name}="
            except ValueError:
                try:
                    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now, f"URL {name}="
                except ValueError:
                    pass
    header = {k.lower(): v for k, v in dict(headers).items()}
    match = re.search(r"max-age=(\d+)", header.get("cache-control", ""))
    if match:
        return float(match.group(1)), "Cache-Control max-age"
    if header.get("expires"):
        try:
            return parsedate_to_datetime(header["expires"]).timestamp() - now, "Expires header"
        except (TypeError, ValueError):
            pass
    return None, ""


def _fresh_key(purpose: str) -> dict[str, str]:
    return {"Idempotency-Key": f"flux2-doctor-{purpose}-{uuid.uuid4().hex}"}


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:120]


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_report(report: DoctorReport) -> str:
    """The closing lines under the step lines."""
    verdict = (
        "all checks passed"
        if report.passed
        else f"{len(report.deviations)} deviation(s): " + ", ".join(c.name for c in report.deviations)
    )
    lines = [
        f"spent ${report.spent_usd} as the API reports it (at most ${report.committed_usd} committed, "
        f"--max-spend ${report.max_spend_usd})"
    ]
    if report.skipped:
        lines.append(f"skipped under --max-spend: {', '.join(report.skipped)}")
    if report.edit_models:
        lines.append(f"reference images go to: {json.dumps(report.edit_models)} (the connection's edit_models extra)")
    if report.sentinel_price_usd is not None:
        lines.append(f"Sentinel: ${report.sentinel_price_usd} per evaluation (job class standard)")
    lines.append(verdict)
    return "\n".join(lines)


def run_cli(args: Any, hook: Any, out: Callable[[str], None] = print) -> int:
    """``flux2 doctor``: run the checks with a hook's connection, print them, write ``--json`` and
    ``--write-prices``."""
    import os
    from pathlib import Path

    from airflow_provider_flux2.pricing import to_usd

    config = hook.config
    named = list(args.model or [])
    main = named[0] if named else config.model
    models: list[Variant | str] = list(Variant) if args.all_models else named[1:]
    doctor = Doctor(
        base_url=config.base_url,
        api_key=config.api_key,
        prices=config.prices,
        model=main,
        models=models,
        organization_id=config.organization_id,
        max_spend=to_usd(args.max_spend, "--max-spend")
        if args.max_spend is not None
        else (ALL_MODELS_MAX_SPEND if args.all_models else DEFAULT_MAX_SPEND),
        timeout=config.timeout,
        request_deadline=config.request_deadline,
        run_timeout=args.run_timeout,
        replay_after=args.replay_after,
        max_download_bytes=config.max_download_bytes,
        sentinel=bool(getattr(args, "sentinel", False)),
        sentinel_price=getattr(config, "sentinel_price", None),
    )
    from_env = bool(os.environ.get("FLUX2_API_KEY"))  # how ``flux2 generate`` finds its key, too
    conn_id = None if from_env else getattr(config, "conn_id", None)
    source = "key from FLUX2_API_KEY" if from_env else f"connection {conn_id}"
    out(
        f"flux2 doctor: {doctor.base_url} ({source}, model {doctor.model.model_id}, max spend ${usd(doctor.max_spend)})"
    )
    report = doctor.run(echo=lambda check: out(check.line()), conn_id=conn_id)
    out(format_report(report))
    for flag, content in (("json", report.to_dict()), ("write_prices", report.measured_prices)):
        target = getattr(args, flag, None)
        if target:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2) + "\n")
            what = "report" if flag == "json" else "measured prices (the connection's prices extra format)"
            out(f"{what} written to {path}")
    return 0 if report.passed else 1


__all__ = ["Check", "Doctor", "DoctorReport", "format_report", "run_cli", "url_ttl"]
