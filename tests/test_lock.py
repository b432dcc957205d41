"""requirements.lock and the images' locks (issue 18, finding 7): every package of the development set
(``.[convert,dev]``, pip and the build backend) and of each image pinned with its SHA-256 hashes, and
the installs that use them in hash-checking mode. Read from the files; the installs themselves are what
``make test`` and ``make images`` do."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked(path: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, [sha256 hex, ...])}`` of a lock file (requirements.lock by default)."""
    text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines joined
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, options = line.partition(" ")
        name, version = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", requirement).groups()
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", options)
        assert re.sub(r"--hash=sha256:[0-9a-f]{64}", "", options).strip() == "", f"unexpected options for {name}: {options}"
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies, the convert and dev extras, and the build backend."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    texts = project["project"]["dependencies"] + extras["convert"] + extras["dev"] + project["build-system"]["requires"]
    return [Requirement(text) for text in texts]


def test_every_locked_package_is_pinned_with_a_hash():
    entries = locked()
    assert len(entries) > 100  # the whole set, transitive dependencies included
    unhashed = sorted(name for name, (_, hashes) in entries.items() if not hashes)
    assert not unhashed, f"pinned without a hash: {unhashed}"


def test_the_lock_covers_every_declared_dependency_at_its_pinned_version():
    entries = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(entries[name][0]), f"requirements.lock has {name}=={entries[name][0]}, pyproject says {requirement}"
    assert {"pip", "setuptools"} <= set(entries)  # pip and the build backend come from the lock too


def makefile_rule(target: str) -> list[str]:
    """The recipe lines of a Makefile rule."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_installs_from_the_lock_in_hash_checking_mode():
    rule = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("$(VENV)/.installed:"))
    assert "requirements.lock" in rule.split(":", 1)[1]  # a changed lock reinstalls
    installs = [line for line in makefile_rule("$(VENV)/.installed") if " pip install" in line]
    assert installs[0].endswith("pip install --quiet --require-hashes -r requirements.lock")
    assert installs[1:] == ["$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ."]


def test_each_image_lock_covers_its_set_at_the_development_lock_versions():
    import sys

    sys.path.insert(0, str(REPO / "infra" / "docker"))
    from requirements import TARGETS, requirements

    development = locked()
    for target in TARGETS:
        image = locked(REPO / "infra" / "docker" / f"{target}.lock")
        for text in requirements(target, REPO / "pyproject.toml"):
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in image and requirement.specifier.contains(image[name][0]), f"{target}.lock lacks {text}: run `make lock`"
        for name, (version, hashes) in image.items():
            assert hashes and development[name] == (version, hashes), f"{target}.lock: {name}=={version} differs from requirements.lock"


def test_images_download_and_install_only_locked_files():
    dockerfile = (REPO / "Dockerfile").read_text()
    for target in ("slim", "full", "s3"):
        assert (f"pip install --no-cache-dir --no-index --require-hashes --find-links /tmp/wheelhouse -r /tmp/wheelhouse/{target}.txt"
                in dockerfile)
    assert dockerfile.count("pip install") == 5 and dockerfile.count("--no-deps --no-index --no-build-isolation .") == 2
    wheelhouse = (REPO / "infra" / "docker" / "wheelhouse.py").read_text()
    assert '(ROOT / "infra" / "docker" / f"{target}.lock").read_text()' in wheelhouse
    assert "pip download --quiet --require-hashes --only-binary :all: --dest /wheelhouse -r /wheelhouse/{t}.txt" in wheelhouse
