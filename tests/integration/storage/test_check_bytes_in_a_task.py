"""``check_images`` in a ``@task``, as the docs show it: bytes read from S3 (moto), verdicts out through XCom."""

from __future__ import annotations

import itertools
from datetime import datetime

from airflow.sdk import DAG, task
from synthetic_images import Pictures

from airflow_provider_flux2.quality import check_images
from airflow_provider_flux2.storage import uri_reader

_ids = itertools.count()


def test_a_task_checks_raw_bytes_from_s3_and_returns_the_verdicts_as_xcom(
    run_dag, xcom, moto_aws_conn, bucket, s3_admin
):
    base = Pictures.scene(70, (320, 240))
    pictures = [base, Pictures.perturbed(base), Pictures.flat(size=(320, 240)), Pictures.scene(71, (320, 240))]
    uris = []
    for i, picture in enumerate(pictures):
        s3_admin.put_object(Bucket=bucket, Key=f"incoming/{i}.png", Body=Pictures.encode(picture))
        uris.append(f"s3://{bucket}/incoming/{i}.png")

    with DAG(f"t_check_bytes_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task
        def check(uris: list[str]) -> list[dict]:
            read = uri_reader(aws_conn_id=moto_aws_conn)
            results = check_images([read(u) for u in uris], width=320, height=240, output_format="png")
            return [
                {
                    "uri": uri,
                    "passed": all(v.passed for v in verdicts),
                    "checks": [v.model_dump(mode="json") for v in verdicts],
                }
                for uri, verdicts in zip(uris, results, strict=True)
            ]

        check(uris)

    dr = run_dag(dag)

    assert dr.state == "success"
    out = xcom(dr, "check")
    assert [row["passed"] for row in out] == [True, False, False, True]
    failed = {row["uri"].rsplit("/", 1)[-1]: [c["check"] for c in row["checks"] if not c["passed"]] for row in out}
    assert failed == {"0.png": [], "1.png": ["near_duplicate"], "2.png": ["not_blank"], "3.png": []}
    assert out[1]["checks"][-1]["value"]["duplicate_of"] == 0
