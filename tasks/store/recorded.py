"""Reused results with a recorded digest: an object written with :func:`write_recorded` gets a
sidecar ``<key>.sha256`` (its SHA-256, hex, one line), written just before it (a writer killed between
the two writes leaves no new object without its record);
:func:`read_recorded` gives the object back only if its content still has that digest.

A converted model or a shard output is reused by later runs (its key says what it was computed
from, not what it holds), so one swapped or edited in the store would otherwise be trusted. An
object whose content does not match its record, or that has no record (written by a quantbench
from before digests were recorded), raises :class:`UnverifiedObject`: the caller logs it and
computes the object again, which rewrites object and record. A store that cannot be read raises
what the store raises (a :class:`~tasks.store.errors.TransientError` is retried, never taken for a
bad object).

The record lives in the same store: it catches an object changed on its own (an edit, a swapped
file, a partial copy), not a writer who also rewrites the record.
"""
from __future__ import annotations

import hashlib
import re

from tasks.store.errors import QuantbenchError
from tasks.store.object_store import Store

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class UnverifiedObject(QuantbenchError):
    """A stored object that must not be reused: no digest recorded, or one its content does not match."""


def digest_key(key: str) -> str:
    """The key of ``key``'s digest record."""
    return f"{key}.sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_recorded(store: Store, key: str, data: bytes) -> str:
    """Store the SHA-256 of ``data`` under :func:`digest_key`, then ``data`` under ``key``; return the object's URL."""
    store.write_bytes(digest_key(key), f"{sha256_hex(data)}\n".encode())
    return store.write_bytes(key, data)


def read_recorded(store: Store, key: str) -> bytes | None:
    """The object under ``key`` if its SHA-256 is the recorded one; None if there is no object.

    Raises UnverifiedObject (naming the object's URL, the recorded and the actual digest) when the
    record is missing or malformed or the content does not match it.
    """
    if not store.exists(key):
        return None
    url = store.url_for(key)
    if not store.exists(digest_key(key)):
        raise UnverifiedObject(f"stored {url} has no recorded digest (written by an older quantbench)")
    recorded = store.read_bytes(digest_key(key)).decode("ascii", "replace").strip()
    data = store.read_bytes(key)
    actual = sha256_hex(data)
    if not SHA256_HEX.fullmatch(recorded) or recorded != actual:
        raise UnverifiedObject(f"stored {url} does not match its recorded digest (expected {recorded[:64]!r}, got {actual!r})")
    return data
