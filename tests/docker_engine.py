"""A real Docker engine for tests: whether one answers, the project's images built once per test
session (``make images``), and containers run with host networking and a label, so a test run
removes exactly the containers it started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = {"quantbench-test": uuid.uuid4().hex[:12]}  # on every container this test session starts
LABEL = "{}={}".format(*next(iter(LABELS.items())))  # as `docker --label` and `--filter label=` take it


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if not shutil.which("docker"):
        return "no docker client on PATH (docs/cluster-and-images.md, 'The stack': apt-get install docker.io, then start dockerd)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer 'docker info' within 20 s"
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker engine answers ({(info.stderr.strip().splitlines() or ['docker info failed'])[-1]}); .ci/run starts one"
    return None


def build_images() -> str:
    """``make images`` (infra/docker/build-images.sh) with this interpreter; returns its output."""
    result = subprocess.run([str(REPO / "infra" / "docker" / "build-images.sh")], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-3000:]}"
    return result


def run(image: str, *command: str, volumes: dict[Path, str] | None = None, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """``docker run --rm --network host`` IMAGE COMMAND, as the image's user; the result, never checked."""
    args = ["run", "--rm", "--network", "host", "--label", LABEL]
    for host_path, container_path in (volumes or {}).items():
        args += ["-v", f"{host_path}:{container_path}"]
    for name, value in (env or {}).items():
        args += ["-e", f"{name}={value}"]
    return docker(*args, image, *command, timeout=timeout, check=False)


def labelled_containers(label: str = LABEL, *filters: str) -> list[str]:
    """Ids of this session's containers (running or not), with more ``--filter``s if given."""
    args = ["ps", "-aq", "--filter", f"label={label}"]
    for extra in filters:
        args += ["--filter", extra]
    return docker(*args).stdout.split()


def remove_containers(label: str = LABEL) -> None:
    """Remove every container this session started (and only those)."""
    ids = labelled_containers(label)
    if ids:
        docker("rm", "-f", *ids, check=False)


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container).stdout)[0]


def timestamp(text: str) -> float:
    """Seconds since the epoch of a Docker or Prefect timestamp (nanoseconds cut to microseconds)."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text).timestamp()
