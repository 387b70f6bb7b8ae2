"""Run hostile cases in fresh forked children and measure each one's time and peak memory.

Started once per test session as a subprocess (``python probe.py``), it imports the provider, then
reads one JSON request per line on stdin — ``{"case": name, "kwargs": {...}, "limit": seconds}`` —
and for each forks a child that runs ``cases.CASES[name](**kwargs)``. The child's peak resident
memory (``ru_maxrss``, which Linux starts afresh for a forked child) and its wall time are measured
around the case alone; a child still running at ``limit`` is killed and reported as hung. The
answer is one JSON line on stdout.

Memory is measured in a separate process on purpose: a gzip bomb that expanded in the test
process would be invisible among pytest's own allocations, and could take the test run down.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(name: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024.0
    return _maxrss_mib()


def _describe_error(error: BaseException) -> dict[str, Any]:
    attributes = {}
    for name in ("field", "value", "allowed", "request_id", "status_code", "code", "run_id", "url", "attempts"):
        if hasattr(error, name):
            value = getattr(error, name)
            attributes[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return {
        "type": type(error).__name__,
        "mro": [cls.__name__ for cls in type(error).__mro__],
        "message": str(error),
        "attributes": attributes,
        "traceback": "".join(traceback.format_exception(error)),
    }


def _child(request: dict[str, Any], out: int) -> None:
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    # Everything written to fd 1 and 2 (print, structlog's console, C libraries) is captured.
    capture = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
    os.dup2(capture.fileno(), 1)
    os.dup2(capture.fileno(), 2)
    result: dict[str, Any] = {}
    start_rss = _status_mib("VmRSS")
    started = time.monotonic()
    try:
        value = cases.CASES[request["case"]](**request.get("kwargs", {}))
        result["ok"] = True
        result["value"] = value if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    except BaseException as error:
        result["ok"] = False
        result["error"] = _describe_error(error)
    result["elapsed"] = time.monotonic() - started
    result["rss_mib"] = max(0.0, _status_mib("VmHWM") - start_rss)
    result["start_rss_mib"] = start_rss
    result["peak_rss_mib"] = _status_mib("VmHWM")
    result["logs"] = records.getvalue()
    sys.stdout.flush()
    sys.stderr.flush()
    capture.seek(0)
    result["output"] = capture.read().decode("utf-8", "replace")
    data = json.dumps(result, default=repr).encode()
    view = memoryview(data)
    while view:
        written = os.write(out, view[:65536])
        view = view[written:]
    os.close(out)


def _run(request: dict[str, Any]) -> dict[str, Any]:
    limit = float(request.get("limit", 30.0))
    read_end, write_end = os.pipe()
    gc.collect()
    gc.freeze()  # the child must not touch (and so copy) every object of the parent when it collects
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            _child(request, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    hung = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            hung = True
            break
        ready, _, _ = select.select([read_end], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    if hung:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if hung:
        return {"ok": False, "hung": True, "elapsed": limit, "rss_mib": 0.0, "error": {"type": "Hung", "mro": []}}
    return json.loads(b"".join(chunks) or b'{"ok": false, "error": {"type": "NoResult", "mro": []}}')


def main() -> None:
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
