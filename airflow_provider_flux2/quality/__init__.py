"""Quality checks on real image bytes, and what to do with the images that fail them.

- :mod:`.decoding` — decode bytes once, within Pillow's decompression-bomb guard.
- :mod:`.checks` — the checks: decodes, format, size, not_blank, nsfw, near_duplicate, quality_score.
- :mod:`.suite` — ``CheckSuite`` (a configured set of checks) and ``run_checks`` for ``@task``.
- :mod:`.policy` — ``apply_failure_policy``: fail, drop or regenerate.
- :mod:`.regeneration` — the pure, budget-checked regeneration planner and ``supersede``.
"""

from __future__ import annotations
