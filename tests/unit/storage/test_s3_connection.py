from __future__ import annotations

import pytest
from botocore.config import Config

from airflow_provider_flux2.storage.s3 import S3Publisher, client_config, split_s3_uri


def test_a_custom_endpoint_gets_path_style_and_standard_retries():
    config = client_config({"endpoint_url": "http://minio:9000"})

    assert config.s3 == {"addressing_style": "path"}  # MinIO answers path-style requests
    assert config.retries == {"mode": "standard"}


def test_an_s3_endpoint_in_service_config_also_gets_path_style():
    config = client_config({"service_config": {"s3": {"endpoint_url": "http://minio:9000"}}})

    assert config.s3 == {"addressing_style": "path"}


def test_aws_itself_leaves_the_addressing_style_to_boto3():
    assert client_config({"region_name": "us-west-2"}).s3 is None


def test_the_addressing_style_can_be_set_explicitly():
    config = client_config({"endpoint_url": "https://s3.example", "addressing_style": "virtual"})

    assert config.s3 == {"addressing_style": "virtual"}


def test_the_connections_own_botocore_config_wins_over_the_defaults():
    config = client_config(
        {"endpoint_url": "http://minio:9000"}, Config(retries={"mode": "adaptive", "max_attempts": 9})
    )

    assert config.retries == {"mode": "adaptive", "max_attempts": 9}
    assert config.s3 == {"addressing_style": "path"}


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
