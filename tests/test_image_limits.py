"""Images decode only as what their annotations say they are (issue 18, finding 6): the size in
the file's header must match the annotation's width and height before any pixel is decoded (a
small PNG can decode to hundreds of MB), and only JPEG and PNG are opened (no other Pillow plugin
is reachable from a dataset)."""
from __future__ import annotations

import io
import json
import shutil
import warnings
from urllib.parse import urlparse

import pytest
from PIL import Image

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.data.dataset import decode_rgb
from tasks.store.errors import ImageDecodeError


def _bomb() -> bytes:
    """A ~20 kB PNG whose pixels are 12000 x 12000 (432 MB as RGB; under Pillow's own bomb limit)."""
    data = io.BytesIO()
    Image.new("1", (12000, 12000)).save(data, "PNG")
    return data.getvalue()


def test_a_small_file_that_decodes_to_a_huge_image_is_refused_by_its_header(monkeypatch):
    from PIL import ImageFile

    bomb = _bomb()
    assert len(bomb) < 200_000

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's own warning at 89 M pixels
        with pytest.raises(ImageDecodeError, match="^image is 12000x12000 pixels, its annotation says 640x480$"):
            decode_rgb(bomb, (640, 480))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_only_jpeg_and_png_are_opened(fmt):
    data = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(data, fmt)
    with pytest.raises(ImageDecodeError, match=r"^not an image in a format quantbench reads \(JPEG, PNG; "):
        decode_rgb(data.getvalue(), (32, 24))


def test_a_bomb_in_a_dataset_is_a_per_image_failure_and_the_run_goes_on(prefect_backend, oracle_data, oracle_models, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    document = json.loads(oracle_data.read_text())
    first = sorted(document["images"], key=lambda i: i["id"])[0]
    (images / first["file_name"]).write_bytes(_bomb())
    config = BenchmarkConfig(model=str(oracle_models["dynamic"]), annotations=str(oracle_data), images=str(images),
                             variants=["float32"], shard_size=4, latency_images=3, store=str(tmp_path / "store"))
    report = json.loads(open(urlparse(benchmark(config)).path).read())
    [entry] = report["variants"]
    assert entry["failed_images"] == 1 and entry["images"] == 7
    [failure] = entry["failures"]
    assert failure["image_id"] == first["id"]
    assert failure["reason"] == f"image is 12000x12000 pixels, its annotation says {first['width']}x{first['height']}"
