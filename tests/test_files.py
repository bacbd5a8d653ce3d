"""Files written whole or not at all (rag_loop/files.py), on a real file system."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_loop.files import write_lines_whole, write_texts_whole, write_whole


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "feedback.jsonl"
    target.write_text("the old export\n")

    def half(temporary: Path) -> None:
        temporary.write_text("half of a new ")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        write_whole(target, half)
    assert caught.value.filename == str(target)  # named by the file asked for
    assert target.read_text() == "the old export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.jsonl"]
    write_lines_whole(target, ["the new export\n"])
    assert target.read_text() == "the new export\n"

    def lines_then_failure() -> Iterator[str]:
        yield "a first line\n"
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        write_lines_whole(target, lines_then_failure())
    assert target.read_text() == "the new export\n"
    write_lines_whole(target, (f"{n}\n" for n in range(3)))
    assert target.read_text() == "0\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.jsonl"]


def test_several_files_are_written_all_or_none(tmp_path: Path) -> None:
    html, summary = tmp_path / "report.html", tmp_path / "report.json"
    html.write_text("old html")
    unwritable = tmp_path / "missing-folder" / "report.json"
    with pytest.raises(OSError) as caught:
        write_texts_whole({html: "new html", unwritable: "{}"})
    assert caught.value.filename == str(unwritable)
    assert html.read_text() == "old html"  # the first file was not replaced either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    write_texts_whole({html: "new html", summary: "{}"})
    assert (html.read_text(), summary.read_text()) == ("new html", "{}")
