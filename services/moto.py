"""Run a moto server: the AWS endpoint for tests and the local demo."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_moto(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start the moto server (services/moto_server.py: moto's, with DynamoDB's write atomicity) on
    127.0.0.1:port in its own process group and wait until it answers."""
    if importlib.util.find_spec("moto") is None:
        raise FileNotFoundError("moto is not installed (the moto[server] package)")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=Path(__file__).resolve().parents[1],  # the project, so that `services` imports
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_http(f"http://127.0.0.1:{port}/moto-api/", proc=proc)
    return proc
