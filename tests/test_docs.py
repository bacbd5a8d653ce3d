"""Every setting is documented in the README (datasette checks its settings the same way)."""

from __future__ import annotations

from pydantic import BaseModel

from rag_loop.settings import Settings
from tests.conftest import ROOT


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names += [f"RAG_LOOP_{name}_{sub}".upper() for sub in group.model_fields]
        else:
            names.append(f"RAG_LOOP_{name}".upper())
    return names


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in readme]
    assert not missing, f"document these in README.md's settings table: {missing}"
