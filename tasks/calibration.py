"""Calibration images: the representative dataset of the calibrated recipes (``int8_full``,
``int16x8``) and the fixed batch on which every variant's outputs are compared with float32.

They come from a folder (local or ``s3://``) of JPEG/PNG files that must be disjoint from the
evaluation images: calibrating on the test set would flatter the quantized model. The embedded
demo uses its own ``calib`` split (generated with a seed of its own).
"""
from __future__ import annotations

import hashlib

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.dataset import Dataset, decode_rgb
from tasks.errors import STORE_RETRIES, QuantbenchError
from tasks.models import Calibration
from tasks.runtimes import prepare_input
from tasks.store import open_store

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_calibration(images_url: str, count: int, fixed_size: tuple[int, int] | None, evaluation: Dataset) -> Calibration:
    """The first ``count`` images (by file name) of ``images_url`` as model-ready uint8 batches."""
    store = open_store(images_url)
    names = [key for key in store.list_keys() if key.lower().endswith(IMAGE_SUFFIXES)][:count]
    if not names:
        raise QuantbenchError(f"no .jpg/.png images in calibration folder {images_url}")
    same_folder = open_store(evaluation.images_url).url == store.url
    overlap = same_folder and {r.file_name for r in evaluation.images} & set(names)
    if overlap:
        raise QuantbenchError(
            f"calibration images overlap the evaluation images (e.g. {sorted(overlap)[0]} in {images_url}); "
            "pass --calibration-images, a folder of other images"
        )
    digest, batches = hashlib.sha256(), []
    for name in names:
        data = store.read_bytes(name)
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        batches.append(prepare_input(decode_rgb(data), fixed_size))
    return Calibration(source=f"{len(names)} images from {store.url}", digest=digest.hexdigest(), batches=tuple(batches))


@task(name="calibration", cache_policy=NO_CACHE, **STORE_RETRIES)
def calibration_task(images_url: str, count: int, fixed_size: tuple[int, int] | None, evaluation: Dataset) -> Calibration:
    return load_calibration(images_url, count, fixed_size, evaluation)
