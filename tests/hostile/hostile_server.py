"""A hostile fake of the Runflow API on 127.0.0.1: raw asyncio sockets, one behaviour per scenario.

Not the emulator: this server is built to misbehave. A request for ``/s/<scenario>/...`` gets the
behaviour named ``<scenario>`` (so a hook whose base URL is ``http://127.0.0.1:<port>/s/drip-body``
meets a dripping server on every call). Every behaviour that can, echoes the request's
``Authorization`` header back, the way a misconfigured proxy or gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import io
import json
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

CRLF = b"\r\n"


@dataclass
class Request:
    method: str
    path: str  # after /s/<scenario>
    query: str
    headers: dict[str, str]
    body: bytes
    base: str  # http://127.0.0.1:<port>

    @property
    def auth(self) -> str:
        return self.headers.get("authorization", "")


Behaviour = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]
SCENARIOS: dict[str, Behaviour] = {}


def scenario(name: str) -> Callable[[Behaviour], Behaviour]:
    def register(fn: Behaviour) -> Behaviour:
        SCENARIOS[name] = fn
        return fn

    return register


# -- payloads built once ----------------------------------------------------------------------------


@functools.cache
def gzip_bomb(mib: int = 512) -> bytes:
    """A single gzip member of ``mib`` MiB of JSON-ish text, about 1/1000 of that compressed."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    zeros = b" " * (1 << 20)
    parts = [compressor.compress(b'{"id": "bomb", "pad": "')]
    parts += [compressor.compress(zeros) for _ in range(mib)]
    parts.append(compressor.flush())
    return b"".join(parts)


@functools.cache
def deflate_bomb(mib: int = 256) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    zeros = b"[" * (1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(mib)), compressor.flush()])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.cache
def png_of(width: int, height: int, *, rgb: bool = True) -> bytes:
    """A valid PNG of ``width``×``height`` black pixels, written row by row (never held decoded)."""
    channels = 3 if rgb else 1
    compressor = zlib.compressobj(6)
    row = bytes(1 + width * channels)
    idat = b"".join([*(compressor.compress(row) for _ in range(height)), compressor.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@functools.cache
def png_bilevel(width: int, height: int) -> bytes:
    """A valid 1-bit PNG: many pixels in few bytes (a decompression bomb by pixel count)."""
    compressor = zlib.compressobj(6)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join([*(compressor.compress(row) for _ in range(height)), compressor.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring ``width``×``height``, and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)


@functools.cache
def small_png() -> bytes:
    return png_of(512, 512)


@functools.cache
def small_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def run_json(run_id: str = "run-hostile", *, image_url: str | None = None, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": run_id,
        "status_code": "succeeded",
        "input": {"prompt": "a cup", "image_size": "square", "output_format": "png"},
        "output": {
            "outputs": [
                {"type": "image", "url": image_url or "http://127.0.0.1:9/none.png", "width": 512, "height": 512}
            ]
        },
        "cost": "0.030",
    }
    run.update(fields)
    return run


# -- writing responses ------------------------------------------------------------------------------


async def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes | str | dict[str, Any] | list[Any] = b"",
    headers: dict[str, str] | None = None,
    *,
    length: bool = True,
) -> None:
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    elif isinstance(body, str):
        body = body.encode()
    lines = [f"HTTP/1.1 {status} X".encode()]
    all_headers = {"Connection": "close", **(headers or {})}
    if length and "Content-Length" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}".encode() for k, v in all_headers.items()]
    writer.write(CRLF.join(lines) + CRLF + CRLF + body)
    await writer.drain()


def rid(value: str = "req-hostile-1") -> dict[str, str]:
    return {"X-Request-Id": value}


# -- scenarios: the API answering badly -----------------------------------------------------------


@scenario("ok")
async def _ok(req: Request, w: asyncio.StreamWriter) -> None:
    """A well-behaved server: a run whose image is served by ``/s/img-ok``."""
    if req.path.startswith("/v1/health"):
        await respond(w, 200, {"status": "ok"})
    elif req.method == "POST":
        await respond(w, 201, run_json(status_code="queued", output=None), rid())
    else:
        await respond(w, 200, run_json(image_url=f"{req.base}/s/img-ok/a.png?sig=s3cr3t-signature"), rid())


@scenario("echo-500")
async def _echo_500(req: Request, w: asyncio.StreamWriter) -> None:
    body = {"code": "INTERNAL", "message": f"upstream rejected headers: Authorization: {req.auth}", "errors": None}
    await respond(w, 500, body, rid())


@scenario("echo-401")
async def _echo_401(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 401, {"code": "UNAUTHORIZED", "message": f"bad key {req.auth}"}, rid())


@scenario("echo-402")
async def _echo_402(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 402, {"code": "INSUFFICIENT_CREDIT", "message": f"no credit for {req.auth[7:]}"}, rid())


@scenario("echo-422")
async def _echo_422(req: Request, w: asyncio.StreamWriter) -> None:
    errors = [{"loc": ["input", "prompt"], "msg": f"token {req.auth} may not", "input": req.auth}]
    await respond(w, 422, {"code": "VALIDATION_ERROR", "message": req.auth, "errors": errors}, rid())


@scenario("echo-text")
async def _echo_text(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 502, f"<html>Bad gateway. You sent {req.auth}</html>", {"Content-Type": "text/html", **rid()})


@scenario("echo-header")
async def _echo_header(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 404, {"code": "RUN_NOT_FOUND", "message": "no such run"}, {"X-Request-Id": req.auth})


@scenario("echo-escaped")
async def _echo_escaped(req: Request, w: asyncio.StreamWriter) -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in req.auth)  # same text once parsed, unreadable raw
    body = '{"code": "INTERNAL", "message": "you sent ' + escaped + '"}'
    await respond(w, 503, body, {"Content-Type": "application/json", **rid()})


