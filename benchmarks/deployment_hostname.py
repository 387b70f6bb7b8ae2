"""``[core] hostname_callable`` of the loopback deployment: each process reports its role as its host name.

The harness starts every Airflow process with ``FLUX2_DEPLOY_HOSTNAME`` (``scheduler``,
``triggerer-2``, ``worker-1``...), so the metadata DB says which process holds a trigger or runs a
task, the way it would name hosts in a real deployment.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("FLUX2_DEPLOY_HOSTNAME") or socket.getfqdn()
