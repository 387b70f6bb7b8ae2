"""``flux2 doctor``: check a connection's API against the protocol we implement, for a few cents.

No machine that builds this provider reaches the real Runflow API, and the protocol has points
marked **[choice]**. The doctor asks the API itself, step by step, and says for each step what was
expected and what was seen: health, auth, the variants, validation, idempotency, one real run at the
cheapest size (its ``cost`` compared with our price table), the output shape the parser reads, the
output URL's expiry, batch support, and ``Retry-After`` on any 429.

Requests are built and parsed by :mod:`~airflow_provider_flux2.protocol` (the code a DAG runs);
only the sending is the doctor's own, so it can look at raw statuses and headers. Everything that
could be billed is counted *before* it is sent, at its worst case, and never passes ``max_spend``.
The API key is never printed, written to the report, or echoed from a server's message.
"""

from __future__ import annotations

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

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxError
from airflow_provider_flux2.models import Variant, build_input, resolve_variant
from airflow_provider_flux2.pricing import PriceTable, billed_megapixels, usd

Status = Literal["PASS", "FAIL", "WARN", "SKIP"]

#: The cheapest size the API takes: every preset is one megapixel, ``square`` has the fewest bytes.
CHEAPEST_SIZE = "square"
CHEAPEST_SIDES = (512, 512)
DEFAULT_MAX_SPEND = Decimal("0.10")
#: An output URL must stay valid at least this long for the provider to fetch it after completion.
MIN_URL_TTL = 60.0
#: Bounds of every call the doctor makes.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
MAX_429_RETRIES = 3
MAX_RETRY_AFTER_WAIT = 10.0
_BAD_KEY = "rf_doctor_deliberately_invalid_key"
_MISSING_RUN = "run_flux2_doctor_does_not_exist"
_INVALID_SIZE = "flux2_doctor_invalid_size"


@dataclass
class Check:
    """One step of the report: what was expected, what was seen, and the verdict."""

    name: str
    status: Status
    expected: str
    seen: str
    request_id: str | None = None
    cost_usd: str | None = None

    def line(self) -> str:
        rid = f" [request id {self.request_id}]" if self.request_id else ""
        return f"{self.status} {self.name:<16} expected {self.expected}; seen {self.seen}{rid}"


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

    def locs(self) -> list[list[Any]]:
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        return [list(e["loc"]) for e in errors or [] if isinstance(e, dict) and isinstance(e.get("loc"), list)]


