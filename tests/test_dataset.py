"""Dataset loading, deterministic shards, image decoding, and evaluation edge cases."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from tasks.data.dataset import decode_rgb, load_dataset, make_shards
from tasks.store.errors import QuantbenchError
from tasks.score.evaluation import evaluate, ground_truth


def test_shards_are_deterministic_and_limit_takes_the_first_ids(oracle_data):
    dataset = load_dataset(str(oracle_data), str(oracle_data.parent), limit=5)
    assert [r.id for r in dataset.images] == [1000, 1007, 1014, 1021, 1028]
    shards = make_shards(dataset, 2)
    assert [[r.id for r in s.images] for s in shards] == [[1000, 1007], [1014, 1021], [1028]]
    again = load_dataset(str(oracle_data), str(oracle_data.parent), limit=5)
    assert again.digest == dataset.digest and make_shards(again, 2) == shards
    assert load_dataset(str(oracle_data), str(oracle_data.parent), limit=6).digest != dataset.digest
    with pytest.raises(QuantbenchError, match="--shard-size must be at least 1"):
        make_shards(dataset, 0)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("RGB", "PNG")])
def test_any_image_mode_decodes_to_rgb(mode, fmt):
    image = Image.new("RGB", (37, 23), (200, 100, 50)).convert(mode)
    data = io.BytesIO()
    image.save(data, fmt)
    pixels = decode_rgb(data.getvalue())
    assert pixels.shape == (23, 37, 3) and pixels.dtype == np.uint8


def test_corrupt_bytes_raise_instead_of_returning_garbage():
    from tasks.store.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError):
        decode_rgb(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_no_detections_evaluates_to_zero_instead_of_crashing(oracle_data):
    document = json.loads(oracle_data.read_text())
    result = evaluate(ground_truth(document), [], [i["id"] for i in document["images"]])
    assert result["stats"]["AP"] == 0.0 and result["stats"]["AR100"] == 0.0
    assert set(result["per_category_AP"]) == {"bicycle", "airplane", "toothbrush"}
