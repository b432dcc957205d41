"""Inference of one (variant, shard): load the model once, run every image, store COCO results.

A shard's output is stored under a key derived from everything that decides its content (model
digest, variant and its model file, annotations digest, each image's id and content fingerprint,
the resolved model spec, score threshold, label map), so a rerun finds and reuses it and outputs of different models,
images or settings never mix. Its SHA-256 is recorded beside it (``tasks.store.recorded``): an output
that no longer matches its record (edited in the store), or has none, is computed again, with a
WARNING naming it.

What a shard records as a failed image is only ever about that image: its file does not exist,
or it does not decode (empty, truncated, corrupt). Any other error — a store that cannot be
reached, a 5xx, a timeout — fails the whole shard before anything is stored, and the task is
retried. A stored output that lists failed images is used for the run that made it, but never
reused by a later run: the next run computes that shard again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data.coco_format import od_api_to_coco
from tasks.data.dataset import ImageReader, ImageRecord, Shard
from tasks.model.heads import Detections, make_head
from tasks.model.preprocess import Preparation
from tasks.model.spec import ModelSpec, odapi_spec
from tasks.store.errors import STORE_RETRIES
from tasks.run.prefetch import prepared_images
from tasks.model.runtimes import local_model_path, open_runtime
from tasks.store.object_store import open_store
from tasks.store.recorded import UnverifiedObject, read_recorded, sha256_hex, write_recorded
from tasks.run.usage import ResourceMeter


@dataclass(frozen=True)
class ShardJob:
    """Everything one inference task needs; plain data, so it can be sent to another process."""

    variant: str
    model_url: str
    model_digest: str
    annotations_digest: str  # Dataset.annotations_digest: annotations bytes + chosen image ids
    images_url: str
    shard: Shard
    store_url: str
    threads: int = 1
    min_score: float = 0.0
    category_ids: tuple[int, ...] = ()  # the dataset's categories; other classes are counted, not kept
    label_map: tuple[int, ...] | None = None  # model class index -> category id (None: classes are ids)
    spec: dict | None = None  # the resolved ModelSpec (tasks.model.spec), JSON-ready; None: the TF OD API head
    model_sha256: str = ""  # hex digest the model file must have (its conversion task's); "": not checked (saved_model)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.spec) if self.spec else odapi_spec()

    def output_key(self) -> str:
        identity = {
            "model_digest": self.model_digest,
            "variant": self.variant,
            "model_file": self.model_url.rsplit("/", 1)[-1],
            "annotations_digest": self.annotations_digest,
            "images": [[record.id, record.fingerprint] for record in self.shard.images],
            "min_score": self.min_score,
            "label_map": self.label_map,
            "spec": self.spec,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"shards/{self.variant}/{digest[:32]}.json"


@dataclass(frozen=True)
class ShardOutput:
    """Where a shard's results are stored, and what they hold."""

    variant: str
    shard_index: int
    key: str
    images_done: int
    images_failed: int
    detections: int
    outside_categories: dict[str, int]  # category id (as str) -> detections dropped for it
    seconds: float  # wall time of the shard when computed: model load, read, decode, resize, invoke (0.0: reused)
    reused: bool
    usage: dict | None = None  # the stored "usage" of whoever computed it (None: stored before usage was recorded)
    sha256: str = ""  # hex digest of the stored output as checked or written: gather reads exactly that


def stored_shard_output(job: ShardJob, store, reused: bool = True, with_failures: bool = False) -> ShardOutput | None:
    """The summary of the job's stored output, or None if it has none to use.

    An output that recorded failed images counts as absent (it is computed again) unless
    ``with_failures``: failures are never reused as final, only read back by the run that made them.
    So does one that does not match its recorded digest, or has none (a WARNING names it).
    """
    key = job.output_key()
    try:
        data = read_recorded(store, key)
    except UnverifiedObject as error:
        get_run_logger().warning("%s: recomputing it", error)
        return None
    if data is None:
        return None
    stored = json.loads(data)
    if stored["failed"] and not with_failures:
        return None
    return ShardOutput(job.variant, job.shard.index, key, len(stored["done_image_ids"]), len(stored["failed"]),
                       len(stored["detections"]), stored["outside_categories"], 0.0, reused=reused, usage=stored.get("usage"),
                       sha256=sha256_hex(data))


