"""The FLUX view: a FastAPI app the Airflow API server mounts at ``/flux2``.

Routes (stable: extra links and bookmarks point at them):

- ``/flux2/?days=N&page=P&limit=L`` — the page: spend per DAG per day over the last ``N`` days (at
  most 366), every batch of the range (``L`` a page, newest first), failures and regenerations;
- ``/flux2/api/batches`` (same parameters) — the same as JSON;
- ``/flux2/gallery?uri=<file:// or s3:// URI of a gallery or its folder>`` — redirects to the
  gallery served through the view (what a task's "FLUX images" link can point to);
- ``/flux2/files/<absolute path>`` — a file of a local batch folder (the gallery, its thumbnails,
  the images, the manifest);
- ``/flux2/s3/<bucket>/<key>`` — the same for a batch stored in S3, read with the view's AWS
  connection (``[flux2] ui_aws_conn_id``, else boto3's default chain).

Every route needs a user the auth manager lets read DAGs (the API server's own ``_token`` cookie or
a Bearer token), and shows or serves only batches of DAGs that user may read. Files are served only
from folders that hold a batch Airflow recorded in the last 366 days (an XCom or asset event of this
provider), so the view is not a way to read arbitrary files of the API server's machine.
"""

from __future__ import annotations

import html
import mimetypes
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from airflow_provider_flux2.storage.gallery import GALLERY_HTML
from airflow_provider_flux2.ui.batches import (
    DEFAULT_PAGE_SIZE,
    MAX_DAYS,
    MAX_PAGE_SIZE,
    WAITING_STATES,
    Batch,
    ManifestCache,
    Overview,
    find_batches,
    load_manifests,
    local_folder,
    overview,
    range_start,
    serving_batch,
)

URL_PREFIX = "/flux2"
#: What may be served from a batch folder.
SERVED_SUFFIXES = {".html", ".jpg", ".jpeg", ".png", ".webp", ".json", ".csv"}
#: The page is self-contained: no script, nothing from the network.
CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
#: What the failures table shows of a page (the JSON lists every one; the manifests hold them all).
FAILURES_SHOWN = 200
#: Why an image's task ended before it finished (the generate operator's failure codes).
UNFINISHED = {
    "STILL_RUNNING": "still running at the API",
    "NOT_SENT": "not sent",
    "BUDGET_STOPPED": "stopped by the budget",
}
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2"><rect x="3" y="3" width="18" height="18" rx="3"/><circle cx="9" cy="9" r="2"/>'
    '<path d="M21 15l-5-5L5 21"/></svg>'
)


def gallery_url(uri: str) -> str:
    """The view's URL for a gallery (or its folder) URI: what an extra link can point to."""
    return f"{URL_PREFIX}/gallery?uri={quote(uri, safe='')}"


def _aws_conn_id() -> str | None:
    from airflow.configuration import conf

    return conf.get("flux2", "ui_aws_conn_id", fallback=None) or None


