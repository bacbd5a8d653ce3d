"""Real server processes on 127.0.0.1 for the deployment tests: a Chroma server, an MLflow
tracking server, rag-loop API processes and workers. Each is a plain subprocess, stopped
(and, if need be, killed) on exit; its output goes to a log file that a failing test shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

BIN = Path(sys.executable).parent


class Process:
    def __init__(
        self,
        name: str,
        command: list[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        ready_url: str | None = None,
        timeout: float = 120,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            start_new_session=True,
        )
        if ready_url:
            self.wait_ready(ready_url, timeout)

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a machine dies."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def chroma_server(path: Path, log_dir: Path) -> tuple[Process, int]:
    port = free_port()
    command = [str(BIN / "chroma"), "run", "--path", str(path), "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    return Process("chroma", [*command, "--port", str(port)], log_dir, ready_url=url), port


def mlflow_server(
    backend_uri: str, artifacts: Path, log_dir: Path, *, port: int | None = None
) -> tuple[Process, str]:
    """An `mlflow server`; pass the `port` of a stopped one to start it again there."""
    port = port or free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    return Process("mlflow", command, log_dir, ready_url=f"{url}/health", timeout=180), url


def rag_loop(name: str, args: list[str], env: dict[str, str], log_dir: Path, **kw: Any) -> Process:
    return Process(name, [str(BIN / "rag-loop"), *args], log_dir, env=env, **kw)
