"""The package's layers (pyproject's import-linter contracts) hold, and breaking one fails
the lint step of `make test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy(tmp_path: Path, name: str) -> Path:
    """The package and its contracts under another name (the installed `rag_loop` would
    be found first), for a change the real tree must never have."""
    for source in (ROOT / "rag_loop").rglob("*.py"):
        target = tmp_path / name / source.relative_to(ROOT / "rag_loop")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text().replace("rag_loop", name))
    config = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(config.replace("rag_loop", name))
    return tmp_path / name


def test_an_import_against_the_layers_fails(tmp_path: Path) -> None:
    package = _copy(tmp_path, "layercheck")
    assert _lint(tmp_path).returncode == 0  # the copy holds, as the tree does
    errors = package / "errors.py"  # the foundation reaching for the API
    errors.write_text(errors.read_text() + "\nimport layercheck.api.app  # noqa\n")
    states = package / "loop" / "states.py"  # the state machine reaching for the wiring
    states.write_text(states.read_text() + "\nimport layercheck.services  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Interfaces on top, the foundation at the bottom BROKEN" in result.stdout
    assert "layercheck.errors -> layercheck.api.app" in result.stdout
    assert "Core rules stay low BROKEN" in result.stdout
    assert "0 kept, 2 broken" in result.stdout