@scenario("echo-in-run")
async def _echo_in_run(req: Request, w: asyncio.StreamWriter) -> None:
    run = run_json(
        status_code="failed",
        output=None,
        cost=None,
        failure_code="INTERNAL",
        failure_message=f"worker saw {req.auth}",
        metadata={"echo": req.auth},
    )
    await respond(w, 200 if req.method == "GET" else 201, run, rid())


@scenario("echo-in-badrun")
async def _echo_in_badrun(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, {"id": 5, "status_code": req.auth}, rid())


@scenario("echo-gzip")
async def _echo_gzip(req: Request, w: asyncio.StreamWriter) -> None:
    body = gzip.compress(json.dumps({"code": "INTERNAL", "message": f"echo {req.auth}"}).encode())
    await respond(w, 500, body, {"Content-Encoding": "gzip", "Content-Type": "application/json", **rid()})


_SUBMISSIONS = iter(range(1, 10**9))


@scenario("echo-poll")
async def _echo_poll(req: Request, w: asyncio.StreamWriter) -> None:
    """Accepts submissions (runs and batches), then answers every poll with a 500 echoing the key.

    What a trigger meets when a gateway in front of the API starts failing mid-wait.
    """
    if req.method == "POST":
        number = next(_SUBMISSIONS)
        if req.path.endswith("/batches"):
            inputs = json.loads(req.body or b"{}").get("input") or []
            items = [
                {
                    "id": f"item-{number}-{i}",
                    "sequence_index": i,
                    "run_id": f"run-{number}-{i}",
                    "status_code": "queued",
                    "client_ref": entry.get("client_ref"),
                }
                for i, entry in enumerate(inputs)
            ]
            batch = {"id": f"batch-{number}", "status_code": "queued", "items_total": len(items), "items": items}
            await respond(w, 201, batch, rid(f"req-submit-{number}"))
        else:
            await respond(w, 201, run_json(f"run-{number}", status_code="queued", output=None), rid())
        return
    await _echo_500(req, w)


@scenario("gzip-bomb")
async def _gzip_bomb(req: Request, w: asyncio.StreamWriter) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json", **rid("req-bomb")}
    await respond(w, 200, gzip_bomb(), headers)


@scenario("gzip-bomb-error")
async def _gzip_bomb_error(req: Request, w: asyncio.StreamWriter) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json", **rid("req-bomb-500")}
    await respond(w, 500, gzip_bomb(), headers)


@scenario("deflate-bomb")
async def _deflate_bomb(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, deflate_bomb(), {"Content-Encoding": "deflate", **rid("req-deflate")})


@scenario("double-gzip-bomb")
async def _double_gzip(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, gzip.compress(gzip_bomb()), {"Content-Encoding": "gzip, gzip", **rid("req-2gz")})


@scenario("brotli")
async def _brotli(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, b"\x1b\x00\x00", {"Content-Encoding": "br", **rid("req-br")})


@scenario("corrupt-gzip")
async def _corrupt_gzip(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, b"\x1f\x8b\x08\x00garbage-not-deflate", {"Content-Encoding": "gzip", **rid("req-cgz")})


@scenario("huge-json")
async def _huge_json(req: Request, w: asyncio.StreamWriter) -> None:
    """64 MiB of JSON, chunked (no length declared)."""
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: req-huge\r\n\r\n")
    piece = b" " * (1 << 20)
    for _ in range(64):
        w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await w.drain()
    w.write(b"0\r\n\r\n")
    await w.drain()


@scenario("huge-declared")
async def _huge_declared(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 200, b"{}", {"Content-Length": str(50 * 1024**3), **rid("req-declared")})


