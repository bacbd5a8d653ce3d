"""CLI user mistakes: a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CORPUS

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
        (["feedback", "x"], {}, 2, "error: the feedback is empty; give a thumb"),
        (["keys", "create", "k", "--scope", "root"], {}, 2, "scopes must be among"),
        (["keys", "revoke", "nope"], {}, 4, "no API key"),
        (["ask", "anything"], {}, 6, "no serving index"),
        (["export", "feedback", "--format", "csv"], {}, 2, "formats must be among"),
        (["corrections", "list", "--status", "odd"], {}, 2, "status must be one of"),
        (["jobs", "list", "--status", "odd"], {}, 2, "status must be one of queued"),
        (["serve", "--port", "99999"], {}, 2, "less than or equal to 65535"),
        (["jobs", "show", "nope"], {}, 4, "no job 'nope'; `rag-loop jobs list`"),
        (["ask", "x"], {"RAG_LOOP_CHUNKING_CHUNK_OVERLAP": "5000"}, 2, "invalid settings"),
        (["ask", "x"], {"RAG_LOOP_GENERATOR_BACKEND": "gpt"}, 2, "invalid settings"),
        (["loop", "show", "7"], {}, 4, "no loop cycle 7"),
        (["loop", "approve", "7"], {}, 4, "no loop cycle 7"),
        (["loop", "rollback"], {}, 5, "no promoted loop cycle"),
        (["loop", "run"], {}, 6, "no serving index"),
        (["loop", "trace", "nope"], {}, 4, "no interaction 'nope'"),
        (["outbox", "discard", "7"], {}, 2, "say why the entry is discarded (--reason)"),
        (["outbox", "discard", "7", "--reason", "stuck"], {}, 4, "no outbox entry 7"),
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


def test_paths_that_cannot_be_written_exit_cleanly_and_write_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = rag_loop("report", "--out", str(tmp_path), data_dir=data)
    assert folder.returncode == 2 and "it is a folder" in folder.stderr, folder.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    html, unwritable = tmp_path / "r.html", a_file / "r.json"  # a file as a folder
    both = rag_loop("report", "--out", str(html), "--json", str(unwritable), data_dir=data)
    assert both.returncode == 2 and f"cannot write {unwritable}" in both.stderr, both.stderr
    assert not html.exists()  # all or none
    export = rag_loop("export", "feedback", "--out", str(a_file), data_dir=data)
    assert export.returncode == 2 and "cannot write the export" in export.stderr, export.stderr
    data_dir = rag_loop("loop", "list", data_dir=a_file / "data")
    assert data_dir.returncode == 2, data_dir.stderr
    assert "cannot use the data directory" in data_dir.stderr
    for result in (folder, both, export, data_dir):
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data"]


def test_serve_on_a_port_in_use_says_so_before_loading_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = rag_loop("serve", "--port", str(port), data_dir=tmp_path / "data")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was set up for a server that cannot start


def test_serve_checks_every_address_it_would_listen_on() -> None:
    """ "" is every interface (0.0.0.0 and ::, as uvicorn's asyncio server binds them): a port
    in use on the IPv6 one is in use, though 0.0.0.0 alone is free."""
    from rag_loop.cli import check_can_listen
    from rag_loop.errors import InvalidInput

    # socket.has_ipv6 says how Python was built, not whether this kernel has IPv6
    try:
        taken = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with taken:
        try:
            taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            taken.bind(("::", 0))
        except OSError:
            pytest.skip("no IPv6 on this machine")
        taken.listen()
        port = taken.getsockname()[1]
        check_can_listen("0.0.0.0", port)  # the IPv4 side is free
        with pytest.raises(InvalidInput, match=f"cannot listen on :{port}: Address already in use"):
            check_can_listen("", port)
    check_can_listen("", port)  # and free again, nothing held


def test_an_answer_prints_no_library_debug_lines(tmp_path: Path) -> None:
    """bm25s sets its logger to DEBUG when imported; the CLI's log handler keeps its level."""
    data = tmp_path / "data"
    assert rag_loop("ingest", str(CORPUS), data_dir=data).returncode == 0
    answer = rag_loop("ask", "How long does the Kestrel take to charge?", data_dir=data)
    assert answer.returncode == 0, answer.stderr
    assert "DEBUG" not in answer.stderr and "bm25s" not in answer.stderr, answer.stderr


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