def infer_shard(job: ShardJob, prefetch: int = 2, alone_in_process: bool = False) -> ShardOutput:
    """Run ``job``'s model over its shard; store ``{"detections", "done_image_ids", "failed", "usage"}`` and its digest.

    An image that does not exist or does not decode is recorded in ``failed`` with the reason and
    the shard goes on; any other error (the store, the model) stops the shard and stores nothing.
    Images are read and decoded ``prefetch`` ahead in a thread (``tasks.run.prefetch``; 0: in line).
    ``usage`` is what computing it cost (``tasks.run.usage.Usage``: epoch start/end, CPU s after the
    model load, peak RSS MB) plus ``load_s``, the model load's wall time; a later run reusing the output reports it as measured then.
    ``alone_in_process``: nothing else computes in this process (a shard flow run), so its CPU time
    is the process's; else the shard's own threads are counted (``tasks.run.usage.ResourceMeter``).
    """
    store = open_store(job.store_url)
    stored = stored_shard_output(job, store)
    if stored is not None:
        return stored
    key = job.output_key()
    detections, done, failed, outside = [], [], [], {}
    with ResourceMeter(whole_process=alone_in_process) as meter:
        with meter.threads_started():  # an interpreter's worker threads (threads > 1)
            runtime = open_runtime(job.variant, local_model_path(job.model_url, job.model_sha256), job.threads)
        spec = job.model_spec()
        head, preparation = make_head(spec, runtime.io), Preparation.of(spec, runtime.io.input, runtime.fixed_size)
        meter.attributable = not runtime.uses_tensorflow
        load_s = time.time() - meter.started
        meter.restart_cpu()  # CPU per image: after the model load (reported as load_s)
        images = prepared_images(ImageReader(job.images_url), list(job.shard.images), preparation, prefetch, meter.add_cpu)
        with contextlib.closing(images):
            for image in images:
                if image.failure is not None:
                    failed.append({"image_id": image.record.id, "file_name": image.record.file_name, "reason": image.failure})
                    continue
                runtime.set_input(image.batch)
                runtime.invoke()
                found = head.decode(runtime.outputs(), image.frame)
                detections += keep_dataset_categories(coco_detections(image.record, found, job.min_score),
                                                      job.label_map, job.category_ids, outside)
                done.append(image.record.id)
    usage = {**asdict(meter.usage), "load_s": round(load_s, 4), "prefetch": prefetch, "pid": os.getpid()}
    document = {"job": asdict(job), "detections": detections, "done_image_ids": done, "failed": failed,
                "outside_categories": outside, "usage": usage}
    data = json.dumps(document).encode()
    write_recorded(store, key, data)
    return ShardOutput(job.variant, job.shard.index, key, len(done), len(failed), len(detections), outside,
                       round(meter.usage.wall_s, 3), reused=False, usage=usage, sha256=sha256_hex(data))


def coco_detections(record: ImageRecord, found: Detections, min_score: float) -> list[dict]:
    """One image's detections (a head's, normalised to the original image) as COCO results."""
    return od_api_to_coco(record.id, record.width, record.height, found.boxes, found.scores, found.classes,
                          min_score=min_score, masks=found.masks)


def keep_dataset_categories(detections: list[dict], label_map: tuple[int, ...] | None, category_ids: tuple[int, ...],
                            outside: dict[str, int]) -> list[dict]:
    """Map model classes to dataset category ids and keep only the dataset's categories.

    With ``label_map`` the model's class is a 0-based index into it (80-class models: index →
    sorted COCO category id); without, the class already is the category id (TF OD API models).
    Dropped detections are counted per original class in ``outside`` so the report shows them.
    """
    kept = []
    for detection in detections:
        category = detection["category_id"]
        if label_map is not None:
            category = label_map[category] if 0 <= category < len(label_map) else None
        if category is None or (category_ids and category not in category_ids):
            name = str(detection["category_id"])
            outside[name] = outside.get(name, 0) + 1
            continue
        kept.append({**detection, "category_id": category})
    return kept


@task(name="infer-shard", cache_policy=NO_CACHE, **STORE_RETRIES, task_run_name="infer-{job.variant}-shard-{job.shard.index}")
def infer_shard_task(job: ShardJob) -> ShardOutput:
    output = infer_shard(job)
    get_run_logger().info(
        "%s shard %d: %d images, %d failed, %d detections%s",
        output.variant, output.shard_index, output.images_done, output.images_failed, output.detections,
        " (reused stored result)" if output.reused else f" in {output.seconds:.1f} s",
    )
    return output


@task(name="shard-deployment", task_run_name="run-{job.variant}-shard-{job.shard.index}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=5)
def run_shard_deployment(job: ShardJob, deployment: str, job_variables: dict, timeout_s: float) -> ShardOutput:
    """Run one shard as a flow run of the per-shard ``deployment`` (on its work pool) and wait.

    A shard already in the store is not submitted. A flow run that fails, crashes, or is still
    not finished after ``timeout_s`` (its worker died with it, say) is cancelled and the task
    retries with a new flow run: shard outputs are content-addressed and written atomically, so a
    late or repeated run can only rewrite the same object.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    store = open_store(job.store_url)
    stored = stored_shard_output(job, store)
    if stored is not None:
        return stored
    flow_run = run_deployment(name=deployment, parameters={"job": job}, job_variables=job_variables or None,
                              timeout=timeout_s, poll_interval=1)
    if not flow_run.state or not flow_run.state.is_completed():
        if flow_run.state and not flow_run.state.is_final():
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run.id, Cancelled(message="quantbench: shard timed out"), force=True)
        raise RuntimeError(f"shard flow run {flow_run.name} ended {flow_run.state.type.value if flow_run.state else 'without a state'}")
    output = stored_shard_output(job, store, reused=False, with_failures=True)
    if output is None:
        raise RuntimeError(f"shard flow run {flow_run.name} completed but stored no usable output at {store.url_for(job.output_key())}")
    get_run_logger().info("%s shard %d: done by flow run %s", job.variant, job.shard.index, flow_run.name)
    return output
