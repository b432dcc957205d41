"""Nothing outside the images folder (or any store) is read through a key (issue 18, finding 1):
an annotations ``file_name`` that is absolute, has a ``..`` part or resolves out through a symbolic
link is refused at validation — exit 2, one line naming the first and the count — before any
image is read; the stores refuse such keys themselves (defence in depth), S3 keys turned into
local cache paths too."""
from __future__ import annotations

import json
import shutil

import pytest

from flows.cli import main
from tasks.store.errors import UnsafeKeyError
from tasks.store.object_store import LocalStore, open_store


def _dataset_with(tmp_path, oracle_data, *names: str):
    """A copy of the oracle dataset whose first images' file_names are ``names``; a secret file
    lies beside the images folder."""
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    (tmp_path / "secret.txt").write_text("root:x:0:0:the secret\n")
    document = json.loads((images / "instances.json").read_text())
    for image, name in zip(document["images"], names):
        image["file_name"] = name
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(document))
    return annotations, images, document


def _refused(capfd, annotations, images, store) -> str:
    assert main(["run", "--annotations", str(annotations), "--images", str(images), "--store", str(store)]) == 2
    out, err = capfd.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, err
    assert "the secret" not in out + err
    assert not list(store.rglob("*.json")) if store.exists() else True  # nothing ran, nothing was stored
    return err.strip()


def test_file_names_with_dot_dot_or_absolute_are_refused_before_any_read(capfd, oracle_data, tmp_path):
    annotations, images, document = _dataset_with(tmp_path, oracle_data, "../secret.txt", "/etc/passwd")
    first = document["images"][0]
    assert _refused(capfd, annotations, images, tmp_path / "store") == (
        f"error: {annotations} names 2 image file(s) outside the images folder {images} (first: image {first['id']} "
        "file_name '../secret.txt'); a file_name must be a relative path inside the folder: fix the annotations")


def test_a_symbolic_link_out_of_the_images_folder_is_refused(capfd, oracle_data, tmp_path):
    annotations, images, document = _dataset_with(tmp_path, oracle_data, "leak.png")
    (images / "leak.png").symlink_to(tmp_path / "secret.txt")
    error = _refused(capfd, annotations, images, tmp_path / "store")
    assert "names 1 image file(s) outside the images folder" in error and "'leak.png'" in error


def test_a_local_store_reads_and_writes_nothing_outside_its_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "out").symlink_to(tmp_path)
    store = LocalStore(tmp_path / "store")
    for key in ("../secret.txt", "/etc/passwd", "a/../../secret.txt", "out/secret.txt"):
        with pytest.raises(UnsafeKeyError):
            store.read_bytes(key)
        with pytest.raises(UnsafeKeyError):
            store.exists(key)
    with pytest.raises(UnsafeKeyError):
        store.write_bytes("../written.txt", b"x")
    with pytest.raises(UnsafeKeyError):
        store.write_bytes("out/written.txt", b"x")
    assert not (tmp_path / "written.txt").exists()
    store.write_bytes("inside/ok.json", b"{}")  # an ordinary key still works
    assert store.read_bytes("inside/ok.json") == b"{}"


def test_s3_keys_never_become_paths_outside_the_cache(tmp_path):
    store = open_store("s3://bucket/prefix")
    for key in ("../../../outside", "/etc/passwd"):
        with pytest.raises(UnsafeKeyError):
            store.local_path(key, tmp_path / "cache")  # refused before any request
    assert not (tmp_path / "cache").exists()
