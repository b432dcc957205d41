"""requirements.lock (issue 18, finding 7): every package of the development set
(``.[convert,dev]`` and the build backend) pinned with its SHA-256 hashes, and the installs that use it
in hash-checking mode. Read from the files; the install itself is what ``make test`` does."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, [sha256 hex, ...])}`` of requirements.lock."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())  # continuation lines joined
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
