"""Images read, decoded and resized ahead of inference, once per process for all variants.

A shard's loop would otherwise wait for each image's read (local file or S3 GET), decode and
resize before every ``invoke()``: on the bench detector (25 ms per float32 ``invoke()``, COCO
JPEGs) that made the loop 0.81x of a bare ``invoke()`` loop. One thread per shard does it
``depth`` images ahead (Pillow's decode and resize and LiteRT's ``invoke()`` release the GIL);
``depth=0`` does it in the calling thread, in order (the loop before; kept for the benchmark).

The variants' tasks of one shard need the same model inputs (same images, same input size):
``SHARED`` keeps prepared inputs in this process, keyed by what decides them (image folder, file
name, content fingerprint, and the model's whole input preparation: size, resize, channel order,
normalisation, dtype and quantization — :class:`~tasks.model.preprocess.Preparation`), bounded in bytes (``QUANTBENCH_DECODE_CACHE_MB``, default
384; 0: off), least recently used first out. An image being prepared by one task is waited for
by the others, not prepared twice. Each task is still charged the CPU its inputs cost (the
preparing task's measured CPU time), so a variant's CPU and energy per image stay what it costs
alone. Only successes are kept; an image without a content fingerprint is never shared.

What an item can be is decided here and nowhere else: pixels ready for the model, or the reason
this one image cannot be used (missing, undecodable: ``IMAGE_FAILURES``). Any other error (the
store, a bug) is raised in the consuming thread, at the position it happened, and stops the shard;
it is never kept.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tasks.data.dataset import ImageReader, ImageRecord, decode_rgb
from tasks.store.errors import IMAGE_FAILURES
from tasks.model.preprocess import Frame, Preparation, prepare_input

MB = 1_000_000
_END = object()


@dataclass(frozen=True)
class Prepared:
    """One image of a shard: ``batch`` (the model's input ``[1, ...]``, read-only) and its ``frame``
    (where the image lies in it), or ``failure`` (why not); ``cpu_s``: CPU seconds its read,
    decode and preparation took where it was prepared."""

    record: ImageRecord
    batch: np.ndarray | None
    failure: str | None
    cpu_s: float = 0.0
    frame: Frame | None = None


class _Pending:
    def __init__(self):
        self.done = threading.Event()
        self.value: Prepared | None = None


class SharedInputs:
    """Prepared model inputs of this process, shared by the tasks that need the same ones (LRU, bytes-bounded)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple, _Pending] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple | None, prepare: Callable[[], Prepared]) -> tuple[Prepared, bool]:
        """(the prepared input, whether another task prepared it). ``key`` None: not shareable."""
        if key is None or self.max_bytes <= 0:
            return prepare(), False
        with self._lock:
            pending = self._entries.get(key)
            owner = pending is None
            if owner:
                pending = self._entries[key] = _Pending()
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
        if not owner:
            pending.done.wait()
            if pending.value is not None:
                return pending.value, True
            return prepare(), False  # the owner failed (its error is its own): prepare it here
        try:
            pending.value = prepare()
        finally:
            with self._lock:
                if self._entries.get(key) is not pending:
                    pass  # cleared meanwhile: not kept
                elif pending.value is None or pending.value.batch is None:
                    del self._entries[key]  # errors and failed images are never kept
                else:
                    self._bytes += pending.value.batch.nbytes
                    self._evict()
            pending.done.set()
        return pending.value, False

    def clear(self) -> None:
        """Forget every kept input (those being prepared finish for their waiters)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            key, oldest = next(iter(self._entries.items()))
            if not oldest.done.is_set():
                break  # still being prepared: it is accounted once done
            del self._entries[key]
            self._bytes -= oldest.value.batch.nbytes


SHARED = SharedInputs(int(float(os.environ.get("QUANTBENCH_DECODE_CACHE_MB", "384")) * MB))


def prepare(reader: ImageReader, record: ImageRecord, preparation: Preparation) -> Prepared:
    """Read, decode and prepare one image in this thread."""
    started = time.thread_time()
    try:
        batch, frame = prepare_input(decode_rgb(reader.read(record), (record.width, record.height)), preparation)
    except IMAGE_FAILURES as error:
        return Prepared(record, None, str(error), time.thread_time() - started)
    batch.flags.writeable = False  # shared between tasks: nobody may change it
    return Prepared(record, batch, None, time.thread_time() - started, frame)


def shared_prepare(reader: ImageReader, record: ImageRecord, preparation: Preparation,
                   shared: SharedInputs = SHARED) -> tuple[Prepared, bool]:
    """:func:`prepare` through ``shared``: (the input, whether it came from another task)."""
    key = (reader.url, record.file_name, record.fingerprint, preparation) if record.fingerprint.startswith(("sha256:", "etag:")) else None
    return shared.get(key, lambda: prepare(reader, record, preparation))


def prepared_images(reader: ImageReader, records: list[ImageRecord], preparation: Preparation,
                    depth: int = 2, on_cpu: Callable[[float], None] | None = None,
                    shared: SharedInputs = SHARED) -> Iterator[Prepared]:
    """Yield every record's :class:`Prepared`, in order, preparing up to ``depth`` ahead in a thread.

    ``on_cpu(seconds)`` is charged what this caller's inputs cost beyond its own thread's CPU time:
    the prefetch thread's CPU time when it ends (a thread's CPU is lost to ``/proc`` once it exits),
    and for each input another task prepared, that preparation's CPU time. Leaving the loop early
    stops the thread.
    """
    charge = on_cpu or (lambda seconds: None)

    def one(record: ImageRecord) -> Prepared:
        prepared, from_another_task = shared_prepare(reader, record, preparation, shared)
        if from_another_task:
            charge(prepared.cpu_s)
        return prepared

    if depth == 0:
        for record in records:
            yield one(record)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for record in records:
                if not put(one(record)):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(error)
        finally:
            charge(time.thread_time())

    producer = threading.Thread(target=produce, name="quantbench-prefetch", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()
