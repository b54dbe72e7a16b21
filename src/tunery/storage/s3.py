"""A BlobStore on S3 or any S3-compatible object store (MinIO, Ceph, R2, moto), via boto3.

Selected by ``TUNERY_BLOB_URL=s3://bucket/prefix`` with ``TUNERY_S3_ENDPOINT_URL`` and
credentials (see ``tunery.settings``). Keys live under ``prefix/``. Besides the BlobStore
protocol it implements ``DirectUploads``: clients PUT file bytes and multipart parts to presigned
URLs, so uploads never pass through the API node.

Every write is atomic on S3 (a PUT or a completed multipart upload appears whole or not at all),
which is what lets the worker list a checkpoint as soon as ``put`` returns.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from tunery.errors import Conflict, InvalidRequest
from tunery.settings import Settings
from tunery.storage.base import CHUNK

MiB = 1024 * 1024
# Server-side copies above this size must go part by part (S3's CopyObject limit is 5 GiB).
COPY_LIMIT = 5 * 1024 * MiB
COPY_PART = 512 * MiB
_MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"TUNERY_BLOB_URL must look like s3://bucket/prefix; got {url!r}")
    return bucket, prefix.strip("/")


def _client(settings: Settings, endpoint: str) -> Any:
    credentials = {}
    if settings.s3_access_key_id:
        credentials = {"aws_access_key_id": settings.s3_access_key_id,
                       "aws_secret_access_key": settings.s3_secret_access_key}
    config = Config(signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style},
                    retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=settings.s3_region,
                                          config=config, **credentials)


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _MISSING


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, client: Any, staging: Path, *, presign_client: Any = None,
                 copy_part_bytes: int = COPY_PART):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        # Presigned URLs are signed for the host clients will use (signing is local: no request).
        self.presign_client = presign_client or client
        self._staging = staging
        self._staging.mkdir(parents=True, exist_ok=True)
        self.copy_part_bytes = copy_part_bytes
        self._transfer = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB,
                                        max_concurrency=4)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        bucket, prefix = parse_s3_url(settings.blob_url)
        client = _client(settings, settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url
        presign = _client(settings, public) if public and public != settings.s3_endpoint_url else client
        return cls(bucket, prefix, client, settings.data_dir / "staging", presign_client=presign)

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # ---- BlobStore ------------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self._staging

    def put(self, key: str, src: Path) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=self._transfer)
        finally:
            src.unlink(missing_ok=True)

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        body = self.client.get_object(**args)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        fd, name = tempfile.mkstemp(dir=self._staging, prefix="blob-", suffix=".copy")
        path = Path(name)
        try:
            with open(fd, "wb") as f:
                try:
                    self.client.download_fileobj(self.bucket, self._key(key), f, Config=self._transfer)
                except ClientError as error:
                    if _missing(error):
                        raise FileNotFoundError(key) from None
                    raise
            yield path
        finally:
            path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def head(self, key: str) -> tuple[str, int] | None:
        """``(etag, size)`` of ``key``, or None when it does not exist."""
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _missing(error):
                return None
            raise
        return str(meta["ETag"]), int(meta["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def size(self, key: str) -> int:
        found = self.head(key)
        if found is None:
            raise FileNotFoundError(key)
        return found[1]

    # ---- DirectUploads --------------------------------------------------------------------------

    def presigned_put(self, key: str, ttl_s: int) -> str:
        return str(self.presign_client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=ttl_s))

    def start_multipart(self, key: str) -> str:
        return str(self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"])

    def presigned_part(self, key: str, upload_id: str, part_number: int, ttl_s: int) -> str:
        return str(self.presign_client.generate_presigned_url(
            "upload_part", ExpiresIn=ttl_s,
            Params={"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id, "PartNumber": part_number}))

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Assemble the parts; ``InvalidRequest`` when S3 refuses them (a wrong ETag, a missing
        or too small part), ``Conflict`` when the upload is gone (completed or aborted)."""
        listed = [{"PartNumber": n, "ETag": etag if etag.startswith('"') else f'"{etag}"'} for n, etag in parts]
        try:
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                                  MultipartUpload={"Parts": listed})
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            message = error.response.get("Error", {}).get("Message", code)
            if code == "NoSuchUpload":
                raise Conflict(f"the object store no longer has this multipart upload ({message})",
                               param="upload_id") from None
            raise InvalidRequest(f"the object store refused the parts: {code}: {message}", param="parts") from None

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with suppress(ClientError):  # already completed or aborted: nothing left to remove
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)

    def promote(self, src: str, dest: str, etag: str) -> None:
        """Copy ``src`` to ``dest`` inside the store, only if ``src`` still has ``etag`` (the bytes
        that were checked), then delete ``src``. ``Conflict`` if it changed meanwhile."""
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        try:
            found = self.head(src)
            if found is None or found[0] != etag:
                raise Conflict("the uploaded object changed while it was being checked; upload it again")
            size = found[1]
            if size <= min(COPY_LIMIT, self.copy_part_bytes):
                self.client.copy_object(Bucket=self.bucket, Key=self._key(dest), CopySource=source,
                                        CopySourceIfMatch=etag)
            else:
                self._copy_in_parts(source, dest, etag, size)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412"):
                raise Conflict("the uploaded object changed while it was being checked; upload it again") from None
            if code in _MISSING:
                raise Conflict("the uploaded object is gone (another request took it)") from None
            raise
        self.delete(src)

    def _copy_in_parts(self, source: dict[str, str], dest: str, etag: str, size: int) -> None:
        upload_id = self.start_multipart(dest)
        try:
            parts = []
            for n, start in enumerate(range(0, size, self.copy_part_bytes), start=1):
                end = min(size, start + self.copy_part_bytes) - 1
                out = self.client.upload_part_copy(
                    Bucket=self.bucket, Key=self._key(dest), UploadId=upload_id, PartNumber=n, CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}", CopySourceIfMatch=etag)
                parts.append({"PartNumber": n, "ETag": out["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self._key(dest), UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort_multipart(dest, upload_id)
            raise
