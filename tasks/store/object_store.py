"""Object store: one small interface over a local folder (``file://``) and S3 (``s3://``).

Keys are ``/``-separated paths relative to the store's root URL. The embedded default is a local
folder; ``s3://bucket/prefix`` goes through boto3 with its standard credential chain. For
S3-compatible servers (MinIO, SeaweedFS, R2) set ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``): boto3 reads it itself, and path-style addressing is then used.

Writes are atomic: a reader never sees a partial object under its final key (a local write goes
to a temporary file that is renamed into place; an S3 PUT is atomic by itself).

URLs: a local store's URLs are proper ``file://`` URIs (spaces and non-ASCII characters
percent-encoded, decoded again by :func:`open_store` and :func:`split_url`); S3 URLs carry keys
verbatim, as the AWS CLI writes them.

Containment: a key names an object *inside* the store. One that is absolute, has a ``..`` part,
or (local stores) resolves outside the store's folder through a symbolic link raises
:class:`UnsafeKeyError` before anything is read or written — keys come from untrusted input too
(an annotations file's ``file_name``), and must not reach the worker's other files.

Errors: a missing object raises :class:`NotFoundError`; what may pass by itself (endpoint
unreachable, timeouts, 5xx, throttling) raises :class:`TransientError`, which tasks retry; anything
else (no such bucket, access denied, no credentials) a plain :class:`QuantbenchError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from tasks.store.errors import NotFoundError, QuantbenchError, TransientError, UnsafeKeyError

MULTIPART_BYTES = 8 * 1024 * 1024  # objects above this are uploaded in parts of this size


def cache_dir() -> Path:
    """Local cache for objects fetched from remote stores (``QUANTBENCH_CACHE``, else ~/.cache/quantbench)."""
    return Path(os.environ.get("QUANTBENCH_CACHE", Path.home() / ".cache" / "quantbench"))
# S3 error codes that may pass by themselves (besides any 5xx and 429).
TRANSIENT_S3_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                      "ThrottlingException", "TooManyRequests", "RequestLimitExceeded")


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Store(ABC):
    """Bytes under keys, below a root URL."""

    url: str

    def containment(self, key: str) -> None:
        """Raise UnsafeKeyError unless ``key`` names an object inside this store (nothing is read)."""
        check_key(key)

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically; return the object's URL."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the object under ``key``; raise QuantbenchError naming its URL if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes, read without its content; NotFoundError if absent."""

    @abstractmethod
    def local_path(self, key: str, cache_dir: Path) -> Path:
        """A local file holding the object (the object itself when the store is local)."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys of every object under ``prefix`` (a folder-like prefix, ``a/b``), sorted."""

    @abstractmethod
    def fingerprints(self, keys: list[str]) -> dict[str, str]:
        """``{key: fingerprint}`` of those ``keys`` that exist: what changes when the content does.

        Local files: ``sha256:<hex>`` of the content (hashing is cheap next to decoding the image
        for inference). S3: ``etag:<ETag>-<size>`` from one listing of the store (no object is
        downloaded; a single-part upload's ETag is the MD5 of its content)."""

    @abstractmethod
    def versions(self, prefix: str = "") -> dict[str, str]:
        """``{key: version}`` of every object under ``prefix``, from one listing (no content read):
        a token that changes when the object is rewritten. Local: ``<mtime ns>-<size>``; S3:
        ``<ETag>-<size>``. For caches of what was read from the store."""

    @abstractmethod
    def folders(self, prefix: str = "") -> list[str]:
        """Names of the folder-like prefixes directly under ``prefix`` (``runs`` -> run ids), sorted:
        one listing call per 1,000 names on S3 (a delimiter listing), whatever each holds."""

    @abstractmethod
    def check_readable(self) -> None:
        """Fail fast, with one line (QuantbenchError), unless the store exists and can be listed."""

    @abstractmethod
    def check_writable(self) -> None:
        """Fail fast, with one line, unless the store exists (bucket), is reachable and writable.

        Raises QuantbenchError (never TransientError): this runs before a benchmark starts, where
        an unreachable store is a setting to fix, not an outage to ride out."""

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def write_json(self, key: str, value: Any, indent: int | None = None) -> str:
        return self.write_bytes(key, json.dumps(value, indent=indent).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))


def check_key(key: str) -> str:
    """``key`` if it is a relative, ``/``-separated path without ``..`` parts; else UnsafeKeyError."""
    if key.startswith("/") or ".." in key.split("/") or "\0" in key:
        raise UnsafeKeyError(f"{key!r} is not a path inside the store (absolute, or with a '..' part)")
    return key


