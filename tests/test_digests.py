"""Reused results are checked against their recorded SHA-256 (issue 18, finding 7): a stored shard
output or converted model that was edited or swapped in the store, or that has no digest record,
is computed again (one WARNING naming it) and the rerun reports what the first run did."""
import json
import logging

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.run.inference import ShardOutput
from tasks.score.gather import gather_variant
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import open_store, split_url
from tasks.store.recorded import UnverifiedObject, read_recorded, sha256_hex, write_recorded


def _report(url: str) -> dict:
    store, key = split_url(url)
    return store.read_json(key)


def _detections(report: dict) -> dict[str, list]:
    result = {}
    for entry in report["variants"]:
        store, key = split_url(entry["detections"])
        result[entry["variant"]] = sorted(store.read_json(key), key=lambda d: (d["image_id"], d["category_id"], d["score"], d["bbox"]))
    return result


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def config(oracle_data, oracle_models, tmp_path) -> BenchmarkConfig:
    return BenchmarkConfig(model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
                           variants=["float32", "int8"], shard_size=4, latency_images=2, store=str(tmp_path / "store"))


def test_tampered_or_unrecorded_shards_and_models_are_recomputed(prefect_backend, config, tmp_path, caplog):
    store = open_store(config.store)
    first = _report(benchmark(config))
    shard_keys = store.list_keys("shards/float32")
    edited, unrecorded = [k for k in shard_keys if k.endswith(".json")][:2]
    int8_model = next(k for k in store.list_keys("models") if "/int8-" in k and k.endswith(".tflite"))
    float32_model = next(k for k in store.list_keys("models") if "/float32-" in k and k.endswith(".tflite"))
    originals = {key: store.read_bytes(key) for key in (edited, unrecorded, int8_model, float32_model)}

    shard = json.loads(originals[edited])
    shard["detections"][0]["score"] = 0.01  # a lower score: the AP would change if it were used
    store.write_bytes(edited, json.dumps(shard).encode())
    store.write_bytes(int8_model, originals[float32_model])  # another valid model in its place
    flipped = bytearray(originals[float32_model])
    flipped[len(flipped) // 2] ^= 0xFF
    store.write_bytes(float32_model, bytes(flipped))
    (tmp_path / "store" / f"{unrecorded}.sha256").unlink()  # as stored by a quantbench before digests were recorded

    with caplog.at_level(logging.WARNING):
        second = _report(benchmark(config))

    assert second["shards"] == {"total": 4, "computed": 2, "reused": 2}
    assert [v["bbox"] for v in second["variants"]] == [v["bbox"] for v in first["variants"]]
    assert [v["model_bytes"] for v in second["variants"]] == [v["model_bytes"] for v in first["variants"]]
    assert _detections(second) == _detections(first)
    warnings = _warnings(caplog)
    assert f"stored {store.url_for(edited)} does not match its recorded digest (expected " in "\n".join(warnings)
    assert any(w.startswith(f"stored {store.url_for(edited)} does not match") and w.endswith(": recomputing it") for w in warnings)
    assert f"stored {store.url_for(unrecorded)} has no recorded digest (written by an older quantbench): recomputing it" in warnings
    for model in (int8_model, float32_model):
        assert any(w.startswith(f"stored {store.url_for(model)} does not match its recorded digest")
                   and w.endswith(": converting it again") for w in warnings)
    for model in (int8_model, float32_model):  # converted again, to the same bytes, with their record
        assert read_recorded(store, model) == originals[model]
    for key in (edited, unrecorded):  # computed again (its usage differs), with its record
        assert json.loads(read_recorded(store, key))["detections"] == json.loads(originals[key])["detections"]


def test_read_recorded_refuses_what_does_not_match_its_record(tmp_path):
    store = open_store(str(tmp_path))
    write_recorded(store, "a.json", b"[1]")
    assert read_recorded(store, "a.json") == b"[1]"
    assert read_recorded(store, "absent.json") is None
    store.write_bytes("a.json", b"[2]")
    with pytest.raises(UnverifiedObject, match=r"a.json does not match its recorded digest \(expected '[0-9a-f]{64}', got '[0-9a-f]{64}'\)"):
        read_recorded(store, "a.json")
    store.write_bytes("a.json.sha256", b"\x1b[2J not a digest")
    with pytest.raises(UnverifiedObject, match=r"expected '\\x1b\[2J not a digest'"):
        read_recorded(store, "a.json")


def test_gather_refuses_a_shard_changed_after_its_task_checked_it(tmp_path):
    store = open_store(str(tmp_path))
    document = {"detections": [], "done_image_ids": [1], "failed": [], "outside_categories": {}}
    write_recorded(store, "shards/float32/x.json", json.dumps(document).encode())
    checked = read_recorded(store, "shards/float32/x.json")
    output = ShardOutput("float32", 0, "shards/float32/x.json", 1, 0, 0, {}, 0.0, reused=True, sha256=sha256_hex(checked))
    assert gather_variant("float32", [output], [1], store.url, "runs/r").done_image_ids == (1,)
    store.write_bytes("shards/float32/x.json", json.dumps({**document, "detections": [{"image_id": 1}]}).encode())
    with pytest.raises(QuantbenchError, match=r"stored shard .*x.json changed after its shard task checked it .*: rerun to recompute it"):
        gather_variant("float32", [output], [1], store.url, "runs/r")


def test_a_cached_model_copy_is_used_only_with_the_checked_digest(s3_env):
    from tasks.model.runtimes import local_model_path

    store = open_store("s3://quantbench/digests-cache")
    good, other = b"TFL3 good model bytes", b"TFL3 another model"
    url = write_recorded(store, "models/m/float32.tflite", good)
    checked = sha256_hex(good)
    cached = local_model_path(url, checked)
    assert cached.read_bytes() == good
    cached.write_bytes(other)  # a stale or swapped copy in the local cache: dropped and fetched again
    assert local_model_path(url, checked).read_bytes() == good
    store.write_bytes("models/m/float32.tflite", other)
    cached.unlink()
    with pytest.raises(QuantbenchError, match=r"model s3://quantbench/digests-cache/models/m/float32.tflite changed since its "
                                              r"conversion task checked it \(expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}\)"):
        local_model_path(url, checked)
    assert not cached.exists()  # the changed object's copy is not kept


def test_gather_writes_the_shards_detections_in_order_as_one_json_list(tmp_path):
    """The merged detections are the shards' lists concatenated in shard order, as json.dumps writes
    the whole list (streamed shard by shard: an empty shard adds nothing)."""
    store = open_store(str(tmp_path))
    shards = [[{"image_id": 1, "category_id": 3, "bbox": [1.5, 2.0, 3.25, 4.0], "score": 0.9}], [],
              [{"image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5},
               {"image_id": 3, "category_id": 2, "bbox": [2.0, 2.0, 1.0, 1.0], "score": 0.25}]]
    outputs = []
    for index, detections in enumerate(shards):
        data = json.dumps({"detections": detections, "done_image_ids": [index + 1], "failed": [], "outside_categories": {}}).encode()
        key = f"shards/float32/{index}.json"
        write_recorded(store, key, data)
        outputs.append(ShardOutput("float32", index, key, 1, len(detections), 0, {}, 0.0, reused=False, sha256=sha256_hex(data)))
    gathered = gather_variant("float32", outputs[::-1], [1, 2, 3], store.url, "runs/r")
    assert gathered.detections == 3
    assert store.read_bytes("runs/r/detections/float32.json") == json.dumps([d for shard in shards for d in shard]).encode()