def create_app() -> Any:
    """The FastAPI sub-application (built when the API server loads the plugin)."""
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        RedirectResponse,
        Response,
        StreamingResponse,
    )

    from airflow_provider_flux2.storage import uri_reader

    app = FastAPI(title="FLUX 2 (Runflow)", docs_url=None, redoc_url=None, openapi_url=None)
    cache = ManifestCache(uri_reader(aws_conn_id=_aws_conn_id()))
    clients: dict[str, Any] = {}

    def s3_client(bucket: str) -> Any:
        if bucket not in clients:
            from airflow_provider_flux2.storage.s3 import S3Publisher

            clients[bucket] = S3Publisher(f"s3://{bucket}", aws_conn_id=_aws_conn_id()).client
        return clients[bucket]

    @app.get("/icon.svg")
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    def readable_dags(user: Any = Depends(_user_dependency())) -> set[str] | None:
        """DAG ids the user may read; refuses a user who may read none."""
        from airflow.api_fastapi.app import get_auth_manager

        manager = get_auth_manager()
        if not manager.is_authorized_dag(method="GET", user=user):
            raise HTTPException(status_code=403, detail="The FLUX view is for users who may read DAGs")
        return set(manager.get_authorized_dag_ids(user=user, method="GET"))

    def view_of(dag_ids: set[str] | None, days: int, page: int, limit: int) -> Overview:
        """Every batch of the range is read (the spend covers them all); one page of them is shown."""
        now = datetime.now(timezone.utc)
        batches = load_manifests(find_batches(dag_ids=dag_ids, since=range_start(days, now)), cache)
        return overview(batches, days=days, page=page, limit=limit, now=now)

    days_query = Query(14, ge=1, le=MAX_DAYS)
    page_query = Query(1, ge=1)
    limit_query = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)

    @app.get("/", response_class=HTMLResponse)
    def index(
        days: int = days_query,
        page: int = page_query,
        limit: int = limit_query,
        dag_ids: set[str] | None = Depends(readable_dags),
    ) -> Response:
        html_page = render_page(view_of(dag_ids, days, page, limit))
        return HTMLResponse(html_page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/api/batches")
    def api_batches(
        days: int = days_query,
        page: int = page_query,
        limit: int = limit_query,
        dag_ids: set[str] | None = Depends(readable_dags),
    ) -> Any:
        return JSONResponse(overview_json(view_of(dag_ids, days, page, limit)), headers={"Cache-Control": "no-store"})

    @app.get("/gallery")
    def gallery(uri: str, dag_ids: set[str] | None = Depends(readable_dags)) -> Response:
        target = _view_path(uri)
        if target is None:
            raise HTTPException(status_code=404, detail="Not a gallery this view serves")
        return RedirectResponse(target, status_code=307)

    @app.get("/files/{path:path}")
    def files(path: str, dag_ids: set[str] | None = Depends(readable_dags)) -> Response:
        wanted = PurePosixPath("/" + path)
        # Only where batches are recorded (no manifest needs reading to know that).
        batch = serving_batch(wanted, find_batches(dag_ids=dag_ids, since=range_start(MAX_DAYS)))
        if batch is None:
            raise HTTPException(status_code=404, detail="Not a file of a batch you may read")
        real = Path(wanted)
        if real.is_dir():
            real = real / GALLERY_HTML
        folder = local_folder(batch.folder_uri)
        resolved = real.resolve()
        inside = folder is not None and _inside(resolved, Path(folder).resolve())
        if not inside or not resolved.is_file() or not _servable(PurePosixPath(resolved)):
            raise HTTPException(status_code=404, detail="No such file")
        headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
        return FileResponse(resolved, media_type=_media_type(resolved.name), headers=headers)

    @app.get("/s3/{bucket}/{key:path}")
    def s3_files(bucket: str, key: str, dag_ids: set[str] | None = Depends(readable_dags)) -> Response:
        uri = f"s3://{bucket}/{key}"
        batch = _s3_batch(uri, find_batches(dag_ids=dag_ids, since=range_start(MAX_DAYS)))
        if batch is None or not _servable(PurePosixPath(key)) or ".." in PurePosixPath(key).parts:
            raise HTTPException(status_code=404, detail="Not a file of a batch you may read")
        try:  # streamed: a 16 MP PNG is not held in the API server's memory
            stored = s3_client(bucket).get_object(Bucket=bucket, Key=key)
        except Exception:  # any storage error is a missing file to the browser
            raise HTTPException(status_code=404, detail="No such object") from None
        headers = {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Content-Length": str(stored["ContentLength"]),
        }
        body = stored["Body"].iter_chunks(chunk_size=256 * 1024)
        return StreamingResponse(body, media_type=_media_type(key), headers=headers)

    return app


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def _view_path(uri: str) -> str | None:
    """Where the view serves the gallery ``uri`` (``…/index.html`` or its folder)."""
    uri = uri.strip()
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        key = key if key.endswith(".html") else f"{key.rstrip('/')}/{GALLERY_HTML}"
        return f"{URL_PREFIX}/s3/{quote(parsed.netloc)}/{quote(key)}"
    folder = local_folder(uri)
    if folder is None:
        return None
    path = folder if folder.suffix == ".html" else folder / GALLERY_HTML
    return f"{URL_PREFIX}/files{quote(str(path))}"


def _s3_batch(uri: str, batches: list[Batch]) -> Batch | None:
    for batch in batches:
        folder = batch.folder_uri
        if folder and folder.startswith("s3://") and uri.startswith(folder.rstrip("/") + "/"):
            return batch
    return None


def _servable(path: PurePosixPath) -> bool:
    return path.suffix.lower() in SERVED_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _media_type(name: str) -> str:
    if name.endswith(".html"):
        return "text/html; charset=utf-8"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


# -- the page -------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:18px 22px;
color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 8px}
.sub{color:#59636e;margin:0 0 14px}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:10px 0 4px}
.kpi{border:1px solid #d1d9e0;border-radius:8px;padding:10px 14px;min-width:130px}
.kpi b{display:block;font-size:20px}.kpi span{color:#59636e;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e6ebf0;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:8px;background:#8250df;border-radius:4px;display:inline-block;vertical-align:middle}
.bad{color:#cf222e}.ok{color:#1a7f37}.muted{color:#59636e}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
code{font-size:12px;background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def overview_json(view: Overview) -> dict[str, Any]:
    """The JSON of ``/flux2/api/batches``: the page's batches and failures, the range's spend."""
    failures = [
        {
            "dag_id": batch.dag_id,
            "run_id": batch.run_id,
            "task_id": batch.task_id,
            "task_failed": batch.failed,
            "manifest_uri": batch.manifest_uri,
            **{k: row.get(k) for k in ("index", "attempt", "outcome", "failure_code", "failed_checks")},
            "billed_cost_usd": row.get("billed_cost_usd"),
            "api_run_id": row.get("run_id"),
        }
        for batch, row in view.failures
    ]
    return {
        "days": view.days,
        "since": view.since.isoformat(),
        "page": view.page,
        "limit": view.limit,
        "pages": view.pages,
        "total_batches": view.total_batches,
        "failed_tasks": view.count("failed_tasks"),
        "total_cost_usd": view.total_cost_usd,
        "spend": view.spend,
        "batches": [b.as_dict() for b in view.batches],
        "failures": failures,
    }


def render_page(view: Overview) -> str:
    """The view's HTML: self-contained, every value escaped."""
    failed = view.count("failed")
    failed_tasks = view.count("failed_tasks")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>FLUX 2 — spend and batches</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>FLUX 2 — spend and batches</h1>",
        f"<p class='sub'>The last {view.days} day(s), since {view.since.isoformat()} (UTC), from the manifests "
        "of the batches Airflow recorded (generate and publish tasks, and their asset events). Each image counts "
        "once, at what the API billed; a failed task counts what its manifest says it billed.</p>",
        _periods(view),
        "<div class='kpis'>",
        _kpi(f"${view.total_cost_usd}", "spent"),
        _kpi(str(view.count("images")), "images in the manifests"),
        _kpi(str(failed), "failed, dropped, moderated or not finished", bad=failed > 0),
        _kpi(str(failed_tasks), "failed tasks", bad=failed_tasks > 0),
        _kpi(str(view.count("regenerated")), "regenerations"),
        _kpi(str(view.total_batches), "batches"),
        "</div>",
        "<h2>Spend per DAG per day</h2>",
        _spend_table(view.spend),
        "<h2>Batches</h2>",
        _pager(view),
        _batches_table(view.batches),
        _pager(view) if len(view.batches) > 10 else "",
        "<h2>Failures and regenerations</h2>",
        f"<p class='sub'>Of the batches on this page ({_e(_page_span(view))}).</p>" if view.pages > 1 else "",
        _failures_table(view.failures),
        "</body></html>",
    ]
    return "".join(parts)


def _query(view: Overview, **changes: int) -> str:
    """The page's URL with ``changes`` (the page keeps no state: the period and the page are in the URL)."""
    params = {"days": view.days, "page": view.page, "limit": view.limit, **changes}
    if params["page"] == 1:
        del params["page"]
    if params["limit"] == DEFAULT_PAGE_SIZE:
        del params["limit"]
    return f"?{urlencode(params)}"


def _periods(view: Overview) -> str:
    """Links to other periods (back to their first page)."""
    links = []
    for choice, label in ((1, "last day"), (7, "7 days"), (14, "14 days"), (30, "30 days"), (90, "90 days")):
        style = "font-weight:600" if choice == view.days else ""
        links.append(f"<a href='{_e(_query(view, days=choice, page=1))}' style='{style}'>{label}</a>")
    return f"<p class='sub'>{' · '.join(links)}</p>"


def _page_span(view: Overview) -> str:
    if not view.batches:
        return f"page {view.page} of {view.pages}: no batches ({view.total_batches} in the range)"
    last = view.first + len(view.batches) - 1
    return f"batches {view.first}–{last} of {view.total_batches} · page {view.page} of {view.pages}"


def _pager(view: Overview) -> str:
    """Where this page is in the range, and links to the newer and older pages."""
    if view.total_batches <= view.limit and view.page == 1:
        return ""
    links = []
    if view.page > 1:
        links.append(f"<a href='{_e(_query(view, page=min(view.page - 1, view.pages)))}' rel='prev'>← newer</a>")
    if view.page < view.pages:
        links.append(f"<a href='{_e(_query(view, page=view.page + 1))}' rel='next'>older →</a>")
    return f"<p class='sub'>{_e(_page_span(view))} · {' · '.join(links)}</p>"


def _run_page(batch: Batch) -> str:
    """The DAG run in the Airflow UI (opened in the whole window, not in the view's frame)."""
    return f"/dags/{quote(batch.dag_id, safe='')}/runs/{quote(batch.run_id, safe='')}"


def _kpi(value: str, label: str, *, bad: bool = False) -> str:
    return f"<div class='kpi'><b class='{'bad' if bad else ''}'>{_e(value)}</b><span>{_e(label)}</span></div>"


def _spend_table(spend: list[dict[str, Any]]) -> str:
    if not spend:
        return "<p class='muted'>No spend recorded in this period.</p>"
    top = max((float(row["cost_usd"]) for row in spend), default=0.0) or 1.0
    rows = []
    for row in spend:
        width = max(2, int(160 * float(row["cost_usd"]) / top))
        rows.append(
            f"<tr><td>{_e(row['day'])}</td><td>{_e(row['dag_id'])}</td><td class='n'>{row['runs']}</td>"
            f"<td class='n'>{row['images']}</td><td class='n {'bad' if row['failed'] else ''}'>{row['failed']}</td>"
            f"<td class='n {'bad' if row['failed_tasks'] else ''}'>{row['failed_tasks']}</td>"
            f"<td class='n'>{row['regenerated']}</td><td class='n'>${_e(row['cost_usd'])}</td>"
            f"<td class='n muted'>${_e(row['regeneration_cost_usd'])}</td>"
            f"<td class='n {'bad' if row['undelivered_cost_usd'] != '0.000' else 'muted'}'>"
            f"${_e(row['undelivered_cost_usd'])}</td>"
            f"<td><span class='bar' style='width:{width}px'></span></td></tr>"
        )
    head = (
        "<tr><th>Day (UTC)</th><th>DAG</th><th class='n'>Runs</th><th class='n'>Images</th>"
        "<th class='n'>Failed</th><th class='n'>Failed tasks</th><th class='n'>Regenerated</th>"
        "<th class='n'>Spent</th><th class='n'>on regenerations</th><th class='n'>not delivered</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _batches_table(batches: list[Batch]) -> str:
    if not batches:
        return "<p class='muted'>No batches in this period: run a DAG with a FLUX 2 generate or publish task.</p>"
    rows = []
    for batch in batches:
        summary = batch.summary
        gallery = batch.gallery_uri or batch.folder_uri
        link = _view_path(gallery) if gallery else None
        where = f"{batch.dag_id} · {batch.task_id}" + (f"[{batch.map_index}]" if batch.map_index >= 0 else "")
        rows.append(
            f"<tr><td>{_e(batch.at.strftime('%Y-%m-%d %H:%M'))}</td><td>{_e(where)}<br>"
            f"<a class='muted' href='{_e(_run_page(batch))}' target='_top'>{_e(batch.run_id)}</a>"
            + (f"<br><span class='muted'>asset {_e(batch.asset)}</span>" if batch.asset else "")
            + f"</td><td>{_e(summary.get('model') or '—')}</td><td class='n'>{_e(summary.get('count', '—'))}</td>"
            f"<td>{_outcome(batch)}</td><td class='n'>${_e(summary.get('total_cost_usd', '0.000'))}"
            f"<br><span class='muted'>est. ${_e(summary.get('estimated_cost_usd', '—'))}</span></td>"
            f"<td>{_link(link, 'gallery')}</td></tr>"
        )
    head = (
        "<tr><th>When (UTC)</th><th>DAG · task</th><th>Model</th><th class='n'>Images</th>"
        "<th>Outcome</th><th class='n'>Billed</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _outcome(batch: Batch) -> str:
    """How the batch's task ended, and what its manifest counts."""
    if batch.error:
        return f"<span class='bad'>{_e(batch.error)}</span>"
    tried = f" (try {batch.try_number})" if batch.try_number > 1 else ""
    if batch.failed:
        retry = " · a retry is pending" if batch.state == "up_for_retry" else ""
        state = f"<b class='bad'>task failed</b>{_e(tried)}{retry}"
    elif batch.earlier_try:
        waiting = "queued" if batch.state in WAITING_STATES else "running"
        state = f"<span class='muted'>retry {waiting}{_e(tried)}; what the failed try recorded:</span>"
    else:
        state = ""
    if not batch.manifest_uri:
        if batch.failed:
            return f"{state} · no manifest: nothing recorded as billed"
        if batch.state == "success":
            return "<span class='muted'>succeeded · no manifest (write_manifest=False)</span>"
        return "<span class='muted'>in progress (no manifest yet)</span>"
    summary = batch.summary
    counts = (
        f"{_e(summary.get('passed', '—'))} passed · "
        f"<span class='{'bad' if summary.get('failed') or summary.get('dropped') else ''}'>"
        f"{_e(summary.get('failed', 0))} failed · {_e(summary.get('dropped', 0))} dropped</span> · "
        f"{_e(summary.get('regenerated', 0))} regenerated"
    )
    unfinished = [f"{n} {UNFINISHED.get(code, code)}" for code, n in sorted(batch.unfinished().items())]
    if unfinished:
        counts += f"<br><span class='bad'>{_e(' · '.join(unfinished))}</span>"
    return f"{state}<br>{counts}" if state else counts


def _link(href: str | None, text: str) -> str:
    return f'<a href="{_e(href)}" target="_blank" rel="noopener">{_e(text)}</a>' if href else "—"


def _failures_table(failures: list[tuple[Batch, dict[str, Any]]]) -> str:
    rows = []
    for batch, row in failures[:FAILURES_SHOWN]:
        checks = ", ".join(row.get("failed_checks") or [])
        code = row.get("failure_code")
        code = f"{code} ({UNFINISHED[code]})" if row.get("outcome") == "pending" and code in UNFINISHED else code
        reason = ": ".join(part for part in (code, checks) if part)
        if int(row.get("attempt") or 1) > 1:
            reason = f"regeneration #{int(row['attempt']) - 1}" + (f" · {reason}" if reason else "")
        prompt = str(row.get("prompt") or "")
        rows.append(
            f"<tr><td>{_e(batch.at.strftime('%Y-%m-%d %H:%M'))}</td><td>{_e(batch.dag_id)}</td>"
            f"<td class='n'>#{_e(row.get('index'))}</td><td>{_e(row.get('outcome'))}</td><td>{_e(reason)}</td>"
            f"<td>{_e(prompt[:90] + ('…' if len(prompt) > 90 else ''))}</td>"
            f"<td class='n'>${_e(row.get('billed_cost_usd', '0.000'))}</td>"
            f"<td class='muted'>{_e(row.get('run_id') or '')}</td></tr>"
        )
    if not rows:
        return "<p class='ok'>None in these batches.</p>"
    head = (
        "<tr><th>When</th><th>DAG</th><th class='n'>Image</th><th>Outcome</th><th>Why</th><th>Prompt</th>"
        "<th class='n'>Billed</th><th>Run</th></tr>"
    )
    more = len(failures) - FAILURES_SHOWN
    note = (
        f"<p class='muted'>{more} more on this page's batches: in their manifests, and every one in "
        "<code>/flux2/api/batches</code>.</p>"
        if more > 0
        else ""
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"
