"""One line per worker entry, for the deployment's DAGs and the bench's operators.

Each ``execute`` and ``execute_complete`` of an operator with :class:`EntryLogged` appends
``{dag_id, run_id, task_id, map_index, try_number, method, outcome, process_start, enter, exit, pid,
host}`` to the file named by ``FLUX2_DEPLOY_ENTRIES`` (nothing when it is unset). Kept apart from
``bench_operators`` (which pulls in the HTTP provider) so the chaos DAGs import it at parse time
for nothing more. The deployment puts this folder on every process's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any


def entries_file() -> str:
    return os.environ.get("FLUX2_DEPLOY_ENTRIES", "")


def process_started() -> float:
    import psutil

    return float(psutil.Process().create_time())


def log_entry(context: Any, method: str, call: Callable[[], Any]) -> Any:
    """Run one worker entry; append ``{task, try, method, outcome, process_start, enter, exit}``."""
    entered = time.time()
    outcome = "deferred"
    try:
        result = call()
        outcome = "returned"
        return result
    except BaseException as exc:
        outcome = "deferred" if type(exc).__name__ == "TaskDeferred" else f"raised {type(exc).__name__}"
        raise
    finally:
        path = entries_file()
        if path:
            ti = context["ti"]
            line = {
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "try_number": ti.try_number,
                "method": method,
                "outcome": outcome,
                "process_start": process_started(),
                "enter": entered,
                "exit": time.time(),
                "pid": os.getpid(),
                "host": os.environ.get("FLUX2_DEPLOY_HOSTNAME", ""),
            }
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")


class EntryLogged:
    """Mixin: ``execute`` and ``execute_complete`` each logged as one worker entry."""

    def execute(self, context: Any) -> Any:
        parent = super()
        return log_entry(context, "execute", lambda: parent.execute(context))  # type: ignore[attr-defined]

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        parent = super()
        return log_entry(
            context,
            "execute_complete",
            lambda: parent.execute_complete(context, event),  # type: ignore[attr-defined]
        )
