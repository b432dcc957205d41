"""The per-shard flow: one (variant, shard) as a flow run of its own — what a work pool runs in
its own process or container when the benchmark runs with ``execution="deployment"``.

It runs exactly the function the local mode runs in a task (``tasks.run.inference.infer_shard``), so
both modes store identical shard outputs under identical keys.
"""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger

from tasks.run.inference import ShardJob, infer_shard


@flow(name="quantbench-shard", flow_run_name="{job.variant}-shard-{job.shard.index}")
def shard_flow(job: ShardJob) -> dict:
    """Infer one shard and store its COCO results; return the shard's summary."""
    output = infer_shard(job, alone_in_process=True)
    get_run_logger().info("%s shard %d: %d images, %d failed, %d detections -> %s",
                          output.variant, output.shard_index, output.images_done, output.images_failed, output.detections, output.key)
    return asdict(output)
