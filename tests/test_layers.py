"""The package's layers (pyproject's import-linter contracts) hold, and breaking one fails
the lint step of `make test`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
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


def test_every_unit_has_a_layer() -> None:
    """The layers name every top-level unit of the package: a unit left out of them could
    import anything, and two such units could import each other."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {unit for layer in layers for unit in re.split(r"\s*[|:]\s*", layer)}
    units = {
        f"rag_loop.{path.stem if path.suffix else path.name}"
        for path in (ROOT / "rag_loop").iterdir()
        if (path.suffix == ".py" and path.stem not in {"__init__", "__main__"})
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert units <= named, sorted(units - named)
    assert not any(":" in layer for layer in layers)  # no layer of units that import each other


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
    ingest = package / "corpus" / "ingest.py"  # a stage taking the whole container again
    ingest.write_text(ingest.read_text() + "\nfrom layercheck.services import Services  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Interfaces on top, the foundation at the bottom BROKEN" in result.stdout
    assert "layercheck.errors -> layercheck.api.app" in result.stdout
    assert "layercheck.corpus.ingest -> layercheck.services" in result.stdout
    assert "Core rules stay low BROKEN" in result.stdout
    assert "0 kept, 2 broken" in result.stdout
