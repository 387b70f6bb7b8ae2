"""FluxPublishOperator: deliver a checked batch — images, manifest, gallery — and announce it as an asset event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_flux2 import links
from airflow_provider_flux2.arguments import check_operator_arguments, check_output_uri
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import task_location
from airflow_provider_flux2.models import records_from_xcom
from airflow_provider_flux2.outputs import XCOM_GALLERY, XCOM_MANIFEST, FluxImagesLink
from airflow_provider_flux2.pricing import billed_total, usd
from airflow_provider_flux2.quality.sentinel import evaluation_spend
from airflow_provider_flux2.storage import publisher_for, uri_reader
from airflow_provider_flux2.storage.publish import is_publishable, publish_latest, publish_records
from airflow_provider_flux2.storage.report import write_batch_report

if TYPE_CHECKING:
    from airflow.sdk import Context


def destination_asset(uri: str) -> Asset:
    """The asset a publish task updates: its destination, as a URI (``s3://bucket/prefix``, ``file:///path``)."""
    return Asset(uri=uri.rstrip("/"), name=f"flux2-images:{uri.rstrip('/')}", group="flux2")


class FluxPublishOperator(BaseOperator):
    """Copy the images that passed their checks to the destination, with a manifest and a gallery.

    Every image of the batch — dropped and superseded ones too, since they were paid for — is a
    row of the manifest; only publishable ones (succeeded, stored, no failed check) are copied.
    Keys are deterministic, so a re-run overwrites instead of duplicating. The task's outlet is an
    :class:`~airflow.sdk.Asset` for the destination; its event carries the manifest URI, the count
    and the cost, so downstream DAGs can be scheduled on it.

    :param records: the batch's records (e.g. ``check.output``).
    :param destination_uri: ``file:///absolute/path`` or ``s3://bucket/prefix``.
    :param output_uri: another name for ``destination_uri``, as on the generate and check operators.
    :param aws_conn_id: AWS connection for an ``s3://`` destination.
    :param source_aws_conn_id: AWS connection to read ``s3://`` sources (default: ``aws_conn_id``).
    :param asset: the outlet to update (default: an asset for ``destination_uri``, when it is not templated).
    :param flux_conn_id: the ``flux2`` connection whose price table the manifest records.
    :param title: the gallery's heading.
    :param output_name_template: how published images are named (default ``[flux2] output_name_template``).
    :param latest_uri: a stable prefix that always holds the current image of each item, as
        ``{latest_uri}/{id}.{ext}``, with ``latest.json`` mapping ids to them (items without an id are left out).
    """

    template_fields: Sequence[str] = (
        "records",
        "destination_uri",
        "title",
        "aws_conn_id",
        "source_aws_conn_id",
        "output_name_template",
        "latest_uri",
    )
    template_fields_renderers = {"records": "json"}
    operator_extra_links = (FluxImagesLink(),)
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        records: Any,
        destination_uri: str | None = None,
        output_uri: str | None = None,
        aws_conn_id: str | None = None,
        source_aws_conn_id: str | None = None,
        asset: Asset | None = None,
        flux_conn_id: str = FluxHook.default_conn_name,
        title: str | None = None,
        output_name_template: str | None = None,
        latest_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        if destination_uri is not None and output_uri is not None and destination_uri != output_uri:
            raise FluxValidationError(
                field="output_uri",
                value=output_uri,
                allowed=f"the same as destination_uri ({destination_uri!r}) or unset",
            )
        destination_uri = destination_uri if destination_uri is not None else output_uri
        if not destination_uri:
            raise FluxValidationError(
                field="destination_uri", value=None, allowed="file:///absolute/path or s3://bucket/prefix"
            )
        check_output_uri(destination_uri, "destination_uri", unless_templated=True)  # before the asset reads it
        if asset is None and isinstance(destination_uri, str) and "{{" not in destination_uri:
            asset = destination_asset(destination_uri)
        if asset is not None:
            kwargs["outlets"] = [*list(kwargs.get("outlets") or []), asset]
        super().__init__(**kwargs)
        self.records = records
        self.destination_uri = destination_uri
        self.aws_conn_id = aws_conn_id
        self.source_aws_conn_id = source_aws_conn_id
        self.asset = asset
        self.flux_conn_id = flux_conn_id
        self.title = title
        self.output_name_template = output_name_template
        self.latest_uri = latest_uri
        check_operator_arguments(self)  # the name template and latest_uri too (templated ones: again in execute)

    def execute(self, context: Context) -> dict[str, Any]:
        check_operator_arguments(self, rendered=True)
        batch = records_from_xcom(self.records)
        publisher = publisher_for(
            self.destination_uri, aws_conn_id=self.aws_conn_id, name_template=self.output_name_template
        )
        location = task_location(context)
        reader = uri_reader(aws_conn_id=self.source_aws_conn_id or self.aws_conn_id)
        published = publish_records(batch, publisher, location, reader=reader)
        uris = write_batch_report(
            publisher, location, published, FluxHook(self.flux_conn_id).prices, reader=reader, title=self.title
        )
        if self.latest_uri:
            latest = publisher_for(self.latest_uri, aws_conn_id=self.aws_conn_id)
            updated = publish_latest(published, latest, reader=reader, run_id=context["ti"].run_id)
            self.log.info("Latest: %d item(s) updated under %s", len(updated), latest.base_uri)
        delivered = [r for r in published if is_publishable(r)]
        images_cost, billed_mp = billed_total(published)
        evaluations_cost = evaluation_spend(published)  # Sentinel's verdicts, as the API billed them
        cost = images_cost + evaluations_cost
        summary: dict[str, Any] = {
            "manifest_uri": uris["manifest_uri"],
            "gallery_uri": uris["gallery_uri"],
            "contact_sheet_uri": uris["contact_sheet_uri"],
            "folder_uri": publisher.folder_uri(location),
            "count": len(delivered),
            "images": len(published),
            "billed_mp": billed_mp,
            "cost_usd": usd(cost),
            "uris": [r.uri for r in delivered],
        }
        if evaluations_cost:
            summary.update(generation_cost_usd=usd(images_cost), evaluation_cost_usd=usd(evaluations_cost))
        ti = context["ti"]
        links.remember_gallery(ti, self, XCOM_GALLERY, uris["gallery_uri"])
        ti.xcom_push(key=XCOM_MANIFEST, value=uris["manifest_uri"])
        if self.asset is not None:
            context["outlet_events"][self.asset].extra = {
                k: summary[k] for k in ("manifest_uri", "gallery_uri", "folder_uri", "count", "cost_usd")
            }
        self.log.info(
            "Published %d of %d image(s) to %s; $%s billed for the batch. Manifest: %s · gallery: %s",
            len(delivered),
            len(published),
            summary["folder_uri"],
            summary["cost_usd"],
            uris["manifest_uri"],
            uris["gallery_uri"],
        )
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow_provider_flux2.lineage import lineage, prefixes

        sources = prefixes((r.uri for r in records_from_xcom(self.records)), task_instance)
        # What this task itself wrote is not its input (carried-over images already live here).
        sources = [s for s in sources if s.rstrip("/") != self.destination_uri.rstrip("/")]
        outputs = [self.destination_uri, *([self.latest_uri] if self.latest_uri else [])]
        return lineage(inputs=sources, outputs=outputs)
