"""``s3://bucket/prefix`` storage: AWS S3, MinIO or any S3-compatible store.

The client comes from the Amazon provider's ``S3Hook`` (``apache-airflow-providers-amazon``, the
``amazon`` extra), so every form of AWS connection Airflow users already have works as it does for
Airflow's own S3 operators: access keys, ``role_arn`` with assume role, ``profile_name``,
``endpoint_url`` (MinIO), ``service_config``, ``config_kwargs``. Without ``aws_conn_id`` boto3's
default chain is used (environment variables including ``AWS_ENDPOINT_URL``, shared config and
credentials files, instance or container roles). Uploads keep boto3's transfer manager (multipart,
parallel parts) and the object metadata.

Throttling (503 ``SlowDown``), 5xx answers and dropped connections are retried by the AWS SDK itself,
in its ``standard`` or ``adaptive`` retry mode (:func:`client_config`), for every call including each
part of a multipart upload; nothing here loops around it. An upload that still fails — the retries
spent, or an answer no wait fixes (``AccessDenied``) — becomes a
:class:`~airflow_provider_flux2.exceptions.FluxStorageError` naming the object, the bucket and the cause.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import DEFAULT_MAX_ATTEMPTS

from airflow_provider_flux2.exceptions import FluxStorageError
from airflow_provider_flux2.storage.base import ObjectInfo, Publisher

#: Objects above this size go through boto3's managed transfer, which splits them into parts of
#: this size uploaded in parallel; below it one PUT is cheaper than the three calls of a multipart.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
#: The AWS SDK's retry modes the publisher uses; "legacy" (older botocore's default) retries less.
RETRY_MODES = ("standard", "adaptive")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def client_config(
    extra: dict[str, Any], connection_config: Config | None = None, *, sdk_mode: str | None = None
) -> Config:
    """The botocore config of the publisher's client: the SDK's retries, path-style for custom endpoints.

    What the connection sets itself (``config_kwargs`` in its extras) wins over these defaults. Retries:
    the connection's ``config_kwargs.retries`` (``{"mode": "adaptive", "max_attempts": 10}``), else the
    mode boto3's own settings name (``sdk_mode``: ``AWS_RETRY_MODE``, a profile's ``retry_mode``) when
    it is ``standard`` or ``adaptive``, else ``standard``. ``max_attempts`` left unset is the SDK's own
    (``AWS_MAX_ATTEMPTS``, else 3 attempts in all).

    :param extra: the AWS connection's extras; ``endpoint_url`` (or ``service_config.s3.endpoint_url``)
        switches to path-style addressing unless ``addressing_style`` says otherwise.
    :param connection_config: the config the Amazon provider built from the connection, if any.
    :param sdk_mode: the retry mode boto3's environment and profile ask for (:func:`sdk_retry_mode`).
    """
    endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
    # MinIO and most S3-compatible stores only answer path-style requests unless told otherwise.
    style = extra.get("addressing_style") or ("path" if endpoint else None)
    s3: Any = {"addressing_style": style} if style else None
    # SigV4 everywhere, presigned links included (boto3 may presign SigV2 for S3-compatible endpoints).
    defaults = Config(s3=s3, signature_version="s3v4")
    config = defaults.merge(connection_config) if connection_config is not None else defaults
    # Merged key by key, so a connection that sets only max_attempts still gets a mode that backs off
    # on throttling (both standard and adaptive do, for every call, multipart parts included).
    own: Any = dict(getattr(connection_config, "retries", None) or {})
    own["mode"] = own.get("mode") or (sdk_mode if sdk_mode in RETRY_MODES else "standard")
    return config.merge(Config(retries=own))


def sdk_retry_mode() -> str | None:
    """The retry mode boto3's own settings name (``AWS_RETRY_MODE``, the profile's ``retry_mode``), or its default."""
    from botocore.session import get_session

    mode = get_session().get_config_variable("retry_mode")
    return str(mode) if mode else None


def s3_client(aws_conn_id: str | None) -> Any:
    """A boto3 S3 client for an Airflow AWS connection, made by the Amazon provider's ``S3Hook``.

    :param aws_conn_id: the connection; ``None`` uses boto3's default chain.
    :raises ImportError: ``aws_conn_id`` is given and ``apache-airflow-providers-amazon`` is not installed.
    """
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    except ImportError as exc:
        if aws_conn_id is None:
            return boto3.session.Session().client("s3", config=client_config({}, sdk_mode=sdk_retry_mode()))
        raise ImportError(
            f"aws_conn_id={aws_conn_id!r} needs the Amazon provider: pip install 'airflow-provider-flux2[amazon]'"
        ) from exc
    hook = S3Hook(aws_conn_id=aws_conn_id)
    extra = hook.conn_config.extra_dejson if aws_conn_id else {}
    config = client_config(extra, hook.conn_config.botocore_config, sdk_mode=sdk_retry_mode())
    return hook.get_client_type(config=config)


class S3Publisher(Publisher):
    """Writes under ``s3://bucket/prefix``.

    :param base_uri: ``s3://bucket`` or ``s3://bucket/prefix``.
    :param aws_conn_id: an Airflow connection to take credentials and endpoint from; ``None`` uses
        boto3's default chain.
    :param multipart_threshold: objects larger than this many bytes are uploaded in parts.
    :param name_template: how stored images are named (see :class:`~airflow_provider_flux2.storage.base.Publisher`).
    """

    scheme = "s3"

    def __init__(
        self,
        base_uri: str,
        aws_conn_id: str | None = None,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        name_template: str | None = None,
    ) -> None:
        split_s3_uri(base_uri)  # fail at construction on a malformed destination, not at the first upload
        super().__init__(base_uri, name_template)
        self.aws_conn_id = aws_conn_id
        self.multipart_threshold = multipart_threshold
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold, max_concurrency=4
        )
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use (so a DAG file can build a publisher without credentials)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return s3_client(self.aws_conn_id)

    def _put(self, uri: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> None:
        bucket, key = split_s3_uri(uri)
        try:
            self._upload(bucket, key, data, {"ContentType": content_type, "Metadata": metadata})
        except (ClientError, BotoCoreError, S3UploadFailedError) as error:
            # The SDK has already retried what a wait can fix: say which object, where, and why.
            raise upload_error(error, uri, self.client.meta.config.retries or {}) from error

    def _upload(self, bucket: str, key: str, data: bytes | Path, extra: dict[str, Any]) -> None:
        if isinstance(data, bytes):
            if len(data) <= self.multipart_threshold:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
            else:
                # BytesIO shares the bytes object's buffer until written to, so this is not a copy.
                self.client.upload_fileobj(io.BytesIO(data), bucket, key, ExtraArgs=extra, Config=self._transfer)
            return
        path = Path(data)
        if path.stat().st_size <= self.multipart_threshold:
            with open(path, "rb") as body:
                self.client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        else:
            # The managed transfer reads parts straight from the file, in parallel, without
            # loading the whole image into memory.
            self.client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=self._transfer)

    def get(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise _not_found_or(exc, uri) from exc
        return response["Body"].read()

    def exists(self, uri: str) -> bool:
        try:
            self.head(uri)
        except FileNotFoundError:
            return False
        return True

    def head(self, uri: str) -> ObjectInfo:
        bucket, key = split_s3_uri(uri)
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise _not_found_or(exc, uri) from exc
        return ObjectInfo(
            uri=uri,
            size=int(response["ContentLength"]),
            content_type=response.get("ContentType", "binary/octet-stream"),
            metadata=dict(response.get("Metadata", {})),
            etag=response.get("ETag"),
        )


def _not_found_or(exc: ClientError, uri: str) -> Exception:
    # A missing object is FileNotFoundError on both stores; anything else (access denied, a missing
    # bucket, throttling) stays boto3's error, which names the cause.
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _NOT_FOUND:
        return FileNotFoundError(f"No object at {uri}")
    return exc


def upload_error(error: Exception, uri: str, retries: dict[str, Any]) -> FluxStorageError:
    """A failed upload as the task reports it: the object, the bucket, the store's code and message,
    the attempts the SDK made and its retry mode, and what to do. Never a credential: only the error's
    code and message are read from the answer.

    :param retries: the client's retry settings (``client.meta.config.retries``).
    """
    bucket, key = split_s3_uri(uri)
    # A multipart upload reports its part's ClientError as the context of an S3UploadFailedError.
    cause = error.__context__ if isinstance(error, S3UploadFailedError) and error.__context__ else error
    status: int | None = None
    attempts = ""
    if isinstance(cause, ClientError):
        answer, meta = cause.response.get("Error", {}), cause.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = str(answer.get("Code") or status or "Unknown")
        detail = str(answer.get("Message") or "(no message)")
        made = int(meta.get("RetryAttempts", 0)) + 1
        attempts = f"{made} attempt{'s' if made != 1 else ''}"
        # The client's config holds what was set; the SDK's own default fills the rest.
        most = retries.get("total_max_attempts") or (DEFAULT_MAX_ATTEMPTS if retries.get("mode") in RETRY_MODES else 0)
        attempts += f" of {most}" if most else ""
    else:
        code, detail = type(cause).__name__, str(cause)
    where = f"HTTP {status}, " if status else ""
    text = f"Could not store {key!r} in S3 bucket {bucket!r}: {code}: {detail} ({where}"
    text += f"{attempts + ', ' if attempts else ''}AWS SDK retry mode {retries.get('mode', 'standard')!r})"
    if status == 403:
        text += "; check that the AWS connection may s3:PutObject under this prefix (IAM policy, bucket policy)"
    elif status is None or status >= 500:
        text += (
            '; to ride out longer throttling set config_kwargs {"retries": {"mode": "adaptive", "max_attempts": 10}} '
            "in the AWS connection's extras"
        )
    return FluxStorageError(text, uri=uri, code=code, bucket=bucket, key=key)
