from __future__ import annotations

import pytest

from airflow_provider_flux2.storage.s3 import S3Publisher, client_kwargs_from_connection, split_s3_uri


def test_connection_fields_become_client_arguments():
    kwargs = client_kwargs_from_connection(
        "AKIDEXAMPLE",
        "secret",
        {"region_name": "eu-central-1", "endpoint_url": "http://minio:9000", "aws_session_token": "tok"},
    )

    config = kwargs.pop("config")
    assert kwargs == {
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "secret",
        "aws_session_token": "tok",
        "region_name": "eu-central-1",
        "endpoint_url": "http://minio:9000",
    }
    assert config.s3 == {"addressing_style": "path"}  # MinIO answers path-style requests
    assert config.retries == {"mode": "standard"}


def test_a_connection_without_keys_leaves_credentials_to_the_default_chain():
    kwargs = client_kwargs_from_connection(None, None, {"region_name": "us-west-2"})

    assert "aws_access_key_id" not in kwargs
    assert kwargs["region_name"] == "us-west-2"
    assert kwargs["config"].s3 is None  # AWS itself: boto3 picks the addressing style


def test_the_addressing_style_can_be_set_explicitly():
    kwargs = client_kwargs_from_connection(
        "a", "b", {"endpoint_url": "https://s3.example", "addressing_style": "virtual"}
    )

    assert kwargs["config"].s3 == {"addressing_style": "virtual"}


@pytest.mark.parametrize(
    ("uri", "parts"),
    [("s3://bucket/a/b.png", ("bucket", "a/b.png")), ("s3://bucket", ("bucket", "")), ("s3://b/p/", ("b", "p/"))],
)
def test_s3_uris_split_into_bucket_and_key(uri, parts):
    assert split_s3_uri(uri) == parts


@pytest.mark.parametrize("uri", ["s3:///key", "file:///tmp", "bucket/key"])
def test_malformed_destinations_fail_when_the_publisher_is_made(uri):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        S3Publisher(uri)


def test_making_a_publisher_needs_no_credentials_or_network():
    publisher = S3Publisher("s3://bucket/prefix/", aws_conn_id="does_not_exist")

    assert publisher.base_uri == "s3://bucket/prefix"
    assert publisher._client is None
