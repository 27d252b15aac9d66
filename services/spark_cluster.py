"""A Spark standalone cluster (one master, one worker) started from the pyspark wheel.

The wheel ships `bin/spark-class` but no sbin scripts, so the master and the worker are
started here as two detached processes (each its own process group), with SPARK_HOME at
the pyspark package, logs, pid files and the worker's work dir under `<var>/spark/`, and a
state file (`cluster.json`) naming the ports. `start` returns once the master's JSON
(http://127.0.0.1:<webui>/json/) lists the worker ALIVE; `stop` ends both groups.

`dp spark-cluster up|down|status` (services.cli registers add_parser/run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resources import settings
from services.moto import free_port

STATE_FILE = "cluster.json"


def spark_home() -> Path:
    """The pyspark package directory: it holds bin/ and jars/ (what SPARK_HOME must point at)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_env() -> dict[str, str]:
    """Environment for spark-class / spark-submit: SPARK_HOME at the wheel, loopback only."""
    import sys

    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home())
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


@dataclass(frozen=True)
class SparkCluster:
    master_port: int
    webui_port: int
    worker_webui_port: int
    master_pid: int
    worker_pid: int
    directory: str

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def webui_url(self) -> str:
        return f"http://127.0.0.1:{self.webui_port}"

    def master_json(self) -> dict[str, Any]:
        """The master's status JSON (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as resp:
            return json.loads(resp.read())

    def alive_workers(self) -> list[dict[str, Any]]:
        try:
            return [w for w in self.master_json().get("workers", []) if w.get("state") == "ALIVE"]
        except OSError:
            return []


def cluster_dir(var: Path | None = None) -> Path:
    return (var or settings.var_dir()) / "spark"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def status(var: Path | None = None) -> SparkCluster | None:
    """The running cluster recorded under `var` (default: the settings' var dir), or None."""
    path = cluster_dir(var) / STATE_FILE
    try:
        cluster = SparkCluster(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(cluster.master_pid) and _alive(cluster.worker_pid):
        return cluster
    return None


def _spawn(name: str, args: list[str], directory: Path, env: dict[str, str]) -> subprocess.Popen:
    log = (directory / f"{name}.log").open("ab")
    try:
        proc = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it with its executors
            cwd=directory,
        )
    finally:
        log.close()
    (directory / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def start(
    var: Path | None = None,
    *,
    master_port: int | None = None,
    webui_port: int | None = None,
    cores: int = 2,
    memory: str = "2g",
    timeout: float = 120.0,
) -> SparkCluster:
    """Start a master and one worker; return when the master lists the worker ALIVE.

    Raises RuntimeError (naming the log) if either process exits or the worker does not
    register within `timeout` seconds; whatever was started is stopped first.
    """
    directory = cluster_dir(var)
    existing = status(var)
    if existing is not None:
        raise RuntimeError(f"a Spark cluster is already running at {existing.master_url} ({directory})")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "work").mkdir(exist_ok=True)
    master_port = master_port or free_port()
    webui_port = webui_port or free_port()
    worker_webui_port = free_port()
    env = spark_env()
    env["SPARK_WORKER_DIR"] = str(directory / "work")
    env["SPARK_LOG_DIR"] = str(directory)
    master = _spawn(
        "master",
        [
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(master_port),
            "--webui-port",
            str(webui_port),
        ],
        directory,
        env,
    )
    worker = _spawn(
        "worker",
        [
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{master_port}",
            "--host",
            "127.0.0.1",
            "--cores",
            str(cores),
            "--memory",
            memory,
            "--webui-port",
            str(worker_webui_port),
            "--work-dir",
            str(directory / "work"),
        ],
        directory,
        env,
    )
    cluster = SparkCluster(
        master_port=master_port,
        webui_port=webui_port,
        worker_webui_port=worker_webui_port,
        master_pid=master.pid,
        worker_pid=worker.pid,
        directory=str(directory),
    )
    (directory / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in (("master", master), ("worker", worker)):
            if proc.poll() is not None:
                stop(var)
                raise RuntimeError(
                    f"Spark {name} exited with code {proc.returncode}; see {directory / (name + '.log')}"
                )
        if cluster.alive_workers():
            return cluster
        time.sleep(0.5)
    stop(var)
    raise RuntimeError(
        f"Spark worker did not register with the master within {timeout:.0f} s; "
        f"see {directory / 'master.log'} and {directory / 'worker.log'}"
    )


def _stop_group(pid: int, grace: float) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # whatever is left of the group (executors)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(var: Path | None = None, grace: float = 20.0) -> bool:
    """Stop the worker, then the master, recorded under `var`. False when none was recorded."""
    directory = cluster_dir(var)
    stopped = False
    for name in ("worker", "master"):
        pidfile = directory / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        _stop_group(pid, grace)
        pidfile.unlink(missing_ok=True)
        stopped = True
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped


# --- dp spark-cluster ----------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser("spark-cluster", help="a local Spark standalone cluster (master + one worker)")
    cmd = p.add_subparsers(dest="spark_command", required=True)
    up = cmd.add_parser("up", help="start the master and a worker in the background")
    up.add_argument("--port", type=int, default=None, help="master port (default: a free port)")
    up.add_argument("--webui-port", type=int, default=None, help="master web UI port (default: free)")
    up.add_argument("--cores", type=int, default=2)
    up.add_argument("--memory", default="2g")
    cmd.add_parser("down", help="stop the cluster")
    cmd.add_parser("status", help="the cluster's master URL, workers and applications")


def run(args: argparse.Namespace) -> int:
    if args.spark_command == "up":
        try:
            cluster = start(
                master_port=args.port, webui_port=args.webui_port, cores=args.cores, memory=args.memory
            )
        except RuntimeError as exc:
            print(f"spark-cluster: {exc}")
            return 1
        print(f"spark-cluster: master {cluster.master_url}, UI {cluster.webui_url}")
        print(f"spark-cluster: logs in {cluster.directory}; jobs use it with PLATFORM_SPARK_MODE=standalone")
        return 0
    if args.spark_command == "down":
        print("spark-cluster: stopped" if stop() else "spark-cluster: not running")
        return 0
    running = status()
    if running is None:
        print("spark-cluster: not running")
        return 1
    info = running.master_json()
    print(f"spark-cluster: master {running.master_url} ({info.get('status')}), UI {running.webui_url}")
    for w in info.get("workers", []):
        print(f"  worker {w.get('id')}: {w.get('state')}, {w.get('cores')} cores, {w.get('memory')} MB")
    for key in ("activeapps", "completedapps"):
        for a in info.get(key, []):
            print(f"  app {a.get('id')} {a.get('name')}: {a.get('state')}")
    return 0
