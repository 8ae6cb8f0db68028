"""S3-compatible backend (AWS S3, MinIO, Ceph, R2...) through boto3.

Objects only ever appear whole: small ones with one PutObject, larger ones with a multipart
upload that is completed only after the last part, and aborted if the source fails midway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import ObjectMissing, StorageUnavailable, check_key

logger = logging.getLogger(__name__)

PART_BYTES = 5 * 1024 * 1024  # S3's minimum part size: the most a put holds in memory
READ_BYTES = 256 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise RuntimeError("PARLEY_STORAGE=s3 needs PARLEY_S3_BUCKET")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                # path-style works with every S3-compatible server; AWS still accepts it
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            ),
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        name = self._key(key)
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        written = 0
        try:
            with _translated(key):
                for piece in chunks:
                    buf += piece
                    written += len(piece)
                    if len(buf) >= PART_BYTES:
                        if upload_id is None:
                            upload_id = self.client.create_multipart_upload(
                                Bucket=self.bucket, Key=name
                            )["UploadId"]
                        parts.append(self._part(name, upload_id, len(parts) + 1, bytes(buf)))
                        buf.clear()
                if upload_id is None:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buf))
                    return written
                if buf or not parts:
                    parts.append(self._part(name, upload_id, len(parts) + 1, bytes(buf)))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                return written
        except BaseException:
            if upload_id is not None:
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
                except (ClientError, BotoCoreError):
                    logger.warning("abort of a multipart upload failed", extra={"key": name})
            raise

    def _part(self, name: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"ETag": resp["ETag"], "PartNumber": number}

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            self.size(key)  # still report a missing object
            return iter(())
        rng = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            with _translated(key):
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)
        except StorageUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _code(cause) == "InvalidRange":
                return iter(())  # start at or past the end: nothing to read
            raise
        return _stream(body["Body"], key)

    def size(self, key: str) -> int:
        with _translated(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with _translated(prefix or "/"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """boto errors in the interface's terms: ObjectMissing, or StorageUnavailable (retry)."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in _MISSING:
            raise ObjectMissing(key) from exc
        raise StorageUnavailable(f"S3 {_code(exc) or 'error'} on {key}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"S3 unreachable for {key}: {exc}") from exc


def _stream(body: Any, key: str) -> Iterator[bytes]:
    try:
        with _translated(key):
            yield from body.iter_chunks(READ_BYTES)
    finally:
        body.close()
