"""Files written whole or not at all: a temporary beside the target, renamed over it.

A reader never sees half a file, and a write that fails (a full disk, a folder that cannot
be written, an interrupt) leaves the target as it was and no temporary behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` fills a temporary beside `path`, which then replaces `path` in one
    rename (atomic on one file system)."""
    temporary = _temporary(path)
    try:
        try:
            write(temporary)
        except OSError as exc:  # named by the file asked for, not its temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_whole(path: Path, text: str) -> None:
    write_whole(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_lines_whole(path: Path, lines: Iterable[str]) -> None:
    """`lines` (each with its newline), streamed to the temporary: a large export or
    training set is never held as one string."""

    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(lines)

    write_whole(path, write)


def write_texts_whole(texts: dict[Path, str]) -> None:
    """Several files, all or none: every temporary is written before the first rename, so a
    path that cannot be written leaves every target as it was."""
    written: list[Path] = []
    try:
        for path, text in texts.items():
            temporary = _temporary(path)
            written.append(temporary)
            try:
                temporary.write_text(text, encoding="utf-8")
            except OSError as exc:  # named by the file asked for, not its temporary
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
        for (path, _), temporary in zip(texts.items(), written, strict=True):
            temporary.replace(path)
    except BaseException:
        for temporary in written:
            temporary.unlink(missing_ok=True)
        raise
