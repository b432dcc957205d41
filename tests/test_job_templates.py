"""The work pools' base job templates (deployments/work-pools/*.json) fix what a flow run must not
choose. A worker builds each flow run's job with Prefect's own templating
(`BaseJobConfiguration.from_template_and_values`): the run's job variables (run_deployment's
`job_variables`, a custom run in the UI, or POST /flow_runs/, which the server does not check
against the pool's schema) fill only the `{{ placeholders }}` of `job_configuration`; a literal
value there cannot be changed by any of them. Checked here with prefect-docker's configuration
class, the process worker's, and Prefect's templating of the Kubernetes Job manifest
(prefect-kubernetes is not a dependency), which is then validated against the Kubernetes schemas.
tests/test_distributed.py checks that a real server refuses such variables on the usual paths."""
from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration
from prefect.workers.process import ProcessJobConfiguration
from prefect_docker.worker import DockerWorkerJobConfiguration

from tests.test_infra import KUBERNETES_VERSIONS, REPO, validate_strict

POOLS = REPO / "deployments" / "work-pools"
IMAGE = "quantbench:full"
# Paths the shard writes in its container (HOME holds ~/.cache and ~/.prefect); all else is read-only.
WRITABLE = {"/home/quantbench", "/tmp", "/opt/quantbench/quantbench-results"}


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields of prefect-kubernetes' KubernetesWorkerJobConfiguration that the template fills;
    that class inherits `from_template_and_values` unchanged from BaseJobConfiguration."""

    namespace: str = "default"
    job_manifest: dict[str, Any]
    cluster_config: dict[str, Any] | None = None


CONFIGURATIONS = {"docker": DockerWorkerJobConfiguration, "process": ProcessJobConfiguration,
                  "kubernetes": KubernetesJobConfiguration}

# Job variables a flow run could send to escape its container or process, per pool.
HOSTILE = [
    ("docker", {"privileged": True}),
    ("docker", {"volumes": ["/:/host"]}),
    ("docker", {"image": "evil:latest"}),
    ("docker", {"command": "sh -c 'cat /etc/shadow'"}),
    ("docker", {"network_mode": "container:prefect-server"}),
    ("docker", {"networks": ["other"]}),
    ("process", {"command": "sh -c 'cat ~/.ssh/id_rsa'"}),
    ("process", {"working_dir": "/"}),
    ("kubernetes", {"image": "evil:latest"}),
    ("kubernetes", {"image_pull_policy": "Always"}),
    ("kubernetes", {"command": "sh -c 'cat /var/run/secrets/kubernetes.io/serviceaccount/token'"}),
    ("kubernetes", {"service_account_name": "prefect-worker"}),  # the worker's, which may create Jobs
    ("kubernetes", {"namespace": "kube-system"}),
    ("kubernetes", {"cluster_config": {"config": {"clusters": []}, "context_name": "elsewhere"}}),
]


def template(pool: str) -> dict:
    return json.loads((POOLS / f"{pool}.json").read_text())


def built_job(pool: str, job_variables: dict, flow_run: FlowRun) -> BaseJobConfiguration:
    """The job a worker of ``pool`` builds for ``flow_run`` with these job variables (no API call:
    the templates hold no block or variable reference, so the client is never used)."""
    client = PrefectClient("http://127.0.0.1:1/api")
    configuration = asyncio.run(CONFIGURATIONS[pool].from_template_and_values(template(pool), job_variables, client=client))
    configuration.prepare_for_flow_run(flow_run)
    return configuration


def a_flow_run() -> FlowRun:
    return FlowRun(flow_id=uuid.uuid4(), name="shard-run")


@pytest.mark.parametrize(("pool", "job_variables"), HOSTILE, ids=[f"{p}-{next(iter(v))}" for p, v in HOSTILE])
def test_a_runs_job_variables_cannot_change_what_the_operator_fixed(pool, job_variables):
    flow_run = a_flow_run()
    assert built_job(pool, job_variables, flow_run).model_dump() == built_job(pool, {}, flow_run).model_dump()


def test_the_docker_job_is_the_operators_image_and_command_unprivileged_without_host_mounts():
    job = built_job("docker", {"privileged": True, "volumes": ["/:/host"], "image": "evil:latest"}, a_flow_run())
    assert (job.image, job.command, job.network_mode, job.networks) == (IMAGE, "prefect flow-run execute", "host", [])
    assert (job.privileged, job.volumes, job.container_create_kwargs, job.registry_credentials) == (False, [], None, None)


def test_what_runs_may_still_set_reaches_the_job():
    flow_run = a_flow_run()
    docker = built_job("docker", {"env": {"QUANTBENCH_STORE": "s3://bucket/runs"}, "labels": {"team": "cv"},
                                  "mem_limit": "8g", "memswap_limit": "8g"}, flow_run)
    assert docker.env["QUANTBENCH_STORE"] == "s3://bucket/runs" and docker.labels["team"] == "cv"
    assert (docker.mem_limit, docker.memswap_limit) == ("8g", "8g")
    kubernetes = built_job("kubernetes", {"memory_limit": "12Gi", "cpu_request": "3", "env": {"A": "1"}}, flow_run)
    container = kubernetes.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "12Gi"}, "requests": {"cpu": "3", "memory": "4Gi"}}
    assert container["env"]["A"] == "1" and kubernetes.env["A"] == "1"
    assert built_job("process", {"env": {"A": "1"}}, flow_run).env["A"] == "1"


def test_every_key_a_template_lets_runs_set_is_one_its_job_configuration_reads():
    for pool in CONFIGURATIONS:
        body = template(pool)
        assert body["variables"]["additionalProperties"] is False, pool  # the server refuses any other key
        placeholders = json.dumps(body["job_configuration"])
        unused = [name for name in body["variables"]["properties"] if "{{ " + name + " }}" not in placeholders]
        assert not unused, f"{pool}: {unused}"


def kubernetes_job() -> dict:
    """The Job the worker submits, as far as templating makes it: env becomes Kubernetes' list form
    (prefect-kubernetes' `_populate_env_in_manifest`), args the worker's command."""
    job = built_job("kubernetes", {}, a_flow_run())
    manifest = copy.deepcopy(job.job_manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in job.env.items()]
    container["args"] = job.command.split()
    return manifest


def test_the_kubernetes_job_runs_non_root_read_only_without_privileges_or_a_token():
    manifest = kubernetes_job()
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["metadata"]["namespace"] == "quantbench" and pod["serviceAccountName"] == "quantbench-worker"
    assert pod["automountServiceAccountToken"] is False
    assert (container["image"], container["imagePullPolicy"], container["args"]) == (IMAGE, "IfNotPresent", ["prefect", "flow-run", "execute"])
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
    scratch = {v["name"] for v in pod["volumes"] if set(v) == {"name", "emptyDir"}}
    assert {m["mountPath"] for m in container["volumeMounts"] if m["name"] in scratch} == WRITABLE


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_job_matches_the_kubernetes_schemas(version):
    manifest = kubernetes_job()
    # prefect-kubernetes requires these two in the pod spec (its template's quirk; the API server
    # drops unknown fields with a warning), which a strict check would refuse.
    for key in ("parallelism", "completions"):
        manifest["spec"]["template"]["spec"].pop(key)
    validate_strict(manifest, version)
