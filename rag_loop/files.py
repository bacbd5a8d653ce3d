"""Files written whole or not at all: a temporary beside the target, renamed over it.

A reader never sees half a file, and a write that fails (a full disk, a folder that cannot
be written, an interrupt) leaves the target as it was and no temporary behind. An error
names the file asked for, not its temporary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def _named(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` fills a temporary beside `path`, which then replaces `path` in one
    rename (atomic on one file system)."""
    write_all_whole({path: write})


def write_lines_whole(path: Path, lines: Iterable[str]) -> None:
    """`lines` (each with its newline), streamed to the temporary: a large export or
    training set is never held as one string."""

    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(lines)

    write_whole(path, write)


def write_texts_whole(texts: dict[Path, str]) -> None:
    """Several files, all or none (see `write_all_whole`)."""
    write_all_whole({path: _text(text) for path, text in texts.items()})


def _text(text: str) -> Callable[[Path], object]:
    return lambda temporary: temporary.write_text(text, encoding="utf-8")


def write_all_whole(writes: dict[Path, Callable[[Path], object]]) -> None:
    """Each `write(temporary)` fills a temporary beside its path; only when all are written
    is any renamed, so a path that cannot be written leaves every target as it was."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            temporary = _temporary(path)
            written.append((temporary, path))
            with _named(path):
                write(temporary)
        for temporary, path in written:
            temporary.replace(path)
    except BaseException:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
        raise
