"""S3 adapter: the upload bucket, around an injected boto3 S3 client. Presigned URLs last at most
15 minutes (900 s) and name exactly one object; a presigned PUT (of an object or of one part of
a multipart upload) also names its exact size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

READ_CHUNK = 256 * 1024
TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                          max_concurrency=4)
# s3transfer reads the parts of a file object into memory ahead of the threads sending them (10 by
# default: 80 MiB); as many as are sent at once is enough.
TRANSFER.max_in_memory_upload_chunks = 4
STREAM_RESUMES = 5  # a broken GET is picked up where it broke (a ranged GET), this many times in a row
_BROKEN_STREAM = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError,
                  EndpointConnectionError, ConnectionError)


class ObjectMissing(LookupError):
    pass


class ObjectChanged(LookupError):
    """The object is no longer the version that was asked for (If-Match failed)."""


def _missing(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}


def _changed(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in {"412", "PreconditionFailed"}


class UploadMissing(LookupError):
    """The multipart upload is no longer open (completed or aborted)."""


class BadParts(ValueError):
    """S3 refused to complete a multipart upload from the parts given (its message says why)."""


def _no_upload(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in {"NoSuchUpload", "404"}


class Storage:
    def __init__(self, s3_client, bucket: str) -> None:
        self.s3 = s3_client
        self.bucket = bucket

    def put_bytes(self, key: str, data: bytes, content_type: str = "text/csv") -> str:
        """Store `data`; returns the object's ETag."""
        return self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)["ETag"]

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str = "text/csv") -> None:
        """A multipart upload above 8 MiB (parts of 8 MiB, 4 at once): memory bounded by the parts
        in flight, whatever the file's size."""
        self.s3.upload_fileobj(fileobj, self.bucket, key, ExtraArgs={"ContentType": content_type},
                               Config=TRANSFER)

    def head(self, key: str) -> tuple[int, str]:
        """(size in bytes, ETag) of the object."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(key) from exc
            raise
        return head["ContentLength"], head["ETag"]

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectMissing:
            return False
        return True

    def size(self, key: str) -> int:
        return self.head(key)[0]

    def iter_chunks(self, key: str, etag: str | None = None, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks; with `etag`, only that version (ObjectChanged otherwise).
        A stream that breaks (a long read of a big object: connection reset, read timeout) is
        resumed with a ranged GET of the same version from the byte where it broke."""
        position, failures = 0, 0
        while True:
            response = self._get(key, etag, position)
            etag = etag or response["ETag"]  # a resumed read must be the same version
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(chunk_size):
                    position += len(chunk)
                    failures = 0
                    yield chunk
                return
            except _BROKEN_STREAM:
                failures += 1
                if failures > STREAM_RESUMES:
                    raise
            finally:
                body.close()

    def _get(self, key: str, etag: str | None, position: int) -> dict:
        options = ({"IfMatch": etag} if etag else {}) | ({"Range": f"bytes={position}-"} if position else {})
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key, **options)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(key) from exc
            if _changed(exc):
                raise ObjectChanged(key) from exc
            raise

    def copy(self, source_key: str, key: str) -> None:
        self.s3.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key})

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (paged by the SDK)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", ())]

    def presigned_put(self, key: str, size: int, expires_s: int = 900, content_type: str = "text/csv") -> str:
        """A PUT URL for exactly `size` bytes: with SigV4, ContentLength joins the signed headers
        (X-Amz-SignedHeaders=content-length;...), so S3 refuses a body of any other length."""
        return self.s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size},
            ExpiresIn=expires_s,
        )

    # ---------------------------------------------------------------- multipart uploads

    def create_multipart(self, key: str, content_type: str = "text/csv") -> str:
        """Open a multipart upload of `key`; returns its upload id."""
        return self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)["UploadId"]

    def presigned_part(self, key: str, upload_id: str, number: int, size: int, expires_s: int = 900) -> str:
        """A PUT URL for part `number` of the upload, for exactly `size` bytes (signed
        content-length, as `presigned_put`)."""
        return self.s3.generate_presigned_url(
            "upload_part",
            Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number,
                    "ContentLength": size},
            ExpiresIn=expires_s,
        )

    def list_parts(self, key: str, upload_id: str) -> list[dict]:
        """The parts S3 holds, as [{"number", "etag", "size"}] by number (UploadMissing when the
        upload is no longer open)."""
        parts: list[dict] = []
        try:
            for page in self.s3.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend({"number": p["PartNumber"], "etag": p["ETag"], "size": p["Size"]}
                             for p in page.get("Parts", ()))
        except ClientError as exc:
            if _no_upload(exc):
                raise UploadMissing(upload_id) from exc
            raise
        return sorted(parts, key=lambda part: part["number"])

    def complete_multipart(self, key: str, upload_id: str, parts: list[dict]) -> None:
        """Join the parts ([{"number", "etag"}], in order) into the object."""
        try:
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p["number"], "ETag": p["etag"]} for p in parts]})
        except ClientError as exc:
            if _no_upload(exc):
                raise UploadMissing(upload_id) from exc
            if exc.response["Error"]["Code"] in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}:
                raise BadParts(exc.response["Error"].get("Message") or exc.response["Error"]["Code"]) from exc
            raise

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and every part S3 holds of it; an upload no longer open is fine."""
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not _no_upload(exc):
                raise

    def open_uploads(self, prefix: str) -> list[dict]:
        """The multipart uploads open under `prefix`, as [{"key", "upload_id"}]."""
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        return [{"key": u["Key"], "upload_id": u["UploadId"]} for page in pages for u in page.get("Uploads", ())]

    def read_head(self, key: str, size: int, etag: str | None = None) -> bytes:
        """The object's first `size` bytes (a ranged GET)."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{size - 1}",
                                      **({"IfMatch": etag} if etag else {}))["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(key) from exc
            if _changed(exc):
                raise ObjectChanged(key) from exc
            raise

    def presigned_get(self, key: str, file_name: str, expires_s: int = 900) -> str:
        return self.s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{file_name}"',
                "ResponseContentType": "text/csv; charset=utf-8",
            },
            ExpiresIn=expires_s,
        )

    def check(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)
