"""The README's quickstart commands, run exactly as written (pydantic-settings style)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no block marked {marker}"
    return match.group(1)


def run_block(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_readme_quickstart(tmp_path: Path, mlflow_uri: str) -> None:
    (tmp_path / "corpora").symlink_to(ROOT / "corpora")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAG_LOOP_DATA_DIR": str(tmp_path / "data"),
        "RAG_LOOP_CORPUS_PATH": str(ROOT / "corpora" / "kestrel" / "docs"),
    }
    cli = run_block(readme_block("quickstart"), tmp_path, env)
    assert cli.returncode == 0, cli.stderr
    assert "Traceback" not in cli.stderr
    outputs = [
        json.loads(m) for m in re.findall(r"^\{\n.*?^\}|^\[\n.*?^\]", cli.stdout, re.S | re.M)
    ]
    final_answer = next(o for o in reversed(outputs) if isinstance(o, dict) and "answer" in o)
    # the correction amended the passage the answer came from: the old fact is retired
    assert final_answer["sources"][0]["document_id"] == "insurance/theft"
    assert "120 euros" in final_answer["answer"] and "150 euros" not in final_answer["answer"]
    assert not any("150 euros" in s["text"] for s in final_answer["sources"])
    approved = next(o for o in outputs if isinstance(o, dict) and o.get("status") == "approved")
    assert approved["mode"] == "amend" and approved["applied"]
    assert (tmp_path / "export" / "feedback.jsonl").exists()
    assert (tmp_path / "export" / "feedback.parquet").exists()
    runs = [o for o in outputs if isinstance(o, dict) and o.get("primary_metric")]
    assert [(r["source"], r["status"]) for r in runs] == [
        ("golden", "done"),
        ("production", "done"),
    ]
    assert runs[0]["metrics"]["ndcg_at_10"] > 0.8 and runs[0]["mlflow_run_id"]
    replayed = next(o for o in outputs if isinstance(o, dict) and "asked" in o)
    assert replayed["asked"] == 160
    cycle = next(o for o in outputs if isinstance(o, dict) and "gate" in o)
    assert cycle["state"] == "promoted", cycle["error"]
    # what it learned: the users' questions, indexed with the chunks they confirmed, and
    # the encoder when an epoch beat the one serving (1 is the base model's version)
    recipe = cycle["recipe"]
    assert recipe["expansions"] > 0
    version = 2 if recipe["encoder"] == "trained" else 1
    assert cycle["embedder"]["mlflow_model"] == f"rag-loop-embedder/{version}"
    walk = next(o for o in outputs if isinstance(o, dict) and "promoted_by" in o)
    assert walk["promoted_by"]["loop_cycle"] == cycle["id"]
    assert walk["index_version"]["expansions"] == recipe["expansions"]
    assert walk["training_set"]["feedback_interactions"] >= 160
    report = (tmp_path / "report.html").read_text()
    assert "Worst interactions" in report and "How much is the theft excess?" in report
    assert "Training loop" in report
    assert json.loads((tmp_path / "report.json").read_text())["latest_runs"]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "rag-loop"), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "rag-loop serve did not become healthy"
            time.sleep(0.5)
        script = readme_block("quickstart-http").replace("localhost:8000", f"localhost:{port}")
        http = run_block(script, tmp_path, env)
        assert http.returncode == 0, http.stderr
        assert '"submission_id"' in http.stdout
        assert '"status":"approved"' in http.stdout.replace(" ", "")
        assert '"primary_metric":"ndcg_at_10"' in http.stdout.replace(" ", "")
        assert "rag-loop evaluation report" in (tmp_path / "report.html").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
