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

**Pinning.** A SavedModel is a program (its graph runs when TensorFlow loads or calls it), so
``resolve_model(source, cache, sha256)`` checks the model against ``sha256``, the digest the user
expects (``ResolvedModel.digest``, as report.json's ``model.digest`` and ``quantbench digest``
show it), before returning it: nothing downstream loads a model that does not match. A fresh
download or extraction is checked before it is renamed into the cache, so a mismatching one is
never cached; a cached copy that mismatches (fetched earlier unpinned, or changed since) is
deleted, so the next run fetches afresh. A plain ``http://`` source must be pinned, and an
unpinned ``https://`` download does not follow a redirect to plain ``http://``.

**Size caps.** A download stops past ``QUANTBENCH_MAX_DOWNLOAD_BYTES`` (default 4 GiB) and a
tarball whose regular files add up to more than ``QUANTBENCH_MAX_EXTRACT_BYTES`` (default 8 GiB)
is refused before anything is extracted; nothing partial is kept.
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
from dataclasses import dataclass, replace
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
GIB = 1 << 30
# name of the environment variable → its default, in bytes
DOWNLOAD_CAP = ("QUANTBENCH_MAX_DOWNLOAD_BYTES", 4 * GIB)
EXTRACT_CAP = ("QUANTBENCH_MAX_EXTRACT_BYTES", 8 * GIB)


class PinMismatch(QuantbenchError):
    """The model's digest is not the one the user pinned: the model is not used (nor cached)."""


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # what the user gave, verbatim
    kind: Literal["saved_model", "tflite"]
    path: Path  # local SavedModel directory, or local .tflite file (absolute)
    digest: str  # SHA-256 hex: directory_digest of the SavedModel, or of the .tflite file's bytes


def resolve_model(source: str, cache: Path, sha256: str = "") -> ResolvedModel:
    """A local copy of the model ``source`` names (see the module docstring), cached under ``cache``.

    ``sha256``: the pinned digest (64 lowercase hex; empty: none); a model with another digest
    raises :class:`PinMismatch` before anything can load it."""
    cache = Path(cache).absolute()
    if source.startswith("kaggle:"):
        return _from_kaggle(source, sha256)
    if source.startswith("s3://"):
        return _from_s3_tflite(source, cache, sha256) if source.endswith(".tflite") else _from_s3_folder(source, cache, sha256)
    if source.startswith(("http://", "https://")) and urlsplit(source).path.endswith(TARBALL_SUFFIXES):
        if source.startswith("http://") and not sha256:
            raise QuantbenchError(f"model source {shown(source)} is plain http: pass --model-sha256 to pin it (or use https)")
        return _from_tarball_url(source, cache, sha256)
    if source.startswith(HUB_PREFIXES):
        return _from_hub(source, cache, sha256)
    if "://" in source:
        raise QuantbenchError(f"unsupported model source {shown(source)}: pass {FORMS}")
    return _from_local_path(source, cache, sha256)


def _from_local_path(source: str, cache: Path, pin: str) -> ResolvedModel:
    """A SavedModel directory or ``.tflite`` file used in place, or a local tarball extracted into the cache."""
    path = Path(source).absolute()
    if path.is_dir():
        return _saved_model(source, path, pin)
    if path.is_file() and path.name.endswith(".tflite"):
        return _tflite(source, path, pin)
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return _from_tarball(source, path, cache, pin)
    if not path.exists():
        raise QuantbenchError(f"model not found: {source} (pass {FORMS})")
    raise QuantbenchError(f"unsupported model file {source}: pass {FORMS}")


def _from_s3_tflite(source: str, cache: Path, pin: str) -> ResolvedModel:
    """``s3://BUCKET/KEY.tflite``, cached as ``cache/s3/BUCKET/KEY`` by the store."""
    store, key = split_url(source)
    file = store.local_path(key, cache)
    with _deleted_on_mismatch(file):
        return _tflite(source, file, pin)


