"""Model sources: local folders and files, tarballs (local and over HTTP), S3 (a real SeaweedFS
server), Kaggle and TF Hub handles through pre-filled caches. No network beyond 127.0.0.1."""
import hashlib
import io
import re
import shutil
import ssl
import subprocess
import tarfile
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.store.errors import QuantbenchError
from tasks.model.conversion import convert
from tasks.model.variants import directory_digest
from tasks.model.sources import PinMismatch, resolve_model
from tasks.store.object_store import open_store
from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small oracle SavedModel."""
    root = tmp_path_factory.mktemp("source-model")
    return build_oracle_model(root / "model", oracle_tables(write_oracle_dataset(root / "data", [(40, 30), (20, 50)])), None)


@pytest.fixture(scope="module")
def tflite_bytes(model) -> bytes:
    return convert(model, "float32")


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.1 serving a folder; yields (base URL, paths requested, the folder)."""
    root = tmp_path / "www"
    root.mkdir()
    requested = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requested, root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def https_redirect(tmp_path, monkeypatch, web):
    """An HTTPS server on 127.0.0.1 (its own certificate, trusted through SSL_CERT_FILE) that
    redirects every path to the same path on the plain-http ``web`` server; yields its base URL."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    http_base = web[0]

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", http_base + self.path)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def zoo_tarball(model: Path, path: Path, name: str = "ssd_oracle_640x640") -> Path:
    """A TF2 Detection Zoo style tarball: NAME/saved_model/…, NAME/checkpoint/…, NAME/pipeline.config."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(model, arcname=f"{name}/saved_model")
        for member, data in ((f"{name}/pipeline.config", b"model {}\n"), (f"{name}/checkpoint/ckpt-0.index", b"\0")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_local_saved_model_is_used_in_place_with_a_stable_digest(model, tmp_path):
    first = resolve_model(str(model), tmp_path / "cache")
    assert (first.source, first.kind, first.path) == (str(model), "saved_model", model)
    assert first.digest == directory_digest(model) == resolve_model(str(model), tmp_path / "cache").digest
    assert not (tmp_path / "cache").exists()

    other = shutil.copytree(model, tmp_path / "other")
    (other / "assets").mkdir(exist_ok=True)
    (other / "assets" / "labels.txt").write_text("bicycle\n")
    assert resolve_model(str(other), tmp_path / "cache").digest != first.digest


def test_zoo_layout_directory_descends_into_saved_model(model, tmp_path):
    zoo = tmp_path / "ssd_oracle"
    shutil.copytree(model, zoo / "saved_model")
    (zoo / "checkpoint").mkdir()
    (zoo / "pipeline.config").write_text("model {}\n")
    resolved = resolve_model(str(zoo), tmp_path / "cache")
    assert resolved.kind == "saved_model" and resolved.path == zoo / "saved_model"
    assert resolved.digest == directory_digest(model)


def test_local_tflite_file_is_used_in_place(tflite_bytes, tmp_path):
    file = tmp_path / "model.tflite"
    file.write_bytes(tflite_bytes)
    resolved = resolve_model(str(file), tmp_path / "cache")
    assert (resolved.kind, resolved.path, resolved.digest) == ("tflite", file, hashlib.sha256(tflite_bytes).hexdigest())
    assert resolve_model(str(file), tmp_path / "cache") == resolved
    (tmp_path / "other.tflite").write_bytes(tflite_bytes + b"\0")
    assert resolve_model(str(tmp_path / "other.tflite"), tmp_path / "cache").digest != resolved.digest


def test_local_zoo_tarball_is_extracted_into_the_cache(model, tmp_path):
    cache = tmp_path / "cache"
    archive = zoo_tarball(model, tmp_path / "ssd_oracle.tar.gz")
    resolved = resolve_model(str(archive), cache)
    tar_hash = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    assert resolved.kind == "saved_model"
    assert resolved.path == cache / "models" / "tar" / tar_hash / "ssd_oracle_640x640" / "saved_model"
    assert resolved.digest == directory_digest(model)
    assert resolve_model(str(archive), cache) == resolved
    assert [p.name for p in (cache / "models" / "tar").iterdir()] == [tar_hash]  # no partial folders left


def test_tarball_url_is_downloaded_once(model, tmp_path, web):
    base, requested, root = web
    zoo_tarball(model, root / "ssd_oracle.tar.gz")
    url = f"{base}/ssd_oracle.tar.gz"
    cache = tmp_path / "cache"
    first = resolve_model(url, cache, directory_digest(model))  # plain http: pinned
    assert first.source == url and first.kind == "saved_model" and first.digest == directory_digest(model)
    assert first.path.is_relative_to(cache / "models" / "tar")
    assert resolve_model(url, cache, directory_digest(model)) == first
    assert requested == ["/ssd_oracle.tar.gz"]
    assert [p.name for p in (cache / "models" / "downloads").iterdir()] == [
        f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.tar.gz"
    ]


def test_missing_tarball_url_is_a_clear_error_and_caches_nothing(tmp_path, web):
    base, requested, _ = web
    url = f"{base}/absent.tgz?token=secret-value"
    with pytest.raises(QuantbenchError, match=re.escape(f"cannot download {base}/absent.tgz: HTTPError: HTTP Error 404")) as raised:
        resolve_model(url, tmp_path / "cache", "0" * 64)
    assert "secret-value" not in str(raised.value)
    assert list((tmp_path / "cache" / "models" / "downloads").iterdir()) == []


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_plain_http_without_a_pin_is_refused_before_any_request(tmp_path, web):
    base, requested, _ = web
    with pytest.raises(QuantbenchError, match=re.escape(
            f"model source {base}/m.tar.gz is plain http: pass --model-sha256 to pin it (or use https)")):
        resolve_model(f"{base}/m.tar.gz?key=secret", tmp_path / "cache")
    assert requested == [] and _files(tmp_path / "cache") == []


def test_an_unpinned_https_download_does_not_follow_a_redirect_to_plain_http(model, tmp_path, web, https_redirect):
    http_base, requested, root = web
    zoo_tarball(model, root / "ssd_oracle.tar.gz")
    url, cache = f"{https_redirect}/ssd_oracle.tar.gz", tmp_path / "cache"
    with pytest.raises(QuantbenchError, match=re.escape(
            f"{url} redirects to plain http ({http_base}/ssd_oracle.tar.gz): pass --model-sha256 to pin the model")):
        resolve_model(url, cache)
    assert requested == [] and _files(cache) == []
    assert resolve_model(url, cache, directory_digest(model)).digest == directory_digest(model)  # pinned: http is fine
    assert requested == ["/ssd_oracle.tar.gz"]


def test_a_download_that_is_not_the_pinned_model_is_not_cached(model, tmp_path, web):
    base, requested, root = web
    zoo_tarball(model, root / "ssd_oracle.tar.gz")
    url, cache, right, wrong = f"{base}/ssd_oracle.tar.gz", tmp_path / "cache", directory_digest(model), "ab" * 32
    with pytest.raises(PinMismatch, match=re.escape(f"model {url} does not match --model-sha256: expected {wrong}, got {right};")):
        resolve_model(url, cache, wrong)
    assert _files(cache) == []  # neither the download nor its extraction
    assert resolve_model(url, cache, right).digest == right
    assert len(_files(cache / "models" / "downloads")) == 1
    with pytest.raises(PinMismatch):  # a cached copy that does not match is deleted: the next run fetches afresh
        resolve_model(url, cache, wrong)
    assert _files(cache / "models" / "downloads") == []
    assert resolve_model(url, cache, right).digest == right
    assert requested == ["/ssd_oracle.tar.gz"] * 3


def test_a_local_model_that_is_not_the_pinned_one_is_refused_and_kept(model, tflite_bytes, tmp_path):
    file = tmp_path / "model.tflite"
    file.write_bytes(tflite_bytes)
    for source, digest in ((model, directory_digest(model)), (file, hashlib.sha256(tflite_bytes).hexdigest())):
        assert resolve_model(str(source), tmp_path / "cache", digest).digest == digest
        with pytest.raises(PinMismatch, match=re.escape(f"model {source} does not match --model-sha256: expected {'0' * 64}, got {digest};")):
            resolve_model(str(source), tmp_path / "cache", "0" * 64)
        assert source.exists()


def test_a_download_over_the_cap_is_stopped_and_removed(model, tmp_path, web, monkeypatch):
    base, _, root = web
    size = zoo_tarball(model, root / "ssd_oracle.tar.gz").stat().st_size
    url, cache, pin = f"{base}/ssd_oracle.tar.gz", tmp_path / "cache", directory_digest(model)
    monkeypatch.setenv("QUANTBENCH_MAX_DOWNLOAD_BYTES", str(size - 1))
    with pytest.raises(QuantbenchError, match=re.escape(
            f"download of {url} is over {size - 1:,} bytes, the cap QUANTBENCH_MAX_DOWNLOAD_BYTES sets: nothing was kept")):
        resolve_model(url, cache, pin)
    assert _files(cache) == []
    monkeypatch.setenv("QUANTBENCH_MAX_DOWNLOAD_BYTES", str(size))
    assert resolve_model(url, cache, pin).digest == pin


def test_a_tarball_that_extracts_over_the_cap_is_refused_before_extraction(model, tmp_path, monkeypatch):
    archive = zoo_tarball(model, tmp_path / "ssd_oracle.tar.gz")
    with tarfile.open(archive) as tar:
        size = sum(member.size for member in tar.getmembers() if member.isreg())
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTBENCH_MAX_EXTRACT_BYTES", str(size - 1))
    with pytest.raises(QuantbenchError, match=re.escape(
            f"{archive} would extract to {size:,} bytes, over the cap QUANTBENCH_MAX_EXTRACT_BYTES sets ({size - 1:,}): nothing was extracted")):
        resolve_model(str(archive), cache)
    assert _files(cache) == [] and list((cache / "models" / "tar").iterdir()) == []
    monkeypatch.setenv("QUANTBENCH_MAX_EXTRACT_BYTES", str(size))
    assert resolve_model(str(archive), cache).digest == directory_digest(model)


def test_a_cap_that_is_not_a_number_of_bytes_is_named(model, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_MAX_EXTRACT_BYTES", "8G")
    with pytest.raises(QuantbenchError, match=re.escape("QUANTBENCH_MAX_EXTRACT_BYTES='8G' is not a whole number of bytes: set it to e.g. 8589934592 or unset it")):
        resolve_model(str(zoo_tarball(model, tmp_path / "m.tgz")), tmp_path / "cache")


def test_tarball_member_cannot_escape_the_cache(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    cache = tmp_path / "cache"
    with pytest.raises(QuantbenchError, match=re.escape(f"cannot extract {archive}")):
        resolve_model(str(archive), cache)
    assert [p for p in tmp_path.rglob("evil") if p.is_file()] == []
    assert list((cache / "models" / "tar").iterdir()) == []


def test_tarball_without_a_saved_model_is_refused(tmp_path):
    archive = tmp_path / "empty.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("name/pipeline.config")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(QuantbenchError, match=re.escape(f"no TensorFlow SavedModel in {archive}")):
        resolve_model(str(archive), tmp_path / "cache")


def test_s3_saved_model_prefix_and_tflite_object(s3_env, model, tflite_bytes, tmp_path):
    store = open_store("s3://quantbench/models/x")
    for file in (p for p in model.rglob("*") if p.is_file()):
        store.write_bytes(file.relative_to(model).as_posix(), file.read_bytes())
    open_store("s3://quantbench/models").write_bytes("x.tflite", tflite_bytes)  # beside the prefix, not under it
    cache = tmp_path / "cache"

    resolved = resolve_model("s3://quantbench/models/x", cache)
    assert resolved.kind == "saved_model" and resolved.digest == directory_digest(model)
    key = hashlib.sha256(b"s3://quantbench/models/x").hexdigest()[:16]
    assert resolved.path == cache / "models" / "s3" / key
    assert [p.name for p in (cache / "models" / "s3").iterdir()] == [key]
    assert resolve_model("s3://quantbench/models/x", cache) == resolved

    tflite = resolve_model("s3://quantbench/models/x.tflite", cache)
    assert tflite.kind == "tflite" and tflite.path.read_bytes() == tflite_bytes
    assert tflite.digest == hashlib.sha256(tflite_bytes).hexdigest()


def test_s3_saved_model_that_is_not_the_pinned_one_is_not_cached(s3_env, model, tmp_path):
    store = open_store("s3://quantbench/models/pinned")
    for file in (p for p in model.rglob("*") if p.is_file()):
        store.write_bytes(file.relative_to(model).as_posix(), file.read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(PinMismatch, match=re.escape(f"expected {'1' * 64}, got {directory_digest(model)};")):
        resolve_model("s3://quantbench/models/pinned", cache, "1" * 64)
    assert _files(cache) == []
    resolved = resolve_model("s3://quantbench/models/pinned", cache, directory_digest(model))
    assert resolved.path == cache / "models" / "s3" / hashlib.sha256(b"s3://quantbench/models/pinned").hexdigest()[:16]


def test_s3_prefix_without_a_saved_model_caches_nothing(s3_env, tmp_path):
    open_store("s3://quantbench/models/notes").write_bytes("readme.txt", b"no model here")
    cache = tmp_path / "cache"
    with pytest.raises(QuantbenchError, match=re.escape("no TensorFlow SavedModel in s3://quantbench/models/notes")):
        resolve_model("s3://quantbench/models/notes", cache)
    assert list((cache / "models" / "s3").iterdir()) == []
    with pytest.raises(QuantbenchError, match=re.escape("no objects under s3://quantbench/models/absent")):
        resolve_model("s3://quantbench/models/absent", cache)


@pytest.fixture
def offline_kaggle(tmp_path, monkeypatch) -> Path:
    """A private KAGGLEHUB_CACHE; any Kaggle API call goes to http://localhost (refused), never out."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    return tmp_path / "kagglehub"


def test_kaggle_handle_from_kagglehub_cache(offline_kaggle, model, tmp_path):
    variation = offline_kaggle / "models" / "tensorflow" / "ssd-oracle" / "tensorFlow2" / "640x640"
    shutil.copytree(model, variation / "1")
    (variation / "1.complete").touch()  # kagglehub's completion marker: a file beside the version folder
    resolved = resolve_model("kaggle:tensorflow/ssd-oracle/tensorFlow2/640x640/1", tmp_path / "cache")
    assert (resolved.kind, resolved.path, resolved.digest) == ("saved_model", variation / "1", directory_digest(model))


def test_kaggle_handle_not_cached_offline_names_the_handle(offline_kaggle, model):
    variation = offline_kaggle / "models" / "tensorflow" / "ssd-oracle" / "tensorFlow2" / "640x640"
    shutil.copytree(model, variation / "1")  # files without the completion marker: an interrupted download
    for handle in ("tensorflow/ssd-oracle/tensorFlow2/640x640/1", "tensorflow/ssd-oracle/tensorFlow2/640x640", "nonsense"):
        with pytest.raises(QuantbenchError, match=re.escape(f"cannot get Kaggle model {handle}:")):
            resolve_model(f"kaggle:{handle}", offline_kaggle)


@pytest.mark.parametrize("env_cache", [False, True])
def test_tfhub_handle_from_a_filled_cache(model, tmp_path, monkeypatch, env_cache):
    handle = "https://tfhub.dev/tensorflow/ssd_oracle/1"
    hub_cache = tmp_path / "hub" if env_cache else tmp_path / "cache" / "tfhub"
    if env_cache:
        monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_cache))
    else:
        monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    module_dir = shutil.copytree(model, hub_cache / hashlib.sha1(handle.encode("utf8")).hexdigest())
    resolved = resolve_model(handle, tmp_path / "cache")
    assert (resolved.source, resolved.kind, resolved.path) == (handle, "saved_model", module_dir)
    assert resolved.digest == directory_digest(model)


def test_bad_sources_name_themselves(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        str(tmp_path / "missing"): "model not found: ",
        str(tmp_path / "not_a_model"): "no TensorFlow SavedModel in ",
        str(tmp_path / "notes.txt"): "unsupported model file ",
        "ftp://example.com/model": "unsupported model source ",
        "gs://bucket/model": "unsupported model source ",
    }
    for source, message in cases.items():
        with pytest.raises(QuantbenchError, match=re.escape(message + source)) as raised:
            resolve_model(source, tmp_path / "cache")
        assert "\n" not in str(raised.value) and "kaggle:OWNER/MODEL" in str(raised.value)
