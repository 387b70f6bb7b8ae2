"""The package's public names: importable from ``airflow_provider_flux2.quality``, loaded on first use."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys

import pytest
from PIL import Image

import airflow_provider_flux2.quality as quality


def test_every_public_name_is_the_object_its_module_defines():
    assert sorted(quality.__all__) == sorted(quality._MODULE_OF)
    for name in quality.__all__:
        assert getattr(quality, name) is getattr(importlib.import_module(quality._MODULE_OF[name]), name), name


def test_the_names_a_task_needs_import_from_the_package():
    from airflow_provider_flux2.quality import (
        CheckSuite,
        CheckVerdict,
        NearDuplicateCheck,
        NotBlankCheck,
        apply_failure_policy,
        check_image,
        check_images,
        run_checks,
        supersede,
    )
    from airflow_provider_flux2.quality.suite import CheckSuite as FromModule

    assert CheckSuite is FromModule
    defined = {f.__module__ for f in (apply_failure_policy, check_images, run_checks, supersede)}
    assert defined <= {f"airflow_provider_flux2.quality.{m}" for m in ("policy", "checks", "suite", "regeneration")}
    # What a task does with them: a blank image fails the blank check, a picture passes it.
    blank, picture = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(blank, "PNG")
    Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(picture, "PNG")
    verdicts = {
        name: {v.check: v for v in check_image(data, checks=[NotBlankCheck()])}
        for name, data in (("blank", blank.getvalue()), ("picture", picture.getvalue()))
    }
    assert isinstance(verdicts["blank"]["not_blank"], CheckVerdict)
    assert not verdicts["blank"]["not_blank"].passed and verdicts["picture"]["not_blank"].passed
    assert NearDuplicateCheck().name == "near_duplicate"


def test_importing_the_package_does_not_load_numpy_imagehash_or_pillow():
    code = (
        "import sys, airflow_provider_flux2.quality as q; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'imagehash', 'PIL', 'scipy'}); "
        "assert not heavy, heavy; "
        "q.CheckSuite; assert 'imagehash' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_submodules_still_import_and_unknown_names_raise_attribute_error():
    from airflow_provider_flux2.quality import decoding

    assert decoding.decode_image is quality.decode_image
    assert "check_image" in dir(quality)
    with pytest.raises(AttributeError, match="no attribute 'Verdict'"):
        _ = quality.Verdict
    with pytest.raises(ImportError):
        from airflow_provider_flux2.quality import no_such_name  # noqa: F401
