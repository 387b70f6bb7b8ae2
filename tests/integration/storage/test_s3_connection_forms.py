"""Every AWS connection form the Amazon provider supports reaches the publisher (moto's server: S3 and STS)."""

from __future__ import annotations

import json

import boto3

from airflow_provider_flux2.storage import BatchLocation, publisher_for

LOCATION = BatchLocation("catalogue", "scheduled__2026-05-01", "publish")
REGION = "eu-west-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/flux-publisher"


def _connection(monkeypatch, conn_id: str, **fields) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "aws", **fields}))
    return conn_id


def _signed_with(publisher, bucket: str) -> tuple[str, dict[str, str]]:
    """Upload one object and return the access key id the request was signed with, and its headers."""
    sent: list[dict[str, str]] = []
    publisher.client.meta.events.register("before-send.s3.*", lambda request, **_: sent.append(dict(request.headers)))
    uri = publisher.put_named(LOCATION, "a.txt", b"a", "text/plain", {"seed": "1"})
    assert publisher.get(uri) == b"a"
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in sent[0].items()}
    return headers["Authorization"].split("Credential=")[1].split("/")[0], headers


def test_role_arn_is_assumed_through_sts_and_the_temporary_credentials_sign_the_upload(
    isolated_aws, moto_endpoint, bucket, monkeypatch
):
    conn_id = _connection(
        monkeypatch,
        "flux_role",
        login="AKIABASEUSER",
        password="base-secret",
        extra={
            "region_name": REGION,
            "endpoint_url": moto_endpoint,
            # The assume-role call never uses the global endpoint_url: STS gets its own, as on AWS.
            "service_config": {"sts": {"endpoint_url": moto_endpoint}},
            "role_arn": ROLE_ARN,
            "assume_role_kwargs": {"RoleSessionName": "flux2-publish"},
        },
    )
    publisher = publisher_for(f"s3://{bucket}/assumed", aws_conn_id=conn_id)

    key_id, headers = _signed_with(publisher, bucket)

    assert key_id != "AKIABASEUSER"
    assert headers.get("X-Amz-Security-Token")
    # Ask moto's STS who those credentials belong to: the role, assumed with our session name.
    frozen = publisher.client._request_signer._credentials.get_frozen_credentials()
    sts = boto3.client(
        "sts",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
    )
    assert sts.get_caller_identity()["Arn"] == "arn:aws:sts::123456789012:assumed-role/flux-publisher/flux2-publish"


def test_a_profile_named_in_the_connection_is_read_from_the_shared_files(
    isolated_aws, moto_endpoint, bucket, monkeypatch, tmp_path
):
    credentials = tmp_path / "credentials"
    credentials.write_text("[flux]\naws_access_key_id = AKIAPROFILEFLUX\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    extra = {"profile_name": "flux", "region_name": REGION, "endpoint_url": moto_endpoint}
    conn_id = _connection(monkeypatch, "flux_profile", extra=extra)

    key_id, _ = _signed_with(publisher_for(f"s3://{bucket}/profile", aws_conn_id=conn_id), bucket)

    assert key_id == "AKIAPROFILEFLUX"


def test_a_minio_style_connection_signs_for_its_region_and_goes_path_style(
    isolated_aws, moto_endpoint, bucket, monkeypatch
):
    conn_id = _connection(
        monkeypatch,
        "flux_minio",
        login="minio-user",
        password="minio-secret",
        extra={"endpoint_url": moto_endpoint, "region_name": REGION},
    )
    publisher = publisher_for(f"s3://{bucket}/minio", aws_conn_id=conn_id)
    urls: list[str] = []
    publisher.client.meta.events.register("before-send.s3.*", lambda request, **_: urls.append(request.url))

    key_id, headers = _signed_with(publisher, bucket)

    assert key_id == "minio-user"
    assert f"/{REGION}/s3/aws4_request" in headers["Authorization"]
    assert urls[0].startswith(f"{moto_endpoint}/{bucket}/minio/")  # path-style: the bucket is in the path


def test_botocore_settings_from_config_kwargs_reach_the_client(isolated_aws, moto_endpoint, bucket, monkeypatch):
    conn_id = _connection(
        monkeypatch,
        "flux_tuned",
        login="AKIATUNED",
        password="s",
        extra={
            "endpoint_url": moto_endpoint,
            "region_name": REGION,
            "config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 7}, "read_timeout": 11},
        },
    )
    client = publisher_for(f"s3://{bucket}", aws_conn_id=conn_id).client

    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.read_timeout == 11
    assert client.meta.config.s3 == {"addressing_style": "path"}
