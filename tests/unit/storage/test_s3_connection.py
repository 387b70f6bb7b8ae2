from __future__ import annotations

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from airflow_provider_flux2.exceptions import FluxStorageError
from airflow_provider_flux2.storage.s3 import S3Publisher, client_config, split_s3_uri, upload_error


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


def test_without_retry_settings_the_sdks_own_mode_applies_when_it_is_standard_or_adaptive():
    assert client_config({}, sdk_mode="adaptive").retries == {"mode": "adaptive"}
    assert client_config({}, sdk_mode="legacy").retries == {"mode": "standard"}  # legacy retries less
    assert client_config({}, sdk_mode=None).retries == {"mode": "standard"}


def test_a_connection_that_sets_only_max_attempts_still_gets_a_retry_mode():
    config = client_config({}, Config(retries={"max_attempts": 9}), sdk_mode="adaptive")

    assert config.retries == {"mode": "adaptive", "max_attempts": 9}


def test_the_connections_retry_mode_wins_over_the_sdks():
    config = client_config({}, Config(retries={"mode": "standard"}), sdk_mode="adaptive")

    assert config.retries == {"mode": "standard"}


def _client_error(status: int, code: str, message: str, retries: int = 0, **more: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": message, **more},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


def test_an_upload_out_of_retries_names_the_object_the_bucket_the_cause_and_the_retry_setting():
    error = upload_error(
        _client_error(503, "SlowDown", "Please reduce your request rate.", retries=9),
        "s3://shop-images/night/00001-a.jpg",
        {"mode": "adaptive", "total_max_attempts": 10},
    )

    assert isinstance(error, FluxStorageError)
    assert (error.bucket, error.key, error.code, error.uri) == (
        "shop-images",
        "night/00001-a.jpg",
        "SlowDown",
        "s3://shop-images/night/00001-a.jpg",
    )
    assert str(error).startswith(
        "Could not store 'night/00001-a.jpg' in S3 bucket 'shop-images': SlowDown: Please reduce your request "
        "rate. (HTTP 503, 10 attempts of 10, AWS SDK retry mode 'adaptive'); to ride out longer throttling"
    )


def test_an_upload_error_reads_only_the_code_and_message_of_the_answer():
    denied = _client_error(
        403, "SignatureDoesNotMatch", "The signature does not match.", AWSAccessKeyId="AKIASECRETID", StringToSign="x"
    )

    text = str(upload_error(denied, "s3://b/k.jpg", {"mode": "standard"}))

    assert "AKIASECRETID" not in text and "StringToSign" not in text
    assert "(HTTP 403, 1 attempt of 3, AWS SDK retry mode 'standard'); check that the AWS connection may" in text


def test_a_multipart_failure_is_reported_by_its_parts_error():
    try:
        try:
            raise _client_error(500, "InternalError", "We encountered an internal error.", retries=2)
        except ClientError as part:
            raise S3UploadFailedError(f"Failed to upload big.png to b/k.png: {part}")  # noqa: B904 - as boto3 does
    except S3UploadFailedError as failed:
        error = upload_error(failed, "s3://b/k.png", {"mode": "standard"})

    assert error.code == "InternalError"
    assert "InternalError: We encountered an internal error. (HTTP 500, 3 attempts of 3" in str(error)


def test_a_connection_that_never_answered_is_named_by_the_sdks_error():
    error = upload_error(
        EndpointConnectionError(endpoint_url="http://minio:9000/b/k"), "s3://b/k", {"mode": "standard"}
    )

    assert error.code == "EndpointConnectionError"
    assert 'Could not connect to the endpoint URL: "http://minio:9000/b/k"' in str(error)
    assert "AWS SDK retry mode 'standard'" in str(error) and "config_kwargs" in str(error)
