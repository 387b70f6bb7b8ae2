"""Names people can read: the name template and folder names without ``:`` or ``+``."""

from __future__ import annotations

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.base import image_name
from airflow_provider_flux2.storage.naming import check_template, name_fields, render_name, safe_segment

DIGEST = "65d8cbb683b3" + "0" * 52


@pytest.mark.parametrize(
    ("run_id", "segment"),
    [
        ("manual__2026-12-01T12:38:50.911527+00:00", "manual__2026-12-01T12-38-50.911527Z"),
        ("scheduled__2026-05-01T00:00:00+00:00", "scheduled__2026-05-01T00-00-00Z"),
        ("backfill__2026-05-01T00:00:00+02:00", "backfill__2026-05-01T00-00-00_02-00"),
        ("my run/1", "my_run_1"),
    ],
)
def test_folder_names_carry_no_colon_or_plus_and_keep_the_time_readable(run_id, segment):
    assert safe_segment(run_id) == segment
    assert ":" not in segment and "+" not in segment


def test_the_batch_folder_of_a_manual_run_has_no_colon_or_plus():
    location = BatchLocation("catalogue", "manual__2026-12-01T12:38:50.911527+00:00", "generate")

    folder = LocalPublisher("file:///data").folder_uri(location)

    assert folder == "file:///data/catalogue/manual__2026-12-01T12-38-50.911527Z/generate"


@pytest.mark.parametrize(
    ("template", "item_id", "seed", "name"),
    [
        ("{index}-{id}-{hash}", "SKU-1042", 7, "00003-SKU-1042-65d8cbb683b3"),
        ("{index}-{id}-{hash}", None, 7, "00003-65d8cbb683b3"),  # no id: its separator goes with it
        ("{id}-{index}", None, None, "00003"),
        ("{id}_{seed}", "SKU 9", 42, "SKU_9_42"),
        ("{id}/{index}-{seed}", "mug/blue", None, "mug_blue/00003"),  # "/" only from the template
        ("{index}-{hash}", "ignored", 1, "00003-65d8cbb683b3"),
        ("{id}", None, None, "00003"),  # nothing left: the index, never an empty name
        ("img-{index:>03}", None, None, "img-00003"),
    ],
)
def test_a_name_template_renders_readable_names(template, item_id, seed, name):
    assert render_name(check_template(template), index=3, digest=DIGEST, item_id=item_id, seed=seed) == name


@pytest.mark.parametrize("template", ["{sku}-{index}", "{seed}", "plain", "{index!r}", "{index", "../{index}", "/{id}"])
def test_a_bad_template_is_refused_naming_the_field_and_what_is_allowed(template):
    with pytest.raises(FluxValidationError) as err:
        check_template(template)

    assert err.value.field == "output_name_template"
    assert "{index}, {id}, {seed} and {hash}" in str(err.value)


def test_a_publisher_refuses_a_bad_template_when_it_is_made_before_anything_is_generated(tmp_path):
    with pytest.raises(FluxValidationError, match="output_name_template"):
        LocalPublisher(tmp_path.as_uri(), name_template="{sku}")


def test_the_default_template_keeps_id_less_names_as_they_were_and_adds_the_id(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("d", "r", "t")

    plain = publisher.put_image(location, 0, b"a", "image/jpeg")
    named = publisher.put_image(location, 1, b"b", "image/jpeg", name_fields={"item_id": "SKU-7", "seed": 3})

    assert plain.rsplit("/", 1)[1] == image_name(0, __import__("hashlib").sha256(b"a").hexdigest(), "image/jpeg")
    assert named.rsplit("/", 1)[1].startswith("00001-SKU-7-")


def test_the_config_option_sets_the_template(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__FLUX2__OUTPUT_NAME_TEMPLATE", "{id}-{seed}")

    uri = LocalPublisher(tmp_path.as_uri()).put_image(
        BatchLocation("d", "r", "t"), 0, b"x", "image/png", name_fields={"item_id": "A1", "seed": 9}
    )

    assert uri.endswith("/d/r/t/A1-9.png")


def test_name_fields_come_from_the_records_item_id_and_seed():
    assert name_fields({"extra": {"id": "SKU-1"}, "seed": 4}) == {"item_id": "SKU-1", "seed": 4}
    assert name_fields({"seed": None}) == {"item_id": None, "seed": None}
