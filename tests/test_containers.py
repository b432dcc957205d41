"""The images, for real: built here by ``make images`` (from a Debian-built base where no registry
answers) and run with ``docker run --network host`` as their non-root user (uid 10001).

- quantbench:full runs the demo benchmark with its results on a mounted folder, with the same AP as
  the same run on the host; a folder its user cannot write is one clear error line.
- quantbench:full runs the demo as the Kubernetes pool's Job would: read-only root, only its emptyDir
  mounts writable, no capability, no privilege escalation.
- quantbench:slim has no TensorFlow, benchmarks a builtin-op .tflite, and refuses a Flex-op model
  with one line that names the full image.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import docker_engine
from tests.two_stage import build_two_stage_model

QUANTBENCH = str(Path(sys.executable).with_name("quantbench"))
IMAGE_USER = 10001
IN_CONTAINER = "/opt/quantbench/quantbench-results"  # the images' default store, ./quantbench-results


def _report(output: str, host_store: Path | None = None) -> dict:
    """report.json named by the CLI's last line; a container path mapped onto the mounted folder."""
    url = output.strip().splitlines()[-1].removeprefix("report: ")
    path = url.removeprefix("file://")
    if host_store is not None:
        path = str(host_store) + path.removeprefix(IN_CONTAINER)
    return json.loads(Path(path).read_text())


def _folder_for_the_image_user(path: Path) -> Path:
    """A folder the images' user can write (what docs/cluster-and-images.md tells users to do: chown 10001)."""
    path.mkdir(parents=True)
    os.chown(path, IMAGE_USER, IMAGE_USER)
    return path


@pytest.fixture(scope="module")
def host_demo(container_images, tmp_path_factory) -> dict:
    """The demo benchmark on 20 images, run on the host by the CLI."""
    store = tmp_path_factory.mktemp("host-demo")
    result = subprocess.run([QUANTBENCH, "run", "--limit", "20", "--quiet", "--store", str(store)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"report": _report(result.stdout), "store": store}


def test_the_full_image_runs_the_demo_as_its_user_with_the_hosts_ap(host_demo, tmp_path):
    results = _folder_for_the_image_user(tmp_path / "results")
    run = docker_engine.run("quantbench:full", "quantbench", "run", "--limit", "20", "--quiet", volumes={results: IN_CONTAINER})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = _report(run.stdout, results)
    host = host_demo["report"]
    assert [v["variant"] for v in report["variants"]] == [v["variant"] for v in host["variants"]] == \
        ["saved_model", "float32", "float16", "int8"]
    for in_container, on_host in zip(report["variants"], host["variants"]):
        assert in_container["bbox"] == on_host["bbox"], in_container["variant"]
        assert in_container["images"] == on_host["images"] == 20 and in_container["failed_images"] == 0
    written = [p for p in results.rglob("*") if p.is_file()]
    assert written and {p.stat().st_uid for p in written} == {IMAGE_USER}  # the image's user, not root


def test_the_full_image_runs_the_demo_under_the_kubernetes_jobs_restrictions(host_demo, tmp_path):
    """As the pool's Job runs it (deployments/work-pools/kubernetes.json): its user, a read-only root
    filesystem with an empty volume (as an emptyDir) at each of its mounts, no capability, no
    privilege escalation. The demo writes its data, models, Prefect home and results only there;
    the results volume is a folder of this host, to read the report from."""
    job = json.loads((docker_engine.REPO / "deployments" / "work-pools" / "kubernetes.json").read_text())["job_configuration"]
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]} and not security["allowPrivilegeEscalation"]
    args = ["run", "--rm", "--network", "host", "--label", docker_engine.LABEL, "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    results = _folder_for_the_image_user(tmp_path / "results")
    for mount in container["volumeMounts"]:  # anonymous volumes: empty, the image user's, removed with --rm
        args += ["-v", f"{results}:{IN_CONTAINER}" if mount["mountPath"] == IN_CONTAINER else mount["mountPath"]]
    run = docker_engine.docker(*args, container["image"], "quantbench", "run", "--limit", "20", "--quiet", check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = _report(run.stdout, results)
    assert [v["bbox"] for v in report["variants"]] == [v["bbox"] for v in host_demo["report"]["variants"]]


def test_a_results_folder_the_image_user_cannot_write_is_one_error_line(container_images, tmp_path):
    results = tmp_path / "root-only"
    results.mkdir(mode=0o755)  # owned by root: uid 10001 cannot create anything in it
    run = docker_engine.run("quantbench:full", "quantbench", "run", "--limit", "20", volumes={results: IN_CONTAINER})
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    [line] = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert IN_CONTAINER in line and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not list(results.iterdir())


def test_the_slim_image_has_no_tensorflow_and_benchmarks_a_builtin_op_model(host_demo, tmp_path):
    no_tf = docker_engine.run("quantbench:slim", "python", "-c", "import tensorflow")
    assert no_tf.returncode == 1 and "No module named 'tensorflow'" in no_tf.stderr
    data = _folder_for_the_image_user(tmp_path / "data")
    [float32] = host_demo["store"].glob("models/*/float32-*.tflite")  # the host run's builtin-op conversion
    (data / "model.tflite").write_bytes(float32.read_bytes())
    run = docker_engine.run("quantbench:slim", "quantbench", "run", "--model", f"{data}/model.tflite", "--variants", "float32",
                            "--limit", "20", "--quiet", "--store", f"{data}/store", volumes={data: str(data)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [variant] = _report(run.stdout)["variants"]
    [on_host] = [v for v in host_demo["report"]["variants"] if v["variant"] == "float32"]
    assert variant["flex_ops"] == [] and variant["images"] == 20 and variant["bbox"] == on_host["bbox"]


def test_the_slim_image_refuses_a_flex_model_in_one_line(container_images, tmp_path):
    from tasks.model.conversion import convert

    data = _folder_for_the_image_user(tmp_path / "data")
    (data / "flex.tflite").write_bytes(convert(build_two_stage_model(tmp_path / "two-stage"), "float32"))
    run = docker_engine.run("quantbench:slim", "quantbench", "run", "--model", f"{data}/flex.tflite", "--variants", "float32",
                            "--limit", "4", "--store", f"{data}/store", volumes={data: str(data)})
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    [line] = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert "needs TensorFlow, which is not installed here" in line and "full image" in line, line
    assert "FlexCombinedNonMaxSuppression" in line and "Traceback" not in run.stderr
