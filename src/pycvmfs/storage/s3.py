"""S3Storage: a repository storage in an S3 bucket (boto3), set up like the stock S3 uploader."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pycvmfs.errors import ConfigError, CvmfsError, FetchError, ObjectNotFoundError
from pycvmfs.storage.base import BLOCK_SIZE, Consumer
from pycvmfs.storage.local import TXN_DIR, check_relpath

__all__ = ["S3Config", "S3Storage", "S3StorageError", "headers_for", "parse_s3_config"]

T = TypeVar("T")

#: What the stock S3 uploader uses when the configuration file says nothing (``upload_s3.h``).
DEFAULT_CONNECTIONS = 16
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60
#: Objects above this size are uploaded in parts of this size, several parts at once.
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 16 << 20

# Cache lifetimes of format doc §1.7 (what the stock Apache configuration sends), so that a bucket
# served over plain HTTP behaves like a stratum 0 behind Apache.
_SHORT = ("application/x-cvmfs", "max-age=61")
_JSON = ("application/json", "max-age=61")
_OBJECT = ("application/octet-stream", "public, max-age=259200, immutable")
_OTHER = ("application/octet-stream", "public, max-age=259200")

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3StorageError(CvmfsError, OSError):
    """A write, delete or listing in an S3 bucket failed; names the bucket and key (as an
    :class:`OSError`, so a failed publish reports it like a full disk)."""

    def __init__(self, url: str, message: str) -> None:
        OSError.__init__(self, errno.EIO, message, url)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def headers_for(relpath: str) -> tuple[str, str]:
    """``(Content-Type, Cache-Control)`` of a storage file, by name (format doc §1.7)."""
    name = relpath.rsplit("/", 1)[-1]
    if name.startswith(".cvmfs"):
        return _SHORT
    if name.endswith(".json"):
        return _JSON
    if relpath.startswith("data/") and "." not in name:
        return _OBJECT
    return _OTHER


@dataclass(frozen=True)
class S3Config:
    """The settings of a stock ``s3.conf`` (``CVMFS_S3_*``) that S3Storage uses."""

    host: str
    bucket: str
    port: int | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    use_https: bool = False
    dns_buckets: bool = True  # the stock default; every non-AWS store needs false
    max_connections: int = DEFAULT_CONNECTIONS
    max_retries: int = DEFAULT_RETRIES
    timeout: int = DEFAULT_TIMEOUT
    peek_before_put: bool = True
    acl: str | None = None  # CVMFS_S3_X_AMZ_ACL
    proxy: str | None = None
    flavor: str | None = None  # awsv2 / awsv4

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self.use_https else "http"
        host = self.host
        if "://" in host:  # a URL given as host: keep its scheme
            scheme, _, host = host.partition("://")
            host = host.rstrip("/")
        port = self.port if self.port is not None else (443 if scheme == "https" else 80)
        return f"{scheme}://{host}:{port}"


def _parse_lines(text: str, what: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as a shell would source them (comments, ``export``, quotes)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line[7:].lstrip() if line.startswith("export ") else line
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{what}:{n}: not a KEY=VALUE line: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _is_on(value: str) -> bool:
    return value.strip().lower() in ("yes", "on", "1", "true")


def _uint(conf: dict[str, str], key: str, default: int, what: str) -> int:
    raw = conf.get(key, "").strip()
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"{what}: {key}={raw!r} is not a number") from None
    if n < 0:
        raise ConfigError(f"{what}: {key}={raw!r} must not be negative")
    return n


def parse_s3_config(text: str, *, what: str) -> S3Config:
    """Read a stock S3 configuration file (``KEY=VALUE`` lines, CernVM-FS names).

    Required: ``CVMFS_S3_HOST`` and ``CVMFS_S3_BUCKET``. ``CVMFS_S3_ACCESS_KEY`` and
    ``CVMFS_S3_SECRET_KEY`` may be left out, then ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` from the environment are used (or anonymous access).
    """
    conf = _parse_lines(text, what)
    for key in ("CVMFS_S3_HOST", "CVMFS_S3_BUCKET"):
        if not conf.get(key, "").strip():
            raise ConfigError(f"{what}: {key} is not set")
    flavor = conf.get("CVMFS_S3_FLAVOR", "").strip().lower() or None
    if flavor not in (None, "awsv2", "awsv4"):
        raise ConfigError(f"{what}: CVMFS_S3_FLAVOR={flavor!r} is not supported "
                          "(awsv2 or awsv4)")
    port = conf.get("CVMFS_S3_PORT", "").strip()
    return S3Config(
        host=conf["CVMFS_S3_HOST"].strip(), bucket=conf["CVMFS_S3_BUCKET"].strip(),
        port=_uint(conf, "CVMFS_S3_PORT", 0, what) if port else None,
        access_key=conf.get("CVMFS_S3_ACCESS_KEY") or None,
        secret_key=conf.get("CVMFS_S3_SECRET_KEY") or None,
        region=conf.get("CVMFS_S3_REGION") or None,
        use_https=_is_on(conf.get("CVMFS_S3_USE_HTTPS", "")),
        dns_buckets=conf.get("CVMFS_S3_DNS_BUCKETS", "").strip() != "false",
        max_connections=max(1, _uint(conf, "CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS",
                                     DEFAULT_CONNECTIONS, what)),
        max_retries=_uint(conf, "CVMFS_S3_MAX_RETRIES", DEFAULT_RETRIES, what),
        timeout=max(1, _uint(conf, "CVMFS_S3_TIMEOUT", DEFAULT_TIMEOUT, what)),
        peek_before_put=_is_on(conf.get("CVMFS_S3_PEEK_BEFORE_PUT", "true")),
        acl=conf.get("CVMFS_S3_X_AMZ_ACL") or None,
        proxy=conf.get("CVMFS_S3_PROXY") or None, flavor=flavor)


class S3Storage:
    """An :class:`~pycvmfs.storage.base.ObjectStore` over a bucket (optionally below a key prefix).

    ``relpath`` ``data/4e/27...`` is the key ``<prefix>/data/4e/27...``; the stock S3 uploader
    uses the repository name as prefix, so the repository URL is ``<endpoint>/<bucket>/<fqrn>``
    with path-style addressing. Paths are checked like :class:`LocalStorage` does
    (:class:`~pycvmfs.errors.ConfigError` for ``..``, absolute paths, NUL, backslashes).

    Credentials: ``access_key``/``secret_key``, else ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) from the environment, else anonymous
    (unsigned) requests — never the instance-metadata service. Uploads carry the
    ``Content-Type``/``Cache-Control`` of format doc §1.7; objects over
    ``multipart_threshold`` go up in parts. Failed reads are
    :class:`~pycvmfs.errors.FetchError` / :class:`~pycvmfs.errors.ObjectNotFoundError`, failed
    writes :class:`S3StorageError`, each naming ``s3://bucket/key`` and the endpoint.
    """

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, prefix: str = "",
                 access_key: str | None = None, secret_key: str | None = None,
                 session_token: str | None = None, region: str | None = None,
                 dns_buckets: bool = False, max_connections: int = DEFAULT_CONNECTIONS,
                 max_retries: int = DEFAULT_RETRIES, timeout: float = DEFAULT_TIMEOUT,
                 multipart_threshold: int = MULTIPART_THRESHOLD,
                 multipart_chunksize: int = MULTIPART_CHUNK, acl: str | None = None,
                 proxy: str | None = None, signature_version: str = "s3v4",
                 peek_before_put: bool = True) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore import UNSIGNED
        from botocore.config import Config

        if not bucket or "/" in bucket:
            raise ConfigError(f"{bucket!r} is not a bucket name")
        self.bucket = bucket
        self.prefix = check_relpath(prefix, allow_empty=True)
        self._key0 = self.prefix + "/" if self.prefix else ""
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.acl = acl
        self.peek_before_put = peek_before_put
        self.max_connections = max(1, int(max_connections))
        if access_key is None and secret_key is None:
            access_key = os.environ.get("AWS_ACCESS_KEY_ID") or None
            secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
            session_token = session_token or os.environ.get("AWS_SESSION_TOKEN") or None
        if bool(access_key) != bool(secret_key):
            raise ConfigError(f"s3://{bucket}: give both an access key and a secret key")
        options: dict[str, Any] = dict(
            max_pool_connections=self.max_connections,
            retries={"total_max_attempts": int(max_retries) + 1, "mode": "standard"},
            connect_timeout=timeout, read_timeout=timeout,
            s3={"addressing_style": "virtual" if dns_buckets else "path"},
            # S3-compatible stores (Ceph RGW, older MinIO) reject the newer default checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version=UNSIGNED if not access_key else signature_version)
        if proxy:
            options["proxies"] = {"http": proxy, "https": proxy}
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            aws_session_token=session_token, region_name=region or "us-east-1")
        self._client = session.client("s3", endpoint_url=self.endpoint_url,
                                      config=Config(**options))
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=multipart_chunksize,
                                        max_concurrency=min(self.max_connections, 10),
                                        use_threads=True)
        self._multipart_threshold = multipart_threshold

    @classmethod
    def from_config(cls, config: S3Config, *, prefix: str = "", **kw: Any) -> S3Storage:
        """A storage from stock ``CVMFS_S3_*`` settings; ``kw`` overrides constructor options
        (``bucket=`` too)."""
        bucket = kw.pop("bucket", config.bucket)
        opts: dict[str, Any] = dict(
            endpoint_url=config.endpoint_url, prefix=prefix, access_key=config.access_key,
            secret_key=config.secret_key, region=config.region, dns_buckets=config.dns_buckets,
            max_connections=config.max_connections, max_retries=config.max_retries,
            timeout=config.timeout, acl=config.acl, proxy=config.proxy,
            signature_version="s3" if config.flavor == "awsv2" else "s3v4",
            peek_before_put=config.peek_before_put)
        opts.update(kw)
        return cls(bucket, **opts)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str], *, prefix: str = "",
                         **kw: Any) -> S3Storage:
        """A storage from a stock ``s3.conf`` file (see :func:`parse_s3_config`)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the S3 configuration ({e.strerror})") from None
        return cls.from_config(parse_s3_config(text, what=str(p)), prefix=prefix, **kw)

    def __repr__(self) -> str:
        return f"S3Storage({self.describe()!r}, endpoint={self.endpoint_url!r})"

    def __enter__(self) -> S3Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- names -------------------------------------------------------------------------------

    def key(self, relpath: str) -> str:
        """The object key of ``relpath`` (checked like LocalStorage paths)."""
        return self._key0 + check_relpath(relpath)

    def describe(self, relpath: str = "") -> str:
        rel = check_relpath(relpath, allow_empty=True)
        key = self._key0 + rel if rel else self.prefix
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _where(self, relpath: str) -> str:
        return self.describe(relpath) + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    # -- Source ------------------------------------------------------------------------------

    def fetch(self, relpath: str, consume: Consumer[T], *, what: str, fresh: bool = False) -> T:
        """Stream the object in blocks of at most ``BLOCK_SIZE`` bytes into ``consume``.

        ``fresh`` has no meaning here (no caches between us and the bucket)."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(relpath)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFoundError(what, [f"{self._where(relpath)}: no such key"]) from e
            raise FetchError(what, [f"{self._where(relpath)}: {_explain(e)}"]) from e
        except BotoCoreError as e:
            raise FetchError(what, [f"{self._where(relpath)}: {e}"]) from e
        body = resp["Body"]
        try:
            return consume(_blocks(body, self._where(relpath), what))
        finally:
            body.close()

    def close(self) -> None:
        self._client.close()

    # -- ObjectStore -------------------------------------------------------------------------

    def exists(self, relpath: str) -> bool:
        """Whether the key exists (a HEAD request); other failures are a FetchError."""
        return self.size(relpath) is not None

    def size(self, relpath: str) -> int | None:
        """The stored size of ``relpath`` in bytes, or None when it does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self.key(relpath))
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                return None
            raise FetchError(self.describe(relpath),
                             [f"{self._where(relpath)}: {_explain(e)}"]) from e
        except BotoCoreError as e:
            raise FetchError(self.describe(relpath), [f"{self._where(relpath)}: {e}"]) from e
        return int(resp["ContentLength"])

    def put_bytes(self, relpath: str, data: bytes) -> None:
        """Store ``data`` (one PUT; S3 replaces an object atomically)."""
        if len(data) >= self._multipart_threshold:
            self.put_file(relpath, io.BytesIO(data))
            return
        key = self.key(relpath)
        ctype, cache = headers_for(key[len(self._key0):])
        extra = {"ACL": self.acl} if self.acl else {}
        self._call("upload", relpath, self._client.put_object, Bucket=self.bucket, Key=key,
                   Body=data, ContentType=ctype, CacheControl=cache, **extra)

    def put_file(self, relpath: str, src: BinaryIO) -> None:
        """Store a stream; large ones as a multipart upload (completed atomically)."""
        key = self.key(relpath)
        ctype, cache = headers_for(key[len(self._key0):])
        extra = {"ContentType": ctype, "CacheControl": cache}
        if self.acl:
            extra["ACL"] = self.acl
        self._call("upload", relpath, self._client.upload_fileobj, src, self.bucket, key,
                   ExtraArgs=extra, Config=self._transfer)

    def upload_path(self, relpath: str, path: str | os.PathLike[str]) -> None:
        """Store a local file (single PUT or multipart by size)."""
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < self._multipart_threshold:
                self.put_bytes(relpath, f.read())
            else:
                self.put_file(relpath, f)

    def delete(self, relpath: str) -> None:
        """Remove the object; a missing key is not an error."""
        self._call("delete", relpath, self._client.delete_object, Bucket=self.bucket,
                   Key=self.key(relpath))

    def delete_many(self, relpaths: list[str]) -> None:
        """Remove many objects with multi-object DELETE requests (1000 keys each)."""
        for start in range(0, len(relpaths), 1000):
            batch = relpaths[start:start + 1000]
            resp = self._call("delete", batch[0], self._client.delete_objects,
                              Bucket=self.bucket, Delete={
                                  "Objects": [{"Key": self.key(r)} for r in batch],
                                  "Quiet": True})
            errors = [e for e in resp.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
            if errors:
                e = errors[0]
                raise S3StorageError(f"s3://{self.bucket}/{e.get('Key')}",
                                     f"delete failed: {e.get('Code')} {e.get('Message', '')}"
                                     f" ({len(errors)} keys not deleted)")

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative paths of the objects whose path starts with ``prefix`` (a string prefix,
        as in :meth:`LocalStorage.list`), in key order; ``data/txn`` is skipped unless asked."""
        from botocore.exceptions import BotoCoreError, ClientError

        pre = check_relpath(prefix, allow_empty=True)
        if prefix.endswith("/") and pre:
            pre += "/"
        skip_txn = not pre.startswith(TXN_DIR)
        paginator = self._client.get_paginator("list_objects_v2")
        n0 = len(self._key0)
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key0 + pre):
                for item in page.get("Contents", ()):
                    rel = item["Key"][n0:]
                    if skip_txn and rel.startswith(TXN_DIR + "/"):
                        continue
                    yield rel
        except ClientError as e:
            raise S3StorageError(self._where(pre), f"listing failed: {_explain(e)}") from e
        except BotoCoreError as e:
            raise S3StorageError(self._where(pre), f"listing failed: {e}") from e

    def _call(self, verb: str, relpath: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kw)
        except ClientError as e:
            raise S3StorageError(self._where(relpath), f"{verb} failed: {_explain(e)}") from e
        except (BotoCoreError, S3UploadFailedError) as e:
            raise S3StorageError(self._where(relpath), f"{verb} failed: {e}") from e


def _code(e: Any) -> str:
    err = e.response.get("Error", {})
    return str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _explain(e: Any) -> str:
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = err.get("Code") or "error"
    msg = err.get("Message") or ""
    hint = ""
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
        hint = " (check CVMFS_S3_ACCESS_KEY / CVMFS_S3_SECRET_KEY and the bucket policy)"
    elif code == "NoSuchBucket":
        hint = " (check CVMFS_S3_BUCKET)"
    return f"HTTP {status} {code}" + (f": {msg}" if msg else "") + hint


def _blocks(body: Any, where: str, what: str) -> Iterator[bytes]:
    """The response body in blocks; a broken transfer becomes a FetchError naming the key."""
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    while True:
        try:
            block = body.read(BLOCK_SIZE)
        except (BotoCoreError, HTTPError, OSError) as e:
            raise FetchError(what, [f"{where}: transfer broken: {e}"]) from e
        if not block:
            return
        yield block