def _from_s3_folder(source: str, cache: Path, pin: str) -> ResolvedModel:
    """Every object under ``s3://BUCKET/PREFIX``, copied to ``cache/models/s3/<sha256(url)[:16]>/``."""
    target = cache / "models" / "s3" / _url_key(source)
    if target.is_dir():
        with _deleted_on_mismatch(target):
            return _saved_model(source, target, pin)
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
        resolved = _saved_model(source, partial, pin)
    return _moved(resolved, partial, target)


def _from_tarball_url(source: str, cache: Path, pin: str) -> ResolvedModel:
    """Download to ``cache/models/downloads/<sha256(url)[:16]>.tar.gz`` once, then extract as a local
    tarball; a fresh download is renamed into place only once its model matched ``pin``."""
    archive = cache / "models" / "downloads" / f"{_url_key(source)}.tar.gz"
    if archive.is_file():
        with _deleted_on_mismatch(archive):
            return _from_tarball(source, archive, cache, pin)
    with _partial_file(archive) as partial:
        _download(source, partial, pinned=bool(pin))
        return _from_tarball(source, partial, cache, pin)


def _from_tarball(source: str, archive: Path, cache: Path, pin: str) -> ResolvedModel:
    """Extract ``archive`` to ``cache/models/tar/<sha256(archive)[:16]>/`` once; find the SavedModel in it
    or in its only top-level folder (zoo layout ``NAME/saved_model/``)."""
    root = cache / "models" / "tar" / _file_sha256(archive)[:16]
    if root.is_dir():
        with _deleted_on_mismatch(root):
            return _saved_model(source, _archive_top(root), pin)
    with _partial_dir(root) as partial:
        _extract(source, archive, partial)
        resolved = _saved_model(source, _archive_top(partial), pin)
    return _moved(resolved, partial, root)


def _from_hub(source: str, cache: Path, pin: str) -> ResolvedModel:
    """A TF Hub handle, in ``<TFHUB_CACHE_DIR or cache/tfhub>/<sha1(handle)>/`` as ``tensorflow_hub`` keeps it."""
    module_dir = Path(os.environ.get("TFHUB_CACHE_DIR") or cache / "tfhub") / hashlib.sha1(source.encode("utf8")).hexdigest()
    if module_dir.is_dir():
        with _deleted_on_mismatch(module_dir):
            return _saved_model(source, module_dir, pin)
    module_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=module_dir.parent, prefix=f".{module_dir.name}.") as download, \
            _partial_dir(module_dir) as partial:
        archive = Path(download) / "module.tar.gz"
        _download(f"{source}{'&' if '?' in source else '?'}tf-hub-format=compressed", archive, pinned=bool(pin))
        _extract(source, archive, partial)
        resolved = _saved_model(source, partial, pin)
    return _moved(resolved, partial, module_dir)


def _from_kaggle(source: str, pin: str) -> ResolvedModel:
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
    return _saved_model(source, folder, pin)  # kagglehub's cache is its own: left as it is


def _saved_model(source: str, folder: Path, pin: str) -> ResolvedModel:
    model_dir = _require_saved_model(source, folder)
    return _pinned(ResolvedModel(source, "saved_model", model_dir, directory_digest(model_dir)), pin)


def _tflite(source: str, file: Path, pin: str) -> ResolvedModel:
    return _pinned(ResolvedModel(source, "tflite", file, _file_sha256(file)), pin)


def _pinned(model: ResolvedModel, pin: str) -> ResolvedModel:
    """``model`` if no ``pin`` or its digest is ``pin``; else :class:`PinMismatch`."""
    if pin and model.digest != pin:
        raise PinMismatch(
            f"model {shown(model.source)} does not match --model-sha256: expected {pin}, got {model.digest}; "
            "nothing was loaded or run (check the source, or pin the digest 'quantbench digest --model' prints for a model you trust)"
        )
    return model


