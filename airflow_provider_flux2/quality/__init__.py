"""Quality checks on real image bytes, and what to do with the images that fail them.

- :mod:`.decoding` — decode bytes once, within Pillow's decompression-bomb guard.
- :mod:`.checks` — the checks: decodes, format, size, not_blank, nsfw, near_duplicate, quality_score.
- :mod:`.suite` — ``CheckSuite`` (a configured set of checks); for ``@task``: ``run_checks`` (records)
  and ``check_image`` / ``check_images`` (bytes).
- :mod:`.policy` — ``apply_failure_policy``: fail, drop or regenerate.
- :mod:`.regeneration` — the pure, budget-checked regeneration planner and ``supersede``.
- :mod:`.sentinel` — Runflow Sentinel as a check: ``SentinelGate`` (what to evaluate, under which key,
  what a verdict means) and ``with_verdict``; the quality operator sends the evaluations.

Every public name is importable from this package (``from airflow_provider_flux2.quality import
CheckSuite``). They are loaded on first use: the checks pull in numpy and imagehash, which a DAG
file that only imports this package, or a module that only needs :mod:`.decoding`, should not pay for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_flux2._lazy import lazy_exports

if TYPE_CHECKING:
    from airflow_provider_flux2.models import CheckVerdict
    from airflow_provider_flux2.quality.checks import (
        CHECKS,
        BatchCheck,
        Check,
        DecodesCheck,
        FormatCheck,
        ImageCheck,
        NearDuplicateCheck,
        NotBlankCheck,
        NsfwCheck,
        QualityScoreCheck,
        Sample,
        SizeCheck,
    )
    from airflow_provider_flux2.quality.decoding import DecodedImage, decode_image
    from airflow_provider_flux2.quality.policy import (
        FAILURE_POLICIES,
        FailurePolicy,
        PolicyOutcome,
        apply_failure_policy,
    )
    from airflow_provider_flux2.quality.regeneration import (
        QUALITY_FAILURE_CODE,
        Regeneration,
        RegenerationPlan,
        plan_regeneration,
        regeneration_seed,
        supersede,
    )
    from airflow_provider_flux2.quality.sentinel import (
        SENTINEL_CHECK,
        EvaluationJob,
        SentinelGate,
        evaluation_spend,
        with_verdict,
    )
    from airflow_provider_flux2.quality.suite import (
        DEFAULT_CHECKS,
        CheckConfig,
        CheckSuite,
        SuiteResult,
        check_image,
        check_images,
        failed_checks,
        run_checks,
    )

#: Where each public name lives; loaded by ``__getattr__`` on first use.
_MODULE_OF: dict[str, str] = {
    "CheckVerdict": "airflow_provider_flux2.models",
    "CHECKS": "airflow_provider_flux2.quality.checks",
    "BatchCheck": "airflow_provider_flux2.quality.checks",
    "Check": "airflow_provider_flux2.quality.checks",
    "DecodesCheck": "airflow_provider_flux2.quality.checks",
    "FormatCheck": "airflow_provider_flux2.quality.checks",
    "ImageCheck": "airflow_provider_flux2.quality.checks",
    "NearDuplicateCheck": "airflow_provider_flux2.quality.checks",
    "NotBlankCheck": "airflow_provider_flux2.quality.checks",
    "NsfwCheck": "airflow_provider_flux2.quality.checks",
    "QualityScoreCheck": "airflow_provider_flux2.quality.checks",
    "Sample": "airflow_provider_flux2.quality.checks",
    "SizeCheck": "airflow_provider_flux2.quality.checks",
    "DecodedImage": "airflow_provider_flux2.quality.decoding",
    "decode_image": "airflow_provider_flux2.quality.decoding",
    "FAILURE_POLICIES": "airflow_provider_flux2.quality.policy",
    "FailurePolicy": "airflow_provider_flux2.quality.policy",
    "PolicyOutcome": "airflow_provider_flux2.quality.policy",
    "apply_failure_policy": "airflow_provider_flux2.quality.policy",
    "QUALITY_FAILURE_CODE": "airflow_provider_flux2.quality.regeneration",
    "Regeneration": "airflow_provider_flux2.quality.regeneration",
    "RegenerationPlan": "airflow_provider_flux2.quality.regeneration",
    "plan_regeneration": "airflow_provider_flux2.quality.regeneration",
    "regeneration_seed": "airflow_provider_flux2.quality.regeneration",
    "supersede": "airflow_provider_flux2.quality.regeneration",
    "SENTINEL_CHECK": "airflow_provider_flux2.quality.sentinel",
    "EvaluationJob": "airflow_provider_flux2.quality.sentinel",
    "SentinelGate": "airflow_provider_flux2.quality.sentinel",
    "evaluation_spend": "airflow_provider_flux2.quality.sentinel",
    "with_verdict": "airflow_provider_flux2.quality.sentinel",
    "DEFAULT_CHECKS": "airflow_provider_flux2.quality.suite",
    "CheckConfig": "airflow_provider_flux2.quality.suite",
    "CheckSuite": "airflow_provider_flux2.quality.suite",
    "SuiteResult": "airflow_provider_flux2.quality.suite",
    "check_image": "airflow_provider_flux2.quality.suite",
    "check_images": "airflow_provider_flux2.quality.suite",
    "failed_checks": "airflow_provider_flux2.quality.suite",
    "run_checks": "airflow_provider_flux2.quality.suite",
}

__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "FAILURE_POLICIES",
    "QUALITY_FAILURE_CODE",
    "SENTINEL_CHECK",
    "BatchCheck",
    "Check",
    "CheckConfig",
    "CheckSuite",
    "CheckVerdict",
    "DecodedImage",
    "DecodesCheck",
    "EvaluationJob",
    "FailurePolicy",
    "FormatCheck",
    "ImageCheck",
    "NearDuplicateCheck",
    "NotBlankCheck",
    "NsfwCheck",
    "PolicyOutcome",
    "QualityScoreCheck",
    "Regeneration",
    "RegenerationPlan",
    "Sample",
    "SentinelGate",
    "SizeCheck",
    "SuiteResult",
    "apply_failure_policy",
    "check_image",
    "check_images",
    "decode_image",
    "evaluation_spend",
    "failed_checks",
    "plan_regeneration",
    "regeneration_seed",
    "run_checks",
    "supersede",
    "with_verdict",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULE_OF)
