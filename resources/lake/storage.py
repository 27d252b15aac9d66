"""Lake storage behind one interface: a local directory or an S3 bucket.

Writes are atomic: a local file is written under a hidden temporary name and
renamed into place; an S3 object only becomes visible once its upload
completes. Listings never show hidden ('.', '_') names.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from resources import settings
from resources.aws import AwsClients
from resources.lake.paths import (
    PARQUET_COMPRESSION,
    PARQUET_SUFFIX,
    LakePartition,
    Tier,
    dataset_prefix,
    is_hidden,
    object_key,
    parse_key,
    partition_prefix,
)

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class LakeObject:
    key: str
    size: int
    last_modified: datetime  # timezone-aware UTC
    etag: str | None = None  # S3's ETag (no quotes); None where the listing does not give one


def md5_etag(path: Path) -> str:
    """What S3 reports as the ETag of a single-part upload of this file: its MD5, in hex."""
    import hashlib

    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ListingCursor:
    """Where a listing got to: the newest modification time seen and the keys seen at that time.

    Keeping the keys at the boundary time makes the listing exact even when
    several objects share a modification time (S3 has one-second resolution).
    """

    last_modified: datetime | None = None
    keys_at_last_modified: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
            "keys": self.keys_at_last_modified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ListingCursor:
        if not data or not data.get("last_modified"):
            return cls()
        return cls(datetime.fromisoformat(data["last_modified"]), list(data.get("keys", [])))

    def take_new(self, objects: Iterable[LakeObject], limit: int) -> tuple[list[LakeObject], ListingCursor]:
        """From objects sorted by (last_modified, key), the first `limit` not yet seen, and the new cursor."""
        seen = set(self.keys_at_last_modified)
        fresh = [
            o
            for o in objects
            if self.last_modified is None
            or o.last_modified > self.last_modified
            or (o.last_modified == self.last_modified and o.key not in seen)
        ][:limit]
        if not fresh:
            return [], self
        newest = fresh[-1].last_modified
        keys = [o.key for o in fresh if o.last_modified == newest]
        if newest == self.last_modified:
            keys = self.keys_at_last_modified + keys
        return fresh, ListingCursor(newest, keys)


class LakeStorage(dg.ConfigurableResource, ABC):
    """Object storage for the lake. Keys follow resources.lake.paths."""

    # --- primitives each backend provides ---------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Move a finished local file into the lake under key, atomically; the file is consumed."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Copy the object to a local file (for streaming readers)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def copy_object(self, source: str, target: str) -> None:
        """Copy an object to another key (atomically, as put_bytes)."""
        self.put_bytes(target, self.get_bytes(source))

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix ('a/b/'), hidden ones included; returns how many."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_objects(self, prefix: str) -> list[LakeObject]:
        """Visible objects under prefix, sorted by (last_modified, key)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A URI other engines (DuckDB, Spark) can read the object from."""

    def list_new_objects(
        self, prefix: str, cursor: ListingCursor, limit: int = 1000
    ) -> tuple[list[LakeObject], ListingCursor]:
        """Objects under prefix not yet seen by cursor, oldest first, at most `limit`."""
        return cursor.take_new(self.list_objects(prefix), limit)

    def key_from_notification(self, bucket: str, s3_key: str) -> str | None:
        """The lake key of an S3 event's object, or None if the object is not in this lake."""
        return None  # only an S3 lake receives S3 notifications

    @abstractmethod
    def etag(self, obj: LakeObject) -> str:
        """The object's ETag as S3 would report it (the listing's, or the content's MD5)."""

    def scratch_dir(self) -> Path:
        """Local directory for files being written before they move into the lake."""
        path = settings.var_dir() / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- Parquet, partition-aware -----------------------------------------
    def write_parquet(
        self,
        table: pa.Table,
        tier: Tier | str,
        domain: str,
        dataset: str,
        partition: LakePartition | None = None,
        filename: str | None = None,
    ) -> str:
        """Write one Parquet file into the dataset (partition) and return its key."""
        import pyarrow.parquet as pq

        name = filename or f"part-{uuid.uuid4().hex[:16]}{PARQUET_SUFFIX}"
        key = object_key(tier, domain, dataset, name, partition)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression=PARQUET_COMPRESSION)
        self.put_bytes(key, buffer.getvalue())
        return key

    def parquet_keys(
        self, tier: Tier | str, domain: str, dataset: str, partition: LakePartition | None = None
    ) -> list[str]:
        prefix = partition_prefix(tier, domain, dataset, partition)
        return sorted(o.key for o in self.list_objects(prefix) if o.key.endswith(PARQUET_SUFFIX))

    def read_parquet(
        self, tier: Tier | str, domain: str, dataset: str, partition: LakePartition | None = None
    ) -> pa.Table:
        """Every Parquet file of the dataset, or of one partition, as one table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = self.parquet_keys(tier, domain, dataset, partition)
        if not keys:
            where = partition_prefix(tier, domain, dataset, partition)
            raise FileNotFoundError(f"no Parquet files under {self.uri(where)}")
        tables = [pq.read_table(io.BytesIO(self.get_bytes(k))) for k in keys]
        return pa.concat_tables(tables, promote_options="default")

    def list_partitions(self, tier: Tier | str, domain: str, dataset: str) -> list[LakePartition]:
        found = {parse_key(o.key).partition for o in self.list_objects(dataset_prefix(tier, domain, dataset))}
        return sorted(p for p in found if p is not None)


class LocalLake(LakeStorage):
    """The lake in a local directory (default: var/lake)."""

    root: str | None = None

    def _root(self) -> Path:
        return Path(self.root) if self.root else settings.data_dir()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"lake key {key!r} must be relative and stay inside the lake")
        return self._root() / key

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}-{target.name}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)  # atomic on one file system
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}-{target.name}"
        try:
            shutil.move(path, tmp)  # a rename when on the same file system
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def scratch_dir(self) -> Path:
        # Inside the lake root (hidden), so moving a finished file in is a rename.
        path = self._root() / ".scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def copy_object(self, source: str, target: str) -> None:
        path = self._path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
        try:
            shutil.copyfile(self._path(source), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError(f"delete_prefix takes a folder prefix ending in '/', got {prefix!r}")
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return count

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str) -> list[LakeObject]:
        root = self._root()
        # Walk only the directory part of the prefix; filter the rest by string.
        base = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not base.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(root).as_posix()
                if not key.startswith(prefix) or is_hidden(key):
                    continue
                stat = path.stat()
                modified = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=UTC)
                found.append(LakeObject(key, stat.st_size, modified))
        return sorted(found, key=lambda o: (o.last_modified, o.key))

    def uri(self, key: str) -> str:
        return str(self._root() / key)

    def etag(self, obj: LakeObject) -> str:
        if obj.etag:
            return obj.etag
        cache_key = (str(self._root()), obj.key, obj.size, obj.last_modified)
        if cache_key not in _ETAGS:
            if len(_ETAGS) > 50_000:
                _ETAGS.clear()
            _ETAGS[cache_key] = md5_etag(self._path(obj.key))
        return _ETAGS[cache_key]


# A file's MD5 is read once per (path, size, mtime) in a process (sensor ticks list the same files).
_ETAGS: dict[tuple[str, str, int, datetime], str] = {}


class S3Lake(LakeStorage):
    """The lake in an S3 bucket, optionally under a root prefix."""

    aws: AwsClients
    bucket: str | None = None
    root_prefix: str = ""

    def _bucket(self) -> str:
        return self.bucket or settings.lake_bucket()

    def _s3_key(self, key: str) -> str:
        root = self.root_prefix.strip("/")
        return f"{root}/{key}" if root else key

    def _lake_key(self, s3_key: str) -> str:
        root = self.root_prefix.strip("/")
        return s3_key[len(root) + 1 :] if root else s3_key

    def put_bytes(self, key: str, data: bytes) -> None:
        # upload_fileobj switches to multipart for large bodies; either way the
        # object appears only when the upload completes.
        self.aws.client("s3").upload_fileobj(io.BytesIO(data), self._bucket(), self._s3_key(key))

    def get_bytes(self, key: str) -> bytes:
        return self.aws.client("s3").get_object(Bucket=self._bucket(), Key=self._s3_key(key))["Body"].read()

    def put_file(self, key: str, path: Path) -> None:
        self.aws.client("s3").upload_file(str(path), self._bucket(), self._s3_key(key))
        Path(path).unlink(missing_ok=True)

    def get_file(self, key: str, path: Path) -> None:
        self.aws.client("s3").download_file(self._bucket(), self._s3_key(key), str(path))

    def delete(self, key: str) -> None:
        self.aws.client("s3").delete_object(Bucket=self._bucket(), Key=self._s3_key(key))

    def copy_object(self, source: str, target: str) -> None:
        # Server-side (multipart above the transfer threshold): the bytes never leave S3.
        bucket = self._bucket()
        self.aws.client("s3").copy(
            {"Bucket": bucket, "Key": self._s3_key(source)}, bucket, self._s3_key(target)
        )

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError(f"delete_prefix takes a folder prefix ending in '/', got {prefix!r}")
        s3, bucket, count = self.aws.client("s3"), self._bucket(), 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self._s3_key(prefix)):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:  # a page holds at most 1,000 keys, delete_objects' limit
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                count += len(keys)
        return count

    def exists(self, key: str) -> bool:
        listed = self.aws.client("s3").list_objects_v2(
            Bucket=self._bucket(), Prefix=self._s3_key(key), MaxKeys=1
        )
        return any(o["Key"] == self._s3_key(key) for o in listed.get("Contents", []))

    def _objects(self, prefix: str, since: datetime | None) -> list[LakeObject]:
        from dagster_aws.s3.sensor import get_objects  # lazy: imports boto3

        listed = get_objects(
            self._bucket(), self._s3_key(prefix), since_last_modified=since, client=self.aws.client("s3")
        )
        objects = [
            LakeObject(
                self._lake_key(o["Key"]),
                o.get("Size") or 0,
                o["LastModified"].astimezone(UTC),
                str(o.get("ETag", "")).strip('"') or None,
            )
            for o in listed
            if not is_hidden(o["Key"])
        ]
        return sorted(objects, key=lambda o: (o.last_modified, o.key))

    def list_objects(self, prefix: str) -> list[LakeObject]:
        return self._objects(prefix, None)

    def list_new_objects(
        self, prefix: str, cursor: ListingCursor, limit: int = 1000
    ) -> tuple[list[LakeObject], ListingCursor]:
        # get_objects keeps only objects strictly newer than `since`; step back a
        # microsecond so objects sharing the boundary second are seen, then let
        # the cursor drop the keys it already has.
        since = cursor.last_modified - timedelta(microseconds=1) if cursor.last_modified else None
        return cursor.take_new(self._objects(prefix, since), limit)

    def key_from_notification(self, bucket: str, s3_key: str) -> str | None:
        root = self.root_prefix.strip("/")
        if bucket != self._bucket() or (root and not s3_key.startswith(root + "/")):
            return None
        return self._lake_key(s3_key)

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket()}/{self._s3_key(key)}"

    def etag(self, obj: LakeObject) -> str:
        if obj.etag:
            return obj.etag
        head = self.aws.client("s3").head_object(Bucket=self._bucket(), Key=self._s3_key(obj.key))
        return str(head["ETag"]).strip('"')

    @property
    def bucket_name(self) -> str:
        return self._bucket()
