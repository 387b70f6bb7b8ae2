"""Peak RSS of one 4096×4096 PNG through the worker's path: submit → wait → download → checks → S3.

Run in a fresh process by ``deployment_bench.py`` (``--rows png``), with the deployment's environment
(its ``flux2_default`` connection to the emulator and ``aws_default`` to moto's S3 server), so the
figure is this process's own: ``resource.getrusage`` (``ru_maxrss``, the kernel's high-water mark) and
psutil's RSS after the imports, printed as one JSON line.

The image goes through the functions the operator's collection calls for each image
(``jobs.store_image``: ``FluxHook.download`` with its size and format checks, the content hash,
``publisher.put_image`` to S3); nothing is mocked.

    python benchmarks/png_rss.py --bucket flux2-bench-png
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", default="flux2-bench-png")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument(
        "--image-url",
        help="download this PNG instead of the emulator's (the run as the API returned it, its output URL "
        "swapped): the emulator's synthetic 4096×4096 PNG compresses to ~1 MB, a photograph's does not",
    )
    args = parser.parse_args(argv)

    import psutil

    from airflow_provider_flux2.hooks.flux import FluxHook
    from airflow_provider_flux2.jobs import new_job, output_publisher, record_for_run, store_image
    from airflow_provider_flux2.storage import BatchLocation

    _create_bucket(args.bucket)
    publisher = output_publisher(f"s3://{args.bucket}/png", "aws_default")
    hook = FluxHook()
    hook.get_conn()
    after_imports = psutil.Process().memory_info().rss

    variant, request = hook.build_request(
        "pro",
        prompt="one very large poster, 4096 by 4096",
        image_size={"width": args.size, "height": args.size},
        output_format="png",
        seed=4096,
    )
    identity = {"dag_id": "png_rss", "task_id": "png", "run_id": f"png-{time.time_ns()}", "map_index": -1}
    job = new_job(identity, 0, variant, request)
    item_cost = hook.estimate([request], model=variant).items[0]
    started = time.perf_counter()
    run = hook.submit(request, model=variant, idempotency_key=job.idempotency_key, client_ref=job.client_ref)
    run = hook.wait(run.id, timeout=900, poll_interval=args.poll_interval)
    if args.image_url:
        run = _with_output_url(hook, run.id, args.image_url)
    record = record_for_run(
        job, item_cost, run, attempt=0, batch_id=None, submitted_at=None, seen={}, log=logging.getLogger("png")
    )
    location = BatchLocation(dag_id="png_rss", run_id=identity["run_id"], task_id="png", map_index=-1)
    store_image(hook, publisher, location, run, job, record)
    hook.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(
        json.dumps(
            {
                "peak_rss": peak,
                "rss_after_imports": after_imports,
                "size_bytes": record.size_bytes,
                "uri": record.uri,
                "seconds": time.perf_counter() - started,
            }
        )
    )
    return 0


def _with_output_url(hook: object, run_id: str, url: str) -> object:
    """The run as ``GET /v1/runs/{id}`` returns it, its first output URL replaced by ``url``."""
    from airflow_provider_flux2 import protocol

    raw = hook.get_conn().get(f"/v1/runs/{run_id}").raise_for_status().json()  # type: ignore[attr-defined]
    raw["output"]["outputs"][0]["url"] = url
    return protocol.parse_run(raw)


def _create_bucket(bucket: str) -> None:
    """The bucket on moto's server, made with the same connection the publisher uses."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    if not s3.check_for_bucket(bucket):
        s3.create_bucket(bucket_name=bucket)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