@scenario("drip-body")
async def _drip_body(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Request-Id: req-drip\r\n\r\n{")
    await w.drain()
    for _ in range(100000):
        await asyncio.sleep(0.05)
        w.write(b" ")
        await w.drain()


@scenario("drip-headers")
async def _drip_headers(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100000):
        await asyncio.sleep(0.05)
        w.write(b"X-A: b\r\n")
        await w.drain()


@scenario("drip-chunked")
async def _drip_chunked(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(100000):
        await asyncio.sleep(0.05)
        w.write(b"1\r\n \r\n")
        await w.drain()


@scenario("stall")
async def _stall(req: Request, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@scenario("close")
async def _close(req: Request, w: asyncio.StreamWriter) -> None:
    w.transport.abort()


@scenario("garbage-status")
async def _garbage(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HELLO THERE\r\n\r\n")
    await w.drain()


@scenario("half-body")
async def _half_body(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Request-Id: req-half\r\n\r\n{"id": "r')
    await w.drain()
    w.transport.abort()


@scenario("retry-after-forever")
async def _retry_after(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 429, {"code": "RATE_LIMITED", "message": "slow down"}, {"Retry-After": "1000000000", **rid()})


@scenario("always-503")
async def _always_503(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 503, {"code": "MODEL_UNAVAILABLE", "message": "try later"}, rid("req-503"))


@scenario("redirect-api")
async def _redirect_api(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 302, b"", {"Location": "https://evil.invalid/steal", **rid("req-302")})


def _malformed(name: str, status: int, body: bytes | str | dict[str, Any] | list[Any], **headers: str) -> None:
    async def behaviour(req: Request, w: asyncio.StreamWriter) -> None:
        await respond(w, status, body, {**rid(f"req-{name}"), **headers})

    SCENARIOS[name] = behaviour


_malformed("not-json", 200, "<html>maintenance</html>", **{"Content-Type": "text/html"})
_malformed("json-array", 200, [1, 2, 3])
_malformed("json-null", 200, "null", **{"Content-Type": "application/json"})
_malformed("json-string", 200, '"ok"', **{"Content-Type": "application/json"})
_malformed("json-number", 200, "42", **{"Content-Type": "application/json"})
_malformed("truncated-json", 200, '{"id": "r1", "status_code": "succ', **{"Content-Type": "application/json"})
_malformed("deep-json", 200, "[" * 200000 + "]" * 200000, **{"Content-Type": "application/json"})
_malformed("bad-utf8", 200, b'{"id": "\xff\xfe"}', **{"Content-Type": "application/json"})
_malformed("empty-200", 200, b"")
_malformed("run-bad-status", 200, run_json(status_code="exploded"))
_malformed("run-no-id", 200, {"status_code": "succeeded"})
_malformed("run-id-number", 200, run_json(run_id=12345))  # type: ignore[arg-type]
_malformed("cost-negative", 200, run_json(cost="-1"))
_malformed("cost-nan", 200, run_json(cost="NaN"))
_malformed("cost-inf", 200, run_json(cost="Infinity"))
_malformed("cost-text", 200, run_json(cost="lots"))
_malformed("cost-list", 200, run_json(cost=["0.03"]))
_malformed("cost-snan", 200, run_json(cost="sNaN"))
_malformed("outputs-not-list", 200, run_json(output={"outputs": 7}))
_malformed("outputs-bad-entry", 200, run_json(output={"outputs": [{"url": 5, "width": "wide"}]}))
_malformed("nsfw-dict", 200, run_json(output={"image_urls": ["https://x.example/a.png"], "has_nsfw_concepts": {}}))
_malformed("batch-items-not-list", 200, {"id": "b1", "status_code": "running", "items": "nope"})
_malformed("batch-bad", 200, {"id": "b1", "status_code": 7, "items": [{"sequence_index": "x"}]})
_malformed("error-no-envelope", 500, "Internal Server Error", **{"Content-Type": "text/plain"})
_malformed("error-400-bad-json", 400, '{"code": ', **{"Content-Type": "application/json"})
_malformed("error-422-garbage-errors", 422, {"code": "VALIDATION_ERROR", "errors": [1, "two", {"loc": 5}]})


# -- scenarios: result downloads ----------------------------------------------------------------------


def _image(name: str, body_fn: Callable[[], bytes], content_type: str = "image/png", **headers: str) -> None:
    async def behaviour(req: Request, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, body_fn(), {"Content-Type": content_type, **headers})

    SCENARIOS[name] = behaviour


_image("img-ok", small_png)
_image("img-jpeg-for-png", small_jpeg, "image/jpeg")
_image("img-html", lambda: b"<html>login</html>", "text/html")
_image("img-garbage", lambda: b"\x00\x01 not an image at all" * 10)
_image("img-truncated-header", lambda: png_header_only(512, 512)[:20])
_image("img-header-only", lambda: png_header_only(512, 512))
_image("img-100mp", lambda: png_of(10000, 10000))
_image("img-over-pillow-limit", lambda: png_bilevel(20000, 20000))
_image("img-way-over-limit", lambda: png_header_only(60000, 60000))
_image("img-wrong-size", lambda: png_of(640, 480))
_image("img-gzip-bomb", gzip_bomb, "image/png", **{"Content-Encoding": "gzip"})
_image("img-declared-huge", lambda: b"", "image/png", **{"Content-Length": str(20 * 1024**3)})
_image("img-empty", lambda: b"")


@scenario("img-huge-stream")
async def _img_huge(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n")
    piece = b"\x00" * (1 << 20)
    for _ in range(512):
        w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await w.drain()
    w.write(b"0\r\n\r\n")


@scenario("img-drip")
async def _img_drip(req: Request, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    for byte in small_png():
        await asyncio.sleep(0.05)
        w.write(bytes([byte]))
        await w.drain()


@scenario("img-stall")
async def _img_stall(req: Request, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@scenario("img-echo-500")
async def _img_echo(req: Request, w: asyncio.StreamWriter) -> None:
    await respond(w, 500, {"code": "INTERNAL", "message": f"auth was {req.auth or 'absent'}"}, rid("req-img-500"))


@scenario("img-auth-probe")
async def _img_auth_probe(req: Request, w: asyncio.StreamWriter) -> None:
    """Serves the image only if no Authorization header came (the key must never reach a result host)."""
    if req.auth:
        await respond(w, 500, {"code": "LEAK", "message": "an Authorization header reached the image host"})
    else:
        await respond(w, 200, small_png(), {"Content-Type": "image/png"})


def _redirect(name: str, target: Callable[[Request], str], status: int = 302) -> None:
    async def behaviour(req: Request, w: asyncio.StreamWriter) -> None:
        await respond(w, status, b"", {"Location": target(req)})

    SCENARIOS[name] = behaviour


_redirect("redir-loop", lambda r: f"{r.base}/s/redir-loop/a.png?again=1")
_redirect("redir-self-relative", lambda r: "/s/redir-self-relative/a.png")
_redirect("redir-off-host-http", lambda r: "http://203.0.113.7/a.png?X-Amz-Signature=secret")
_redirect("redir-ftp", lambda r: "ftp://127.0.0.1/a.png")
_redirect("redir-file", lambda r: "file:///etc/passwd")
_redirect("redir-data", lambda r: "data:image/png;base64,AAAA")
_redirect("redir-gopher", lambda r: "gopher://127.0.0.1:70/")
_redirect("redir-userinfo", lambda r: f"http://user:pw@127.0.0.1:{r.base.rsplit(':', 1)[1]}/s/img-ok/a.png")
_redirect("redir-no-host", lambda r: "https:///a.png")
_redirect("redir-metadata", lambda r: "http://169.254.169.254/latest/meta-data/")
_redirect("redir-to-ok", lambda r: f"{r.base}/s/img-ok/a.png", 307)
_redirect("redir-1", lambda r: f"{r.base}/s/redir-to-ok/a.png", 301)
_redirect("redir-2", lambda r: f"{r.base}/s/redir-1/a.png", 308)
_redirect("redir-3", lambda r: f"{r.base}/s/redir-2/a.png")  # 4 hops in all: one too many
_redirect("redir-to-auth-probe", lambda r: f"{r.base}/s/img-auth-probe/a.png")
_redirect("redir-to-drip", lambda r: f"{r.base}/s/img-drip/a.png")
_redirect("redir-empty-location", lambda r: "")


# -- the server ---------------------------------------------------------------------------------------


class HostileServer:
    """Serve :data:`SCENARIOS` on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-api", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, scenario_name: str, path: str = "") -> str:
        assert scenario_name in SCENARIOS, scenario_name
        return f"{self.base}/s/{scenario_name}{path}"

    def start(self) -> HostileServer:
        # Built before the first request, so no case waits for them.
        gzip_bomb(), deflate_bomb(), png_of(10000, 10000), png_bilevel(20000, 20000), small_png()
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20), self.loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(CRLF + CRLF)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            path, _, query = target.partition("?")
            parts = path.split("/")
            name = parts[2] if len(parts) > 2 and parts[1] == "s" else ""
            self.requests.append((method, target, headers))
            behaviour = SCENARIOS.get(name)
            request = Request(method, "/" + "/".join(parts[3:]), query, headers, body, self.base)
            if behaviour is None:
                await respond(writer, 599, {"code": "NO_SCENARIO", "message": f"unknown scenario {name!r}"})
            else:
                await behaviour(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                writer.close()
