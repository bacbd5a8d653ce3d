"""Read documents from Markdown, plain text, JSONL files and BEIR folders."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rag_loop.errors import InvalidInput

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
ID_KEYS = ("_id", "id", "doc_id")
TEXT_KEYS = ("text", "contents", "content", "body")


@dataclass(frozen=True)
class LoadedDocument:
    id: str
    title: str
    text: str
    source_path: str

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(f"{self.title}\x00{self.text}".encode()).hexdigest()


def load_path(path: Path) -> tuple[str, list[LoadedDocument]]:
    """Return (source_root, documents) for a file or folder.

    A folder holding `corpus.jsonl` is read as a BEIR data set (only that file); any other
    folder is searched recursively for .md, .markdown, .txt and .jsonl files.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path} does not exist; give a file or folder of documents")
    root = path.resolve()
    if path.is_dir():
        beir = path / "corpus.jsonl"
        files = [beir] if beir.is_file() else sorted(_supported_files(path))
        base = path
    else:
        if path.suffix.lower() not in TEXT_SUFFIXES and path.suffix.lower() not in JSONL_SUFFIXES:
            raise InvalidInput(
                f"{path} has an unsupported type; use .md, .markdown, .txt or .jsonl"
            )
        files, base = [path], path.parent
    documents: list[LoadedDocument] = []
    for file in files:
        if file.suffix.lower() in JSONL_SUFFIXES:
            documents.extend(_load_jsonl(file))
        else:
            documents.append(_load_text(file, base))
    if not documents:
        raise InvalidInput(f"no documents found in {path} (looked for .md, .txt, .jsonl)")
    seen: dict[str, str] = {}
    for doc in documents:
        if doc.id in seen:
            raise InvalidInput(
                f"document id {doc.id!r} appears twice ({seen[doc.id]} and {doc.source_path}); "
                "ids must be unique"
            )
        seen[doc.id] = doc.source_path
    return str(root), documents


def _supported_files(folder: Path) -> list[Path]:
    suffixes = set(TEXT_SUFFIXES) | JSONL_SUFFIXES
    return [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def _load_text(file: Path, base: Path) -> LoadedDocument:
    try:
        text = file.read_text(encoding="utf-8-sig")  # without a byte-order mark, if any
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{file} is not UTF-8 text ({exc.reason})") from exc
    doc_id = file.relative_to(base).with_suffix("").as_posix()
    title = file.stem.replace("-", " ").replace("_", " ")
    body = text
    if TEXT_SUFFIXES[file.suffix.lower()] == "markdown":
        for line in text.splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                body = text.replace(line, "", 1)
                break
    return LoadedDocument(id=doc_id, title=title, text=body.strip(), source_path=str(file))


def _load_jsonl(file: Path) -> list[LoadedDocument]:
    documents = []
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:  # a byte-order mark (as some editors on Windows write) is not JSON
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{file}:{number} is not UTF-8 text ({exc.reason})") from exc
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{file}:{number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InvalidInput(f"{file}:{number} must be a JSON object")
            doc_id = next((str(record[k]) for k in ID_KEYS if record.get(k) is not None), None)
            text = next((record[k] for k in TEXT_KEYS if isinstance(record.get(k), str)), None)
            if not doc_id or text is None:
                raise InvalidInput(
                    f"{file}:{number} needs an id (one of {', '.join(ID_KEYS)}) and a text "
                    f"(one of {', '.join(TEXT_KEYS)})"
                )
            title = str(record.get("title") or "")
            if not text.strip() and not title.strip():
                continue
            documents.append(
                LoadedDocument(id=doc_id, title=title, text=text, source_path=str(file))
            )
    return documents
