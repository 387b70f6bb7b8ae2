"""``operators/publish.py``: the destination and its asset, what is refused when the DAG is parsed, and
lineage — no DAG run.

Publishing run by ``dag.test()`` to a local folder and to S3 (moto) is tested in
``tests/integration/test_quality_publish_operators.py`` and ``tests/integration/storage/``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.operators.publish import FluxPublishOperator, destination_asset


def test_publish_takes_output_uri_as_another_name_for_destination_uri():
    publish = FluxPublishOperator(task_id="publish", records=[], output_uri="s3://final/products")
    assert publish.destination_uri == "s3://final/products"
    assert [a.uri for a in publish.outlets] == ["s3://final/products"]
    with pytest.raises(FluxValidationError, match="output_uri"):
        FluxPublishOperator(task_id="p2", records=[], destination_uri="s3://a/b", output_uri="s3://c/d")
    with pytest.raises(FluxValidationError, match="destination_uri"):
        FluxPublishOperator(task_id="p3", records=[])


@pytest.mark.parametrize("destination", ["relative/folder", "file://host/abs", "s3://Not_A_Bucket/x"])
def test_a_destination_it_cannot_write_is_refused_when_the_dag_is_parsed(destination):
    with pytest.raises(FluxValidationError) as raised:
        FluxPublishOperator(task_id="publish", records=[], destination_uri=destination)
    assert raised.value.field == "destination_uri"
    assert "s3://bucket" in raised.value.allowed


def test_the_destination_is_an_asset_downstream_dags_can_be_scheduled_on():
    asset = destination_asset("s3://final/products/")
    assert (asset.uri, asset.name, asset.group) == ("s3://final/products", "flux2-images:s3://final/products", "flux2")
    publish = FluxPublishOperator(task_id="publish", records=[], destination_uri="s3://final/products/")
    assert publish.outlets == [asset]


def test_a_templated_destination_has_no_asset_unless_one_is_given():
    templated = FluxPublishOperator(task_id="publish", records=[], destination_uri="s3://final/{{ ds }}")
    assert templated.asset is None and templated.outlets == []
    given = destination_asset("s3://final")
    with_asset = FluxPublishOperator(task_id="p2", records=[], destination_uri="s3://final/{{ ds }}", asset=given)
    assert with_asset.outlets == [given]
    assert "destination_uri" in with_asset.template_fields


def test_openlineage_facets_name_sources_and_destination():
    ti = SimpleNamespace(dag_id="d", run_id="manual__2026-12-01T12:38:50+00:00", task_id="publish")
    record = image_record(0, uri="s3://staging/d/manual__2026-12-01T12-38-50Z/generate/00000-abc.jpg").to_xcom()
    publish = FluxPublishOperator(task_id="publish", records=[record], destination_uri="s3://final/products")
    facets = publish.get_openlineage_facets_on_complete(ti)
    assert [(d.namespace, d.name) for d in facets.inputs] == [("s3://staging", "/")]
    assert [(d.namespace, d.name) for d in facets.outputs] == [("s3://final", "products")]


def test_lineage_leaves_out_what_the_task_itself_wrote_and_adds_the_latest_prefix():
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="publish")
    carried = image_record(0, uri="s3://final/products/00000-abc.jpg").to_xcom()  # already published here
    publish = FluxPublishOperator(
        task_id="publish", records=[carried], destination_uri="s3://final/products", latest_uri="s3://final/latest"
    )
    facets = publish.get_openlineage_facets_on_complete(ti)
    assert [(d.namespace, d.name) for d in facets.outputs] == [("s3://final", "products"), ("s3://final", "latest")]
    assert ("s3://final", "products") not in [(d.namespace, d.name) for d in facets.inputs]
