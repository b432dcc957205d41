"""Model sources: turn what the user passes as ``--model`` into a local SavedModel directory or
``.tflite`` file, plus a SHA-256 digest of its content.

``resolve_model(source, cache)`` dispatches on the form of ``source``, first match wins:

1. ``kaggle:OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]``: a Kaggle model, fetched by
   ``kagglehub.model_download`` into kagglehub's own cache (``KAGGLEHUB_CACHE``, else
   ``~/.cache/kagglehub``), where it must find a SavedModel as in 6. With an explicit VERSION
   already in that cache, no network is used.
2. ``s3://BUCKET/KEY.tflite``: one LiteRT model, cached as ``cache/s3/BUCKET/KEY``.
   ``s3://BUCKET/PREFIX``: a SavedModel folder, every object under PREFIX copied to
   ``cache/models/s3/<sha256(url)[:16]>/``.
3. ``http(s)://…`` whose path ends ``.tar.gz`` or ``.tgz``: a TF2 Detection Zoo tarball, downloaded
   to ``cache/models/downloads/<sha256(url)[:16]>.tar.gz`` and handled as in 6.
4. ``https://tfhub.dev/…`` or ``https://www.kaggle.com/models/…``: a TF Hub handle, cached as the
   ``tensorflow_hub`` library does, in ``<TFHUB_CACHE_DIR, else cache/tfhub>/<sha1(handle)>/``,
   filled from ``<handle>?tf-hub-format=compressed`` unless that folder exists (then no network).
5. Any other ``scheme://``: refused.
6. A local path: a directory is a SavedModel (holding ``saved_model.pb``, or a ``saved_model/``
   folder that does, as in the zoo layout ``NAME/saved_model/``), used in place; a ``.tflite`` file
   is a float LiteRT model (conversion is then skipped), used in place; a ``.tar.gz``/``.tgz`` file
   is extracted to ``cache/models/tar/<sha256(tarball)[:16]>/`` (one top-level folder in it is
   descended into).

Remote content at a URL is taken as immutable: once cached it is not fetched again (delete the
cache folder to refresh it). Everything is cached atomically (written under a temporary name
beside its final one, then renamed), so an interrupted download is never taken as complete.
Anything else raises ``QuantbenchError`` naming the source; URLs in messages lose their query
and user info, which may hold credentials.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from tasks.store.errors import QuantbenchError
from tasks.model.variants import directory_digest
from tasks.store.object_store import open_store, split_url

TARBALL_SUFFIXES = (".tar.gz", ".tgz")
HUB_PREFIXES = ("https://tfhub.dev/", "https://www.kaggle.com/models/")
FORMS = ("a SavedModel directory, a .tflite file, a .tar.gz/.tgz zoo tarball (path or http(s) URL), "
         "s3://BUCKET/PREFIX, s3://BUCKET/KEY.tflite, kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION "
         "or a https://tfhub.dev/ handle")
CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # what the user gave, verbatim
    kind: Literal["saved_model", "tflite"]
    path: Path  # local SavedModel directory, or local .tflite file (absolute)
    digest: str  # SHA-256 hex: directory_digest of the SavedModel, or of the .tflite file's bytes


def resolve_model(source: str, cache: Path) -> ResolvedModel:
    """A local copy of the model ``source`` names (see the module docstring), cached under ``cache``."""
    cache = Path(cache).absolute()
    if source.startswith("kaggle:"):
        return _from_kaggle(source)
    if source.startswith("s3://"):
        return _from_s3_tflite(source, cache) if source.endswith(".tflite") else _from_s3_folder(source, cache)
    if source.startswith(("http://", "https://")) and urlsplit(source).path.endswith(TARBALL_SUFFIXES):
        return _from_tarball_url(source, cache)
    if source.startswith(HUB_PREFIXES):
        return _from_hub(source, cache)
    if "://" in source:
        raise QuantbenchError(f"unsupported model source {shown(source)}: pass {FORMS}")
    return _from_local_path(source, cache)


def _from_local_path(source: str, cache: Path) -> ResolvedModel:
    """A SavedModel directory or ``.tflite`` file used in place, or a local tarball extracted into the cache."""
    path = Path(source).absolute()
    if path.is_dir():
        return _saved_model(source, path)
    if path.is_file() and path.name.endswith(".tflite"):
        return _tflite(source, path)
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return _from_tarball(source, path, cache)
    if not path.exists():
        raise QuantbenchError(f"model not found: {source} (pass {FORMS})")
    raise QuantbenchError(f"unsupported model file {source}: pass {FORMS}")


def _from_s3_tflite(source: str, cache: Path) -> ResolvedModel:
    """``s3://BUCKET/KEY.tflite``, cached as ``cache/s3/BUCKET/KEY`` by the store."""
    store, key = split_url(source)
    return _tflite(source, store.local_path(key, cache))


