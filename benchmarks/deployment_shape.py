"""What the loopback deployment's DAG files read from the environment the harness gives every process:
the images' prompts and sizes, the window, the emulator's time scale and the output folder.

Shared by the chaos DAGs (``deployment_dags/flux2_deploy.py``) and the bench's
(``deployment_dags/flux2_deploy_bench.py``), which live in two files so that a task's process parses
only its own DAG's file. A module, not a DAG file: importing it builds no DAG. The deployment puts this
folder on every process's ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from typing import Any

SIZES = ("landscape_4_3", "square_hd", "1920x1080", "portrait_16_9", "2048x2048")
MAX_IN_FLIGHT = int(os.environ.get("FLUX2_DEPLOY_MAX_IN_FLIGHT", "16"))
#: The emulator's time scale: the poll interval is compressed with the API's clock, as in ``make bench``.
TIME_SCALE = float(os.environ.get("FLUX2_DEPLOY_TIME_SCALE", "1"))
OUTPUT = os.environ.get("FLUX2_DEPLOY_OUTPUT", "/tmp/flux2-deploy-output")


def prompts(task: str, count: int) -> list[dict[str, Any]]:
    """The same ``count`` catalogue prompts for a task of any DAG (and for the bench's pre-rendering)."""
    return [
        {"prompt": f"{task} catalogue item {i}", "image_size": SIZES[i % len(SIZES)], "seed": i} for i in range(count)
    ]
