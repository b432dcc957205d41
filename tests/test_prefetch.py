"""Images prepared ahead of inference (tasks.run.prefetch): same items, same order, same failures as
preparing them in line; an error that is not about one image stops the shard where it happened."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from tasks.data.dataset import ImageReader, ImageRecord
from tasks.store.errors import QuantbenchError
from tasks.model.preprocess import odapi_preparation
from tasks.run.prefetch import prepared_images


@pytest.fixture
def folder(tmp_path):
    """Eight images (a distinct colour each), a missing one, a corrupt one, and a directory named like an image."""
    for n in range(8):
        Image.new("RGB", (64 + n, 48), (n * 30, 0, 0)).save(tmp_path / f"{n}.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "folder.jpg").mkdir()
    return tmp_path


def record(n: int, name: str | None = None) -> ImageRecord:
    return ImageRecord(n, name or f"{n}.png", 64 + n, 48)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "quantbench-prefetch"]


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_items_come_in_order_with_per_image_failures_in_place(folder, depth):
    records = [record(0), record(1), record(90, "missing.png"), record(2), record(91, "corrupt.jpg"), *map(record, range(3, 8))]
    cpu = []
    items = list(prepared_images(ImageReader(str(folder)), records, odapi_preparation((32, 40)), depth, cpu.append))
    assert [item.record for item in items] == records
    failures = {item.record.id: item.failure for item in items if item.failure}
    assert set(failures) == {90, 91} and "not found" in failures[90] and failures[91]
    for item in items:
        if item.batch is not None:
            assert item.batch.shape == (1, 32, 40, 3) and item.batch.dtype == np.uint8
            assert item.batch[0, 0, 0, 0] == (item.record.id * 30)  # its own image, not a neighbour's
    assert len(cpu) == (depth > 0) and all(seconds >= 0 for seconds in cpu)
    assert not prefetch_threads()


@pytest.mark.parametrize("depth", [0, 2])
def test_a_store_error_is_raised_at_its_position_and_stops_the_thread(folder, depth):
    records = [record(0), record(1), record(99, "folder.jpg"), record(2), record(3)]
    seen = []
    with pytest.raises(QuantbenchError, match="is a directory"):
        for item in prepared_images(ImageReader(str(folder)), records, odapi_preparation(None), depth):
            seen.append(item.record.id)
    assert seen == [0, 1]
    assert not prefetch_threads()


def test_leaving_early_stops_the_thread(folder):
    images = prepared_images(ImageReader(str(folder)), list(map(record, range(8))), odapi_preparation(None), depth=2)
    assert next(images).record.id == 0
    images.close()
    assert not prefetch_threads()