def _from_s3_folder(source: str, cache: Path) -> ResolvedModel:
    """Every object under ``s3://BUCKET/PREFIX``, copied to ``cache/models/s3/<sha256(url)[:16]>/``."""
    target = cache / "models" / "s3" / _url_key(source)
    if not target.is_dir():
        store = open_store(source)
        keys = [key for key in store.list_keys() if not key.endswith("/")]  # "key/": folder placeholders
        if not keys:
            raise QuantbenchError(f"no objects under {source}: pass the S3 prefix of a SavedModel folder, or {FORMS}")
        with _partial_dir(target) as partial:
            for key in keys:
                file = (partial / key).resolve()
                if not file.is_relative_to(partial.resolve()):
                    raise QuantbenchError(f"{source}: object key {key!r} points outside its folder")
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(store.read_bytes(key))
            _require_saved_model(source, partial)
    return _saved_model(source, target)


def _from_tarball_url(source: str, cache: Path) -> ResolvedModel:
    """Download to ``cache/models/downloads/<sha256(url)[:16]>.tar.gz`` once, then extract as a local tarball."""
    archive = cache / "models" / "downloads" / f"{_url_key(source)}.tar.gz"
    if not archive.is_file():
        _download(source, archive)
    return _from_tarball(source, archive, cache)


def _from_tarball(source: str, archive: Path, cache: Path) -> ResolvedModel:
    """Extract ``archive`` to ``cache/models/tar/<sha256(archive)[:16]>/`` once; find the SavedModel in it
    or in its only top-level folder (zoo layout ``NAME/saved_model/``)."""
    root = cache / "models" / "tar" / _file_sha256(archive)[:16]
    if not root.is_dir():
        _extract(source, archive, root)
    return _saved_model(source, _archive_top(root))


def _from_hub(source: str, cache: Path) -> ResolvedModel:
    """A TF Hub handle, in ``<TFHUB_CACHE_DIR or cache/tfhub>/<sha1(handle)>/`` as ``tensorflow_hub`` keeps it."""
    module_dir = Path(os.environ.get("TFHUB_CACHE_DIR") or cache / "tfhub") / hashlib.sha1(source.encode("utf8")).hexdigest()
    if not module_dir.is_dir():
        module_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=module_dir.parent, prefix=f".{module_dir.name}.") as download:
            archive = Path(download) / "module.tar.gz"
            _download(f"{source}{'&' if '?' in source else '?'}tf-hub-format=compressed", archive)
            _extract(source, archive, module_dir)
    return _saved_model(source, module_dir)


def _from_kaggle(source: str) -> ResolvedModel:
    """``kaggle:HANDLE`` through ``kagglehub.model_download`` and its cache (``KAGGLEHUB_CACHE``)."""
    handle = source.removeprefix("kaggle:")
    try:
        import kagglehub

        folder = Path(kagglehub.model_download(handle))
    except Exception as error:  # kagglehub raises ValueError, requests and its own errors alike
        raise QuantbenchError(
            f"cannot get Kaggle model {handle}: {_one_line(error)} "
            "(pass kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION of a TensorFlow 2 model; offline, only a "
            "versioned handle already in KAGGLEHUB_CACHE works)"
        ) from None
    return _saved_model(source, folder)


def _saved_model(source: str, folder: Path) -> ResolvedModel:
    model_dir = _require_saved_model(source, folder)
    return ResolvedModel(source, "saved_model", model_dir, directory_digest(model_dir))


def _tflite(source: str, file: Path) -> ResolvedModel:
    return ResolvedModel(source, "tflite", file, _file_sha256(file))


def _require_saved_model(source: str, folder: Path) -> Path:
    """``folder`` if it holds ``saved_model.pb``, else its ``saved_model/`` subfolder if that does."""
    for candidate in (folder, folder / "saved_model"):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise QuantbenchError(
        f"no TensorFlow SavedModel in {shown(source)}: no saved_model.pb in it nor in a saved_model/ folder (pass {FORMS})"
    )


def _download(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` through a temporary file beside it, renamed once complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as partial, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, partial, CHUNK)
        os.replace(name, target)
    except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
        raise QuantbenchError(f"cannot download {shown(url)}: {_one_line(error)}") from None
    finally:
        Path(name).unlink(missing_ok=True)


def _extract(source: str, archive: Path, target: Path) -> None:
    """Extract ``archive`` into the new folder ``target``, atomically.

    ``filter="data"`` refuses members that would land outside ``target`` (``../x``, absolute paths,
    links pointing out) and special files."""
    try:
        with _partial_dir(target) as partial, tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise QuantbenchError(f"cannot extract {shown(source)} as a .tar.gz archive: {_one_line(error)}") from None


def _archive_top(root: Path) -> Path:
    """The only entry of ``root`` if that is a folder, else ``root``."""
    entries = list(root.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


@contextlib.contextmanager
def _partial_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed to ``target`` if the block completes, else removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield partial
        try:
            partial.rename(target)
        except OSError:  # another process completed it first: keep theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def shown(source: str) -> str:
    """``source`` fit for a message: a URL loses its user info, query and fragment (they may hold credentials)."""
    parts = urlsplit(source)
    if not parts.netloc:
        return source
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
