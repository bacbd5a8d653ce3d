"""CLI user mistakes: a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def rag_loop(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "rag-loop"), *args],
        env={**os.environ, "RAG_LOOP_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["ingest", "/no/such/folder"], {}, 2, "does not exist"),
        (["corrections", "approve", "42"], {}, 4, "no correction 42"),
        (["interactions", "show", "nope"], {}, 4, "no interaction 'nope'"),
        (["feedback", "x", "--thumb", "sideways"], {}, 2, "thumb"),
        (["keys", "create", "k", "--scope", "root"], {}, 2, "scopes must be among"),
        (["keys", "revoke", "nope"], {}, 4, "no API key"),
        (["ask", "anything"], {}, 6, "no serving index"),
        (["export", "feedback", "--format", "csv"], {}, 2, "formats must be among"),
        (["corrections", "list", "--status", "odd"], {}, 2, "status must be one of"),
        (["ask", "x"], {"RAG_LOOP_CHUNKING_CHUNK_OVERLAP": "5000"}, 2, "invalid settings"),
        (["ask", "x"], {"RAG_LOOP_GENERATOR_BACKEND": "gpt"}, 2, "invalid settings"),
        (["loop", "show", "7"], {}, 4, "no loop cycle 7"),
        (["loop", "approve", "7"], {}, 4, "no loop cycle 7"),
        (["loop", "rollback"], {}, 5, "no promoted loop cycle"),
        (["loop", "run"], {}, 6, "no serving index"),
        (["loop", "trace", "nope"], {}, 4, "no interaction 'nope'"),
        (["loop", "list"], {"RAG_LOOP_LOOP_SCHEDULE": "every day"}, 2, "invalid settings"),
    ],
)
def test_user_mistakes_exit_cleanly(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    result = rag_loop(*args, data_dir=tmp_path / "data", **env)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = rag_loop("--help", data_dir=tmp_path)
    assert result.returncode == 0
    for command in (
        "serve",
        "ingest",
        "ask",
        "feedback",
        "corrections",
        "interactions",
        "keys",
        "export",
        "index",
        "db",
        "eval",
        "drift",
        "report",
        "loop",
    ):
        assert command in result.stdout
