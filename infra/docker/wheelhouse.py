"""Fill build/wheelhouse/ with every locked wheel the images need, for the base image's own Python.

    python infra/docker/wheelhouse.py BASE_IMAGE

Each image's set is its lock file, infra/docker/<target>.lock (`make lock`: every package pinned with
its SHA-256 hashes), copied into the wheelhouse as <target>.txt. pip downloads wheels only, in
hash-checking mode (a file whose hash is not in the lock is refused), and `docker build` installs them
with --require-hashes again. pip runs inside a throwaway container of BASE_IMAGE (`--network host`),
so environment markers and wheel tags are evaluated by the Python the images will run. Index settings come from this machine's pip configuration, read at build time: http(s)
index-url / extra-index-url, trusted-host, proxy, and the CA bundle (`cert`, mounted read-only).
They live only in that container's environment: the wheelhouse holds wheels and requirement files,
and `docker build` then installs from it with --no-index, so no image holds an index URL, a host
name or a certificate. Local indexes (file:// URLs, find-links folders) are not visible in the
container and are skipped.

Reruns are cheap: a wheelhouse already filled for the same base image and the same requirements
(stamp file) is kept; pip's download cache lives in build/pip-cache/.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from requirements import TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "build" / "wheelhouse"
PIP_CACHE = ROOT / "build" / "pip-cache"
CONTAINER_CERT = "/run/quantbench/host-ca.crt"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def pip_settings() -> dict[str, str]:
    """This machine's effective pip configuration (files and PIP_* variables), key -> value."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, check=True).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        value = value.strip().strip("'\"")
        if key.startswith(":env:") or name not in settings:  # PIP_* variables win, as in pip
            settings[name] = value
    return settings


def container_environment(settings: dict[str, str]) -> tuple[list[str], list[str]]:
    """(-e NAME=VALUE arguments, -v mount arguments) that give the container the same index."""
    env: dict[str, str] = {}

    def remote(urls: str) -> str:
        return " ".join(u for u in urls.split() if u.startswith(("http://", "https://")))

    if remote(settings.get("index-url", "")):
        env["PIP_INDEX_URL"] = remote(settings["index-url"])
    if remote(settings.get("extra-index-url", "")):
        env["PIP_EXTRA_INDEX_URL"] = remote(settings["extra-index-url"])
    for name in ("trusted-host", "proxy", "default-timeout"):
        if settings.get(name):
            env["PIP_" + name.upper().replace("-", "_")] = settings[name]
    env.update({name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ})
    mounts: list[str] = []
    cert = settings.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        mounts += ["-v", f"{Path(cert).resolve()}:{CONTAINER_CERT}:ro"]
        env["PIP_CERT"] = CONTAINER_CERT
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")], mounts


def image_id(image: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, check=True).stdout.strip()


def fill(base_image: str) -> None:
    files = {f"{target}.txt": (ROOT / "infra" / "docker" / f"{target}.lock").read_text() for target in TARGETS}
    stamp = hashlib.sha256((image_id(base_image) + "".join(files.values())).encode()).hexdigest()
    stamp_file = WHEELHOUSE / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        print(f"wheelhouse: {WHEELHOUSE.relative_to(ROOT)} is up to date for {base_image}")
        return
    if WHEELHOUSE.exists():
        for stale in WHEELHOUSE.iterdir():
            stale.unlink()
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (WHEELHOUSE / name).write_text(text)
    env_args, mounts = container_environment(pip_settings())
    # pip runs as this machine's user, so the wheelhouse and cache stay owned by it.
    script = "python3 -m venv /tmp/venv" + "".join(
        f" && /tmp/venv/bin/pip download --quiet --require-hashes --only-binary :all: --dest /wheelhouse -r /wheelhouse/{t}.txt"
        for t in TARGETS)
    command = ["docker", "run", "--rm", "--network", "host", "--user", f"{os.getuid()}:{os.getgid()}",
               "-e", "HOME=/tmp", "-e", "PIP_CACHE_DIR=/pip-cache", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1",
               *env_args, *mounts,
               "-v", f"{WHEELHOUSE}:/wheelhouse", "-v", f"{PIP_CACHE}:/pip-cache",
               base_image, "sh", "-c", script]
    print(f"wheelhouse: pip download (hash-checked) in a {base_image} container (index from this machine's pip configuration)")
    subprocess.run(command, check=True)
    stamp_file.write_text(stamp)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} BASE_IMAGE")
    fill(sys.argv[1])