class LocalStore(Store):
    """A folder on the local file system."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def containment(self, key: str) -> None:
        self._path(key)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise UnsafeKeyError(f"{key!r} resolves outside the store {self.root} (a symbolic link out of it)")
        return path

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{quote(key)}"

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as partial:
            partial.write(data)
        os.replace(partial.name, path)
        return self.url_for(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"not found: {self.url_for(key)}") from None
        except IsADirectoryError:
            raise QuantbenchError(f"{self._path(key)} is a directory, not a file") from None
        except PermissionError:
            raise QuantbenchError(f"cannot read {self._path(key)}: permission denied") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        if not self.exists(key):
            raise NotFoundError(f"not found: {self.url_for(key)}")
        return self._path(key).stat().st_size

    def local_path(self, key: str, cache_dir: Path) -> Path:
        if not self.exists(key):
            raise NotFoundError(f"not found: {self.url_for(key)}")
        return self._path(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.strip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def fingerprints(self, keys: list[str]) -> dict[str, str]:
        return {key: f"sha256:{file_sha256(self._path(key))}" for key in keys if self._path(key).is_file()}

    def versions(self, prefix: str = "") -> dict[str, str]:
        base = self._path(prefix.strip("/")) if prefix.strip("/") else self.root
        found: dict[str, str] = {}
        folders = [base] if base.is_dir() else []
        while folders:  # symbolic links are not followed: a key never leaves the store
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found[Path(entry.path).relative_to(self.root).as_posix()] = f"{stat.st_mtime_ns}-{stat.st_size}"
        return found

    def folders(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.strip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        with os.scandir(base) as entries:  # symbolic links are not followed
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))

    def check_readable(self) -> None:
        if not self.root.is_dir():
            raise QuantbenchError(f"store {self.root} does not exist (run a benchmark into it first, or fix --store)")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise QuantbenchError(f"store {self.root} cannot be read: permission denied")

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".quantbench-write-check."):
                pass
        except OSError as error:
            raise QuantbenchError(f"store {self.root} is not writable: {error.strerror or error}") from None


class S3Store(Store):
    """A prefix in an S3 bucket, through boto3 (credentials from the standard chain)."""

    def __init__(self, bucket: str, prefix: str):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        addressing = {"addressing_style": "path"} if custom_endpoint else {}
        # A session per store: credentials are resolved now, not cached from an earlier store.
        self._session = session = boto3.session.Session()
        # SigV4 for presigned URLs too (botocore would presign with the deprecated SigV2 in us-east-1).
        self.client = session.client("s3", config=Config(s3=addressing, retries={"mode": "standard"}, signature_version="s3v4"))
        # For the up-front check only: an unreachable endpoint must fail in seconds, not minutes.
        self._probe = session.client("s3", config=Config(s3=addressing, connect_timeout=3, read_timeout=5,
                                                          retries={"mode": "standard", "max_attempts": 2}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, key: str, error: Exception) -> QuantbenchError:
        """One line naming the object's URL (and the endpoint), never the credentials."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError, ParamValidationError

        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return QuantbenchError(f"bucket does not exist: s3://{self.bucket} (create it, or fix --store)")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return QuantbenchError(f"access denied to {self.url_for(key)}: check the AWS credentials")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(f"not found: {self.url_for(key)}")
            if status >= 500 or status == 429 or code in TRANSIENT_S3_CODES:
                return TransientError(f"S3 error {code or status} on {self.url_for(key)} (will retry)")
            return QuantbenchError(f"S3 error {code} on {self.url_for(key)}")
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return QuantbenchError(f"no AWS credentials for {self.url_for(key)}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        if isinstance(error, ParamValidationError):
            return QuantbenchError(f"invalid S3 request for {self.url_for(key)}: {error}")
        return TransientError(f"cannot reach S3 at {self.client.meta.endpoint_url} for {self.url_for(key)}: {type(error).__name__}")

    def write_bytes(self, key: str, data: bytes) -> str:
        """One PUT, or a multipart upload above 8 MB (boto3's transfer manager); atomic either way."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key),
                                       Config=TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES))
        except (BotoCoreError, ClientError) as error:
            raise self._error(key, error) from None
        except Exception as error:  # the transfer manager wraps client errors in S3UploadFailedError
            cause = error.__cause__ or error.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                raise self._error(key, cause) from None
            raise
        return self.url_for(key)

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise self._error(key, error) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(key, error) from None
        except BotoCoreError as error:
            raise self._error(key, error) from None

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except (BotoCoreError, ClientError) as error:
            raise self._error(key, error) from None

    def _listing(self, prefix: str) -> list[dict]:
        """``list_objects_v2`` entries under a folder-like ``prefix``, keys relative to the store."""
        from botocore.exceptions import BotoCoreError, ClientError

        folder = self._key(prefix.strip("/")).rstrip("/")
        folder = f"{folder}/" if folder else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0
        entries = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                entries += [{**item, "Key": item["Key"][strip:]} for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as error:
            raise self._error(prefix, error) from None
        return entries

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(item["Key"] for item in self._listing(prefix))

    def fingerprints(self, keys: list[str]) -> dict[str, str]:
        wanted = set(keys)
        return {item["Key"]: f"etag:{item['ETag'].strip(chr(34))}-{item['Size']}" for item in self._listing("") if item["Key"] in wanted}

    def versions(self, prefix: str = "") -> dict[str, str]:
        return {item["Key"]: f"{item['ETag'].strip(chr(34))}-{item['Size']}" for item in self._listing(prefix)}

    def folders(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        folder = self._key(prefix.strip("/")).rstrip("/")
        folder = f"{folder}/" if folder else ""
        names = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                names += [item["Prefix"][len(folder):].rstrip("/") for item in page.get("CommonPrefixes", [])]
        except (BotoCoreError, ClientError) as error:
            raise self._error(prefix, error) from None
        return sorted(name for name in names if name and not name.startswith("."))

    @contextlib.contextmanager
    def _up_front(self, key: str, fix: str):
        """An up-front check's S3 errors as one QuantbenchError line (never TransientError): a missing
        bucket (with ``fix``), access denied, an unreachable endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise QuantbenchError(f"bucket does not exist: s3://{self.bucket} ({fix})") from None
            raise QuantbenchError(str(self._error(key, error)).removesuffix(" (will retry)")) from None
        except BotoCoreError as error:
            raise QuantbenchError(f"cannot reach S3 at {self.client.meta.endpoint_url} for {self.url}: {type(error).__name__} "
                                  "(check AWS_ENDPOINT_URL and the network)") from None

    def check_readable(self) -> None:
        """``head_bucket`` and one listing call, through the quick-failing client."""
        with self._up_front("", f"fix --store {self.url}"):
            self._probe.head_bucket(Bucket=self.bucket)
            self._probe.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)

    def check_writable(self) -> None:
        """``head_bucket`` (a missing bucket fails even where a PUT would create it), then a probe write."""
        from botocore.exceptions import BotoCoreError, ClientError

        probe = self._key(".quantbench-write-check")
        with self._up_front(".quantbench-write-check", f"create it, or fix --store {self.url}"):
            self._probe.head_bucket(Bucket=self.bucket)
            self._probe.put_object(Bucket=self.bucket, Key=probe, Body=secrets.token_hex(8).encode())
        with contextlib.suppress(BotoCoreError, ClientError):  # a write-only policy may forbid deleting
            self._probe.delete_object(Bucket=self.bucket, Key=probe)

    def presigned_get(self, key: str, expiry_s: int, content_type: str) -> str:
        """A GET URL of the object that needs no credentials for ``expiry_s`` seconds (SigV4, at most
        604800), answered with ``Content-Type: content_type``. It carries the access key id and a
        signature, never the secret key; nothing is sent to S3 to make it."""
        from botocore.exceptions import BotoCoreError, ClientError

        params = {"Bucket": self.bucket, "Key": self._key(check_key(key)), "ResponseContentType": content_type}
        try:
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expiry_s)
        except (BotoCoreError, ClientError) as error:
            raise self._error(key, error) from None

    def temporary_credentials(self) -> bool:
        """Whether the store signs with temporary credentials (a session token: STS, SSO, IRSA), which
        end presigned URLs when they expire themselves, possibly before the URLs' own expiry."""
        credentials = self._session.get_credentials()
        return bool(credentials and credentials.get_frozen_credentials().token)

    def local_path(self, key: str, cache_dir: Path) -> Path:
        target = Path(cache_dir) / "s3" / self.bucket / self._key(check_key(key))
        if not target.is_file():
            data = self.read_bytes(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            # A temporary file of its own per download: parallel shards may fetch the same model at once.
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False) as partial:
                partial.write(data)
            os.replace(partial.name, target)
        return target


def open_store(url: str) -> Store:
    """Open ``file:///abs/dir``, a plain local path, or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise QuantbenchError(f"store URL {url!r} names no bucket: use s3://BUCKET/PREFIX")
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "":
        return LocalStore(Path(url))
    raise QuantbenchError(f"unsupported store URL {url!r}: use a local path, file:///path or s3://bucket/prefix")


def split_url(url: str) -> tuple[Store, str]:
    """Split the URL of one object into (store of its folder, key), e.g. for an annotations file."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if not name:
        raise QuantbenchError(f"{url!r} does not name a file")
    return open_store(parent or "."), unquote(name) if url.startswith("file:") else name
