"""Gather: merge a variant's shard outputs into one COCO results JSON in the store.

Publishes only when every shard is present and every image of the dataset is accounted for
exactly once (either processed or recorded as failed). Each shard output is read only if it still
has the SHA-256 its shard task checked or wrote (``ShardOutput.sha256``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.store.errors import STORE_RETRIES, QuantbenchError
from tasks.run.inference import ShardOutput
from tasks.store.object_store import open_store
from tasks.store.recorded import sha256_hex


@dataclass(frozen=True)
class GatheredVariant:
    variant: str
    detections_url: str  # COCO results JSON: a list of {image_id, category_id, bbox [x,y,w,h] px, score}
    detections: int
    done_image_ids: tuple[int, ...]
    failed: tuple[dict, ...]  # {"image_id", "file_name", "reason"}
    outside_categories: dict[str, int]  # model class -> detections not in the dataset's categories


def checked_shard(store, output: ShardOutput) -> bytes:
    """The stored output's bytes; QuantbenchError if they are not those its shard task checked or wrote."""
    data = store.read_bytes(output.key)
    if sha256_hex(data) != output.sha256:
        raise QuantbenchError(f"stored shard {store.url_for(output.key)} changed after its shard task checked it (expected sha256 "
                              f"{output.sha256}, got {sha256_hex(data)}); nothing was published for {output.variant}: rerun to recompute it")
    return data


def gather_variant(variant: str, outputs: list[ShardOutput], expected_image_ids: list[int], store_url: str, run_prefix: str) -> GatheredVariant:
    store = open_store(store_url)
    # Each shard's detections are written back to JSON text as soon as they are read: the merged list
    # is never held as Python objects (~0.6 KB each), only as its JSON (~0.1 KB each), and the text is
    # the bytes json.dumps gives for the whole list.
    parts, n_detections, done, failed, outside = [], 0, [], [], {}
    for output in sorted(outputs, key=lambda o: o.shard_index):
        stored = json.loads(checked_shard(store, output))
        if stored["detections"]:
            parts.append(json.dumps(stored["detections"])[1:-1])
            n_detections += len(stored["detections"])
        done += stored["done_image_ids"]
        failed += stored["failed"]
        for category, count in stored["outside_categories"].items():
            outside[category] = outside.get(category, 0) + count
    seen = done + [f["image_id"] for f in failed]
    if sorted(seen) != sorted(expected_image_ids):
        missing = sorted(set(expected_image_ids) - set(seen))[:5]
        raise QuantbenchError(
            f"{variant}: shard outputs cover {len(seen)} images, expected {len(expected_image_ids)} "
            f"(first missing ids: {missing}); nothing was published for this variant"
        )
    url = store.write_bytes(f"{run_prefix}/detections/{variant}.json", ("[" + ", ".join(parts) + "]").encode())
    return GatheredVariant(variant, url, n_detections, tuple(sorted(done)), tuple(failed), dict(sorted(outside.items())))


@task(name="gather", task_run_name="gather-{variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def gather_variant_task(variant: str, outputs: list[ShardOutput], expected_image_ids: list[int], store_url: str, run_prefix: str) -> GatheredVariant:
    return gather_variant(variant, outputs, expected_image_ids, store_url, run_prefix)
