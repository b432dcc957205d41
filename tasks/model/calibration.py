"""Calibration images: the representative dataset of the calibrated recipes (``int8_full``,
``int16x8``) and the fixed batch on which every variant's outputs are compared with float32.

They come from a folder (local or ``s3://``) of JPEG/PNG files that must be disjoint from the
evaluation images — by content, not only by name: calibrating on the test set would flatter the
quantized model. The embedded
demo uses its own ``calib`` split (generated with a seed of its own).
"""
from __future__ import annotations

import hashlib

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.dataset import Dataset, decode_rgb, load_inputs
from tasks.store.errors import STORE_RETRIES, ImageDecodeError, QuantbenchError
from tasks.model.preprocess import Preparation, prepare_input
from tasks.model.variants import Calibration
from tasks.store.object_store import open_store

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def calibration_files(images_url: str, count: int, evaluation: Dataset) -> list[tuple[str, bytes]]:
    """The first ``count`` images (by file name) of ``images_url``: ``(name, bytes)``.

    Refuses any that is an evaluation image, by content, wherever it lies: its SHA-256 equals a
    local evaluation image's, or its MD5 and size equal an S3 evaluation image's single-part ETag
    and size (the evaluation fingerprints of :func:`tasks.data.dataset.load_dataset`).
    """
    store = open_store(images_url)
    names = [key for key in store.list_keys() if key.lower().endswith(IMAGE_SUFFIXES)][:count]
    if not names:
        raise QuantbenchError(f"no .jpg/.png images in calibration folder {images_url}")
    evaluation_images = {record.fingerprint: record.file_name for record in evaluation.images}
    files = []
    for name in names:
        data = store.read_bytes(name)
        for fingerprint in (f"sha256:{hashlib.sha256(data).hexdigest()}", f"etag:{hashlib.md5(data).hexdigest()}-{len(data)}"):
            if fingerprint in evaluation_images:
                raise QuantbenchError(
                    f"calibration images overlap the evaluation images: {name} in {images_url} has the content of "
                    f"evaluation image {evaluation_images[fingerprint]}; pass --calibration-images, a folder of other images"
                )
        files.append((name, data))
    return files


def load_calibration(images_url: str, count: int, preparation: Preparation, evaluation: Dataset) -> Calibration:
    """The calibration images (see :func:`calibration_files`) as model-ready batches, prepared
    exactly as inference prepares its inputs (``preparation``, which is part of the digest: a
    calibrated variant is never reused across specs)."""
    digest, batches = hashlib.sha256(repr(preparation).encode()), []
    for name, data in calibration_files(images_url, count, evaluation):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        try:
            batches.append(prepare_input(decode_rgb(data), preparation)[0])
        except ImageDecodeError as error:
            raise QuantbenchError(f"calibration image {name} in {images_url} cannot be used: {error}") from None
    return Calibration(source=f"{len(batches)} images from {open_store(images_url).url}", digest=digest.hexdigest(), batches=tuple(batches))


def comparison_inputs(dataset: Dataset, preparation: Preparation) -> Calibration:
    """Without calibration images, outputs are compared on the first (up to 4) readable evaluation
    images, as model-ready uint8 batches; no digest (nothing is calibrated on them)."""
    batches = tuple(prepare_input(pixels, preparation)[0] for pixels in load_inputs(dataset.images_url, list(dataset.images), 4))
    return Calibration(source=f"first {len(batches)} readable evaluation images (comparison only)", digest="", batches=batches)


@task(name="calibration", cache_policy=NO_CACHE, **STORE_RETRIES)
def calibration_task(images_url: str, count: int, preparation: Preparation, evaluation: Dataset) -> Calibration:
    return load_calibration(images_url, count, preparation, evaluation)