def _moved(model: ResolvedModel, partial: Path, target: Path) -> ResolvedModel:
    """``model``, found in the folder ``partial``, as it is once ``partial`` is renamed ``target``."""
    return replace(model, path=target / model.path.relative_to(partial))


@contextlib.contextmanager
def _deleted_on_mismatch(cached: Path) -> Iterator[None]:
    """Delete the cached file or folder ``cached`` if the block raises :class:`PinMismatch`."""
    try:
        yield
    except PinMismatch:
        if cached.is_dir():
            shutil.rmtree(cached, ignore_errors=True)
        else:
            cached.unlink(missing_ok=True)
        raise


def _require_saved_model(source: str, folder: Path) -> Path:
    """``folder`` if it holds ``saved_model.pb``, else its ``saved_model/`` subfolder if that does."""
    for candidate in (folder, folder / "saved_model"):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise QuantbenchError(
        f"no TensorFlow SavedModel in {shown(source)}: no saved_model.pb in it nor in a saved_model/ folder (pass {FORMS})"
    )


class _NoPlainHttpRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, except from ``https://`` to plain ``http://``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.startswith("https://") and newurl.startswith("http://"):
            raise QuantbenchError(f"{shown(req.full_url)} redirects to plain http ({shown(newurl)}): "
                                  "pass --model-sha256 to pin the model before it is fetched over http")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, file: Path, pinned: bool) -> None:
    """Stream ``url`` into ``file`` (a temporary one: the caller removes it on failure), at most
    :data:`DOWNLOAD_CAP` bytes. Unless the model is ``pinned``, an https URL is never followed to http."""
    cap = _cap(DOWNLOAD_CAP)
    opener = urllib.request.build_opener() if pinned else urllib.request.build_opener(_NoPlainHttpRedirect)
    try:
        with file.open("wb") as out, opener.open(url, timeout=60) as response:
            written = 0
            while block := response.read(CHUNK):
                written += len(block)
                if written > cap:
                    raise QuantbenchError(f"download of {shown(url)} is over {cap:,} bytes, the cap {DOWNLOAD_CAP[0]} sets: "
                                          "nothing was kept (raise the cap if this model is really that big)")
                out.write(block)
    except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
        raise QuantbenchError(f"cannot download {shown(url)}: {_one_line(error)}") from None


def _extract(source: str, archive: Path, folder: Path) -> None:
    """Extract ``archive`` into ``folder`` (a temporary one: the caller removes it on failure).

    Refused before anything is written when its regular files add up to more than
    :data:`EXTRACT_CAP` bytes (sizes as their headers give them, which is what extraction writes).
    ``filter="data"`` refuses members that would land outside ``folder`` (``../x``, absolute paths,
    links pointing out) and special files."""
    cap = _cap(EXTRACT_CAP)
    try:
        with tarfile.open(archive) as tar:
            size = sum(member.size for member in tar.getmembers() if member.isreg())
            if size > cap:
                raise QuantbenchError(f"{shown(source)} would extract to {size:,} bytes, over the cap {EXTRACT_CAP[0]} "
                                      f"sets ({cap:,}): nothing was extracted (raise the cap if this model is really that big)")
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise QuantbenchError(f"cannot extract {shown(source)} as a .tar.gz archive: {_one_line(error)}") from None


def _cap(setting: tuple[str, int]) -> int:
    """Bytes: the environment variable ``setting[0]`` if set (a whole number of bytes), else ``setting[1]``."""
    name, default = setting
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise QuantbenchError(f"{name}={value!r} is not a whole number of bytes: set it to e.g. {default} or unset it")
    return int(value)


def _archive_top(root: Path) -> Path:
    """The only entry of ``root`` if that is a folder, else ``root``."""
    entries = list(root.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


@contextlib.contextmanager
def _partial_file(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target``, renamed to ``target`` if the block completes, else removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        yield Path(name)
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


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