class Doctor:
    """Runs the checks against one API endpoint.

    :param base_url: the API (the connection's host).
    :param api_key: the key to check; never printed.
    :param prices: the price table the provider would use (the connection's overrides applied).
    :param model: the variant of the real run (the connection's default model).
    :param max_spend: dollars the doctor may commit at worst; a step that could pass it is skipped.
    :param timeout: per-request timeout, seconds.
    :param run_timeout: how long the real run may take, seconds.
    :param sleep: how to wait (tests pass a fast one).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        prices: PriceTable | None = None,
        model: Variant | str | None = None,
        organization_id: str | None = None,
        max_spend: Decimal = DEFAULT_MAX_SPEND,
        timeout: float = 30.0,
        run_timeout: float = 180.0,
        max_download_bytes: int = 64 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._org = organization_id
        self.prices = prices or PriceTable()
        self.model = resolve_variant(model)
        self.max_spend = max_spend
        self.timeout = timeout
        self.run_timeout = run_timeout
        self.max_download_bytes = max_download_bytes
        self._sleep = sleep
        self.committed = Decimal("0")
        self.spent = Decimal("0")
        self.rate_limits: list[tuple[str, str | None]] = []  # (what, Retry-After) of every 429 seen

    # -- sending ---------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

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
            with client.stream(method, path, json=json_body, headers={**auth, **(headers or {})}) as response:
                raw = b""
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise FluxError(f"{method} {path}: response over {MAX_RESPONSE_BYTES} bytes")
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

    def _affordable(self, amount: Decimal) -> bool:
        return self.committed + amount <= self.max_spend

    # -- the checks ------------------------------------------------------------------------------

    def run(self, *, echo: Callable[[Check], None] | None = None, conn_id: str | None = None) -> DoctorReport:
        report = DoctorReport(
            base_url=self.base_url,
            model=self.model.model_id,
            max_spend_usd=usd(self.max_spend),
            started_at=datetime.now(timezone.utc).isoformat(),
            conn_id=conn_id,
        )

        def add(check: Check) -> Check:
            report.checks.append(check)
            if echo is not None:
                echo(check)
            return check

        limits = httpx.Timeout(self.timeout)
        with httpx.Client(base_url=self.base_url, timeout=limits, follow_redirects=False) as client:
            if add(self._health(client)).status == "FAIL":
                add(Check("stopped", "FAIL", "a reachable API", "the health check failed; nothing else was tried"))
            else:
                try:
                    for check in self._auth(client):
                        add(check)
                    for variant in Variant:
                        add(self._variant(client, variant))
                    add(self._validation(client))
                    for check in self._real_run(client):
                        add(check)
                    add(self._batches(client))
                except (httpx.HTTPError, FluxError) as error:  # the report still says what was seen
                    seen = self._redact(f"{type(error).__name__}: {error}")
                    add(Check("stopped", "FAIL", "an answer to every request, in time and bounded", seen))
                add(self._retry_after())
        report.committed_usd = usd(self.committed)
        report.spent_usd = usd(self.spent)
        return report

    def _health(self, client: httpx.Client) -> Check:
        expected = '200 {"status": "ok"} without a key'
        try:
            response = client.get("/v1/health")
        except httpx.HTTPError as error:
            return Check("health", "FAIL", expected, f"no answer from {self.base_url} ({type(error).__name__})")
        body = _json_or_text(response)
        seen = f"{response.status_code} {_short(body)}"
        ok = response.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok"
        return Check("health", "PASS" if ok else "FAIL", expected, seen, protocol.request_id_of(response.headers))

    def _auth(self, client: httpx.Client) -> list[Check]:
        path = f"/v1/runs/{_MISSING_RUN}"
        bad = self._send(client, "GET", path, key=_BAD_KEY)
        checks = [
            Check(
                "auth: bad key",
                "PASS" if bad.status == 401 else "FAIL",
                "401 UNAUTHORIZED for a wrong key",
                f"{bad.status} {bad.code or _short(bad.text)}",
                bad.request_id,
            )
        ]
        good = self._send(client, "GET", path)
        if good.status == 404:
            seen = f"404 {good.code}"
            checks.append(
                Check("auth: your key", "PASS", "404 for an unknown run (key accepted)", seen, good.request_id)
            )
        else:
            hint = " (the key was refused)" if good.status in (401, 403) else ""
            seen = f"{good.status} {good.code or _short(good.text)}{hint}"
            checks.append(
                Check("auth: your key", "FAIL", "404 for an unknown run (key accepted)", seen, good.request_id)
            )
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
        if 200 <= answer.status < 300:
            self._count_unplanned()
        return Check(name, "FAIL", expected, f"{answer.status} {answer.code or _short(answer.text)}", answer.request_id)

    def _validation(self, client: httpx.Client) -> Check:
        body = {"input": {"prompt": "flux2 doctor validation probe", "image_size": {"width": 99999, "height": 512}}}
        path = f"/v1/models/{self.model.model_id}/runs"
        answer = self._send(client, "POST", path, json_body=body, headers=_fresh_key("validation"))
        expected = "422 VALIDATION_ERROR with errors[].loc naming input.image_size, and no run"
        locs = answer.locs()
        names_field = any("image_size" in [str(p) for p in loc] for loc in locs)
        seen = f"{answer.status} {answer.code} errors[].loc={locs or None}"
        if 200 <= answer.status < 300:
            self._count_unplanned()
            return Check("validation", "FAIL", expected, f"{seen}: a run was created", answer.request_id)
        if answer.status == 422 and names_field:
            return Check("validation", "PASS", expected, seen, answer.request_id)
        if answer.status == 422:
            seen += " (the field is not named: our errors fall back to the API's message)"
        return Check("validation", "FAIL", expected, seen, answer.request_id)

    def _count_unplanned(self) -> None:
        """A request that should have been refused created a run: assume it is billed."""
        self.committed += self.prices.price(self.model).cost(1)

    def _real_run(self, client: httpx.Client) -> list[Check]:
        request = build_input(
            self.model, prompt="flux2 doctor: a small red cube on a white table", image_size=CHEAPEST_SIZE, seed=7
        )
        price = self.prices.price(self.model)
        mp = billed_megapixels(*CHEAPEST_SIDES)
        estimate = price.cost(mp)
        where = f"{self.model.model_id}, {CHEAPEST_SIDES[0]}x{CHEAPEST_SIDES[1]} = {mp} MP"
        if not self._affordable(estimate):
            why = f"--max-spend ${usd(self.max_spend)} leaves ${usd(self.max_spend - self.committed)}"
            skipped = f"not sent: one run costs ${usd(estimate)} ({where}); {why}"
            return [Check(name, "SKIP", "one paid run", skipped) for name in ("run", "idempotency")]
        key = f"flux2-doctor-{uuid.uuid4().hex}"
        built = protocol.create_run(
            self.model, request, idempotency_key=key, client_ref="flux2-doctor", metadata={"source": "flux2 doctor"}
        )
        self.committed += estimate
        first = self._send(client, built.method, built.path, json_body=built.json, headers=built.headers)
        if not 200 <= first.status < 300 or not isinstance(first.body, dict) or not first.body.get("id"):
            seen = f"{first.status} {first.code or _short(first.text)}"
            return [Check("run", "FAIL", "2xx with a run id", seen, first.request_id)]
        run_id = str(first.body["id"])
        checks = self._idempotency(client, built, run_id, estimate)
        checks.extend(self._outcome(client, run_id, estimate, where))
        return checks

    def _idempotency(
        self, client: httpx.Client, built: protocol.ApiRequest, run_id: str, estimate: Decimal
    ) -> list[Check]:
        checks = []
        if self._affordable(estimate):  # a deviating API could bill the replay
            self.committed += estimate
            again = self._send(client, built.method, built.path, json_body=built.json, headers=built.headers)
            replay_id = again.body.get("id") if isinstance(again.body, dict) else None
            expected = f"2xx replaying run {run_id} (same key, same body)"
            if 200 <= again.status < 300 and replay_id == run_id:
                self.committed -= estimate  # replayed: nothing more can be billed
                checks.append(Check("idempotency", "PASS", expected, f"{again.status}, run {replay_id}"))
            else:
                seen = f"{again.status} {again.code or ''} run {replay_id}".strip()
                if replay_id and replay_id != run_id:
                    seen += " (a second run: billed twice)"
                checks.append(Check("idempotency", "FAIL", expected, seen, again.request_id))
        else:
            checks.append(Check("idempotency", "SKIP", "a replay", "not sent: it could pass --max-spend"))
        if self._affordable(estimate):
            self.committed += estimate
            changed = dict(built.json or {})
            changed["input"] = {**changed["input"], "seed": 8}
            conflict = self._send(client, built.method, built.path, json_body=changed, headers=built.headers)
            expected = "409 CONFLICT (same key, different body)"
            if conflict.status == 409:
                self.committed -= estimate
                checks.append(Check("idempotency 409", "PASS", expected, f"409 {conflict.code}", conflict.request_id))
            else:
                seen = f"{conflict.status} {conflict.code or _short(conflict.text)}"
                if 200 <= conflict.status < 300:
                    seen += " (accepted: a changed request under an old key is not refused)"
                else:
                    self.committed -= estimate
                checks.append(Check("idempotency 409", "FAIL", expected, seen, conflict.request_id))
        else:
            checks.append(Check("idempotency 409", "SKIP", "a 409", "not sent: it could pass --max-spend"))
        return checks

    def _outcome(self, client: httpx.Client, run_id: str, estimate: Decimal, where: str) -> list[Check]:
        deadline = time.monotonic() + self.run_timeout
        answer = self._send(client, "GET", f"/v1/runs/{run_id}")
        while (
            answer.status == 200
            and isinstance(answer.body, dict)
            and answer.body.get("status_code") not in ("succeeded", "failed", "canceled", "partial_succeeded")
            and time.monotonic() < deadline
        ):
            self._sleep(1.0)
            answer = self._send(client, "GET", f"/v1/runs/{run_id}")
        status = answer.body.get("status_code") if isinstance(answer.body, dict) else None
        if status != "succeeded":
            seen = f"{answer.status} status_code={status}"
            if isinstance(answer.body, dict) and answer.body.get("failure_code"):
                seen += f" {answer.body['failure_code']}: {answer.body.get('failure_message')}"
            return [
                Check("run", "FAIL", f"run {run_id} succeeded within {self.run_timeout:.0f} s", seen, answer.request_id)
            ]
        checks = [Check("run", "PASS", "succeeded", f"run {run_id} succeeded", answer.request_id)]
        checks.append(self._cost(answer, estimate, where))
        checks.extend(self._output(answer))
        return checks

    def _cost(self, answer: _Answer, estimate: Decimal, where: str) -> Check:
        expected = f"cost ${usd(estimate)} (our price table: {where})"
        raw = answer.body.get("cost")
        try:
            cost = Decimal(str(raw)) if raw not in (None, "") else None
        except ArithmeticError:
            cost = None
        if cost is None:
            return Check("cost", "FAIL", expected, f"cost {raw!r} (no decimal cost on the run)", answer.request_id)
        self.spent += cost
        status: Status = "PASS" if cost == estimate else "FAIL"
        seen = f"cost ${usd(cost)} ({raw!r} on the wire)"
        if status == "FAIL":
            seen += f": set the connection's prices extra for {self.model.value}, or report it"
        return Check("cost", status, expected, seen, answer.request_id, cost_usd=usd(cost))

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
            plain = httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=True)  # no API key
            with plain, plain.stream("GET", url) as response:
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > self.max_download_bytes:
                        return Check("output url", "FAIL", expected, f"{shown}: over {self.max_download_bytes} bytes")
        except httpx.HTTPError as error:
            return Check("output url", "FAIL", expected, f"{shown}: {type(error).__name__}")
        if response.status_code != 200:
            return Check("output url", "FAIL", expected, f"{shown}: HTTP {response.status_code}")
        size = _image_size(data)
        ttl, source = url_ttl(url, response.headers)
        shown_size = f"{size[0]}x{size[1]}" if size else "not an image"
        seen = f"{response.status_code} {response.headers.get('content-type')} {shown_size}"
        if size is None or size != CHEAPEST_SIDES:
            return Check("output url", "FAIL", expected, seen)
        if ttl is None:
            return Check("output url", "WARN", expected, seen + "; no expiry in the headers or the URL")
        seen += f"; expires in {ttl:.0f} s ({source})"
        return Check("output url", "PASS" if ttl >= MIN_URL_TTL else "FAIL", expected, seen)

    def _batches(self, client: httpx.Client) -> Check:
        body = {"input": [{"image_size": _INVALID_SIZE, "client_ref": "flux2-doctor"}]}
        path = f"/v1/models/{self.model.model_id}/batches"
        answer = self._send(client, "POST", path, json_body=body, headers=_fresh_key("batch"))
        expected = "422 naming input.0 (batches served) or naming the model (not for it: single runs are used)"
        locs = answer.locs()
        seen = f"{answer.status} {answer.code} errors[].loc={locs or None}"
        if answer.status == 422 and any(loc[:2] == ["input", 0] for loc in locs):
            return Check("batches", "PASS", expected, seen + ": batches supported", answer.request_id)
        if answer.status == 422 and any("model" in [str(p) for p in loc] for loc in locs):
            return Check("batches", "PASS", expected, seen + ": not for this model, single runs", answer.request_id)
        if 200 <= answer.status < 300:
            self._count_unplanned()
        return Check("batches", "FAIL", expected, seen, answer.request_id)

    def _retry_after(self) -> Check:
        expected = "Retry-After (seconds or an HTTP date) on a 429"
        if not self.rate_limits:
            return Check("retry-after", "SKIP", expected, "no 429 during the checks")
        missing = [what for what, value in self.rate_limits if protocol.parse_retry_after(value) is None]
        seen = f"{len(self.rate_limits)} 429(s), values {[value for _, value in self.rate_limits]}"
        if missing:
            return Check("retry-after", "WARN", expected, seen + " (the provider backs off exponentially without it)")
        return Check("retry-after", "PASS", expected, seen)


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


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


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
    return (
        f"spent ${report.spent_usd} as the API reports it (at most ${report.committed_usd} committed, "
        f"--max-spend ${report.max_spend_usd})\n{verdict}"
    )


def run_cli(args: Any, hook: Any, out: Callable[[str], None] = print) -> int:
    """``flux2 doctor``: run the checks with a hook's connection, print them, write ``--json``."""
    from pathlib import Path

    from airflow_provider_flux2.pricing import to_usd

    config = hook.config
    doctor = Doctor(
        base_url=config.base_url,
        api_key=config.api_key,
        prices=config.prices,
        model=args.model or config.model,
        organization_id=config.organization_id,
        max_spend=to_usd(args.max_spend, "--max-spend"),
        timeout=config.timeout,
        run_timeout=args.run_timeout,
        max_download_bytes=config.max_download_bytes,
    )
    import os

    from_env = bool(os.environ.get("FLUX2_API_KEY"))  # how ``flux2 generate`` finds its key, too
    conn_id = None if from_env else getattr(config, "conn_id", None)
    source = "key from FLUX2_API_KEY" if from_env else f"connection {conn_id}"
    out(
        f"flux2 doctor: {doctor.base_url} ({source}, model {doctor.model.model_id}, max spend ${usd(doctor.max_spend)})"
    )
    report = doctor.run(echo=lambda check: out(check.line()), conn_id=conn_id)
    out(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        out(f"report written to {path}")
    return 0 if report.passed else 1
